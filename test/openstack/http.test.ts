import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { HttpClient, REAUTHENTICATING_MESSAGE, RETRYING_MESSAGE, type TlsOptions } from '../../src/openstack/http.js'
import { withinRetryWindow } from '../../src/outage/retry-window.js'
import { capturingLogger } from '../helpers/openstack.js'

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void

/** A scripted server on 127.0.0.1 that counts the requests it gets. */
async function serve(t: Test, handler: Handler, tls?: { key: Buffer, cert: Buffer }): Promise<{ url: string, hits: () => number }> {
  let hits = 0
  const counted: Handler = (req, res) => { hits++; req.resume(); handler(req, res) }
  const server = tls === undefined ? http.createServer(counted) : https.createServer(tls, counted)
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise(resolve => { server.closeAllConnections(); server.close(resolve) }))
  const { port } = server.address() as AddressInfo
  return { url: `${tls === undefined ? 'http' : 'https'}://127.0.0.1:${port}/v3/p/volumes`, hits: () => hits }
}

function client(t: Test, tls?: TlsOptions): { http: HttpClient, lines: string[] } {
  const { logger, lines } = capturingLogger()
  const c = new HttpClient({ logger, retries: 2, retryDelayMs: 10, ...(tls === undefined ? {} : { tls }) })
  t.teardown(() => { c.close() })
  return { http: c, lines }
}

function reply(status: number, body: unknown): Handler {
  return (_req, res) => {
    res.writeHead(status, { 'Content-Type': 'application/json', 'X-OpenStack-Request-Id': `req-${status}` })
    res.end(JSON.stringify(body))
  }
}

t.test('idempotent requests are retried after a 5xx; a create never is', async t => {
  let n = 0
  const flaky = await serve(t, (req, res) => { reply(n++ === 0 ? 503 : 200, { ok: true })(req, res) })
  const { http, lines } = client(t)
  const got = await http.send({ method: 'GET', url: flaky.url, idempotent: true })
  t.equal(got.status, 200, 'the GET went through on the second try')
  t.equal(flaky.hits(), 2)
  t.ok(lines.some(l => l.includes('retrying') && l.includes('req-503')), 'the retry is logged with the request id')

  const down = await serve(t, reply(503, { computeFault: { message: 'try later' } }))
  await t.rejects(http.send({ method: 'POST', url: down.url, body: { volume: { size: 1 } }, idempotent: false }), { code: 'EIO', message: /503 try later/ })
  t.equal(down.hits(), 1, 'the POST was sent once: no second volume')
})

t.test('connection errors are retried for idempotent requests, then fail with EIO', async t => {
  const { http, lines } = client(t)
  // nothing listens on port 1
  await t.rejects(http.send({ method: 'GET', url: 'http://127.0.0.1:1/v3/p/volumes', idempotent: true }), { code: 'EIO', message: /ECONNREFUSED/ })
  t.equal(lines.filter(l => l.includes('retrying')).length, 2, 'after the configured 2 retries')
})

t.test('HTTP errors map to errno in one place, with the request id', async t => {
  const cases: [number, unknown, string][] = [
    [404, { itemNotFound: { message: 'Volume x could not be found.' } }, 'ENOENT'],
    [413, { overLimit: { message: 'VolumeSizeExceedsAvailableQuota: Requested volume exceeds allowed gigabytes quota.' } }, 'EDQUOT'],
    [409, { conflict: { message: 'busy' } }, 'EBUSY'],
    [400, { badRequest: { message: 'Volume x status must be available or downloading to reserve, but the current status is in-use.' } }, 'EBUSY'],
    [401, { error: { message: 'The request you have made requires authentication.' } }, 'EACCES'],
    [403, { forbidden: { message: 'Policy does not allow' } }, 'EACCES'],
    [400, { badRequest: { message: 'Invalid input for field/attribute size.' } }, 'EIO'],
    [500, { computeFault: { message: 'oops' } }, 'EIO'],
  ]
  const { http } = client(t)
  for (const [status, body, code] of cases) {
    const server = await serve(t, reply(status, body))
    await t.rejects(http.send({ method: 'DELETE', url: server.url, idempotent: false }), { code, details: { status, requestId: `req-${status}` } }, `${status} → ${code}`)
  }
})

t.test('TLS: a private CA bundle is trusted, insecure skips checks, the default refuses', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cinderfs-tls-'))
  t.teardown(() => { fs.rmSync(dir, { recursive: true, force: true }) })
  const key = path.join(dir, 'key.pem')
  const cert = path.join(dir, 'cert.pem')
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'ignore' })
  const server = await serve(t, reply(200, { ok: true }), { key: fs.readFileSync(key), cert: fs.readFileSync(cert) })
  const get = (tls?: TlsOptions) => client(t, tls).http.send({ method: 'GET', url: server.url, idempotent: false })
  await t.rejects(get(), { code: 'EIO', message: /SELF_SIGNED|certificate/i }, 'an unknown CA is refused')
  t.equal((await get({ caFile: cert })).status, 200, 'the CA bundle is trusted')
  t.equal((await get({ insecure: true })).status, 200, 'insecure skips verification')
  t.throws(() => client(t, { caFile: path.join(dir, 'missing.pem') }), { name: 'ConfigError', message: /cannot read the CA bundle .*missing.pem: ENOENT/ })
})

t.test('a 401 renews the credentials once and retries; every attempt asks for them afresh', async t => {
  let valid = 'token-2'
  const seen: string[] = []
  const server = await serve(t, (req, res) => {
    const token = String(req.headers['x-auth-token'])
    seen.push(token)
    reply(token === valid ? 200 : 401, { error: { message: 'The request you have made requires authentication.' } })(req, res)
  })
  let issued = 0
  const refused: string[] = []
  const auth = { headers: async () => ({ 'X-Auth-Token': `token-${++issued}` }), refused: (h: Record<string, string>) => { refused.push(h['X-Auth-Token'] ?? '') } }
  const { http, lines } = client(t)
  t.equal((await http.send({ method: 'DELETE', url: server.url, idempotent: false, auth })).status, 200, 'went through with the renewed token')
  t.same(seen, ['token-1', 'token-2'])
  t.same(refused, ['token-1'], 'the refused token was given back')
  t.ok(lines.some(l => l.includes(REAUTHENTICATING_MESSAGE)), 'the renewal is logged')
  valid = 'never'
  await t.rejects(http.send({ method: 'GET', url: server.url, idempotent: true, auth }), { code: 'EACCES' }, 'a second 401 is the answer')
  t.equal(seen.length, 4, 'renewed only once')
})

t.test('inside a retry window a refused connection is retried until the server is back, even for a POST', async t => {
  const { http: api, lines } = client(t)
  const retries = (): number => lines.filter(l => l.includes(RETRYING_MESSAGE)).length
  await t.rejects(api.send({ method: 'POST', url: 'http://127.0.0.1:1/v3/p/volumes', idempotent: false }), { message: /ECONNREFUSED/ }, 'outside a window: fails after the retries')
  t.equal(retries(), 2, 'a refused POST is retried (it never left)')

  // a port that refuses now and listens a moment later: a service restart
  const port = await freePort()
  const sent = withinRetryWindow(10_000, async () => api.send({ method: 'POST', url: `http://127.0.0.1:${port}/v3/p/volumes`, idempotent: false }))
  while (retries() < 6) await new Promise(resolve => setTimeout(resolve, 5))
  const server = http.createServer((req, res) => { req.resume(); reply(200, { ok: true })(req, res) })
  await new Promise<void>(resolve => server.listen(port, '127.0.0.1', resolve))
  t.teardown(() => new Promise(resolve => { server.closeAllConnections(); server.close(resolve) }))
  t.equal((await sent).status, 200, 'went through once the server listened, past the 2 retries of no window')
  await t.rejects(withinRetryWindow(300, async () => api.send({ method: 'GET', url: 'http://127.0.0.1:1/', idempotent: true })), { code: 'EIO' }, 'and a window ends')
})

async function freePort(): Promise<number> {
  const probe = http.createServer()
  await new Promise<void>(resolve => probe.listen(0, '127.0.0.1', resolve))
  const { port } = probe.address() as AddressInfo
  await new Promise(resolve => probe.close(resolve))
  return port
}
