import t from 'tap'
import { CinderfsError } from '../../src/errors/errors.js'
import { BLOCK_STORAGE_TYPES } from '../../src/openstack/cinder.js'
import { HttpClient } from '../../src/openstack/http.js'
import { KeystoneClient, type KeystoneCredentials } from '../../src/openstack/keystone.js'
import { capturingLogger, cloudSettings, CLOUDS, openStackSuite } from '../helpers/openstack.js'

const { skip } = openStackSuite(t)

function keystone(credentials?: KeystoneCredentials, extra: { now?: () => number } = {}) {
  const settings = cloudSettings(CLOUDS.glance)
  const { logger, lines } = capturingLogger()
  const http = new HttpClient({ logger })
  t.teardown(() => { http.close() })
  const client = new KeystoneClient({ authUrl: settings.authUrl, credentials: credentials ?? settings.credentials, http, logger, ...extra })
  return { client, http, lines, settings }
}

const password = (): string => {
  const c = cloudSettings(CLOUDS.glance).credentials
  if (c.method !== 'password') throw new Error('the glance cloud uses a password')
  return c.password
}

t.test('password auth by names and domains gives a project token with Cinder in the catalog', { skip }, async t => {
  const { client, settings } = keystone()
  const token = await client.token()
  t.ok(token.projectId, 'project-scoped')
  t.ok(token.expiresAt.getTime() > Date.now() + 600_000, 'valid for a while')
  const url = await client.endpoint(settings.endpoint)
  t.equal(url, `http://127.0.0.1:8776/v3/${token.projectId ?? ''}`)
  // the alias volumev3 and the internal interface point at the same Cinder
  t.equal(await client.endpoint({ serviceTypes: ['volume', 'volumev3'], interface: 'internal', region: 'RegionOne' }), url)
  await t.rejects(client.endpoint({ serviceTypes: BLOCK_STORAGE_TYPES, interface: 'public', region: 'Elsewhere' }),
    { name: 'ConfigError', message: /no public endpoint of type block-storage\/volumev3\/volume in region Elsewhere/ })
})

t.test('password auth by user and project ids works too', { skip }, async t => {
  const first = await keystone().client.token()
  const { client } = keystone({ method: 'password', user: { id: first.userId }, password: password(), project: { id: first.projectId ?? '' } })
  const token = await client.token()
  t.equal(token.userId, first.userId)
  t.equal(token.projectId, first.projectId)
})

t.test('a wrong password is EACCES with one clear line, and no secret is logged', { skip }, async t => {
  const { client, lines } = keystone({ method: 'password', user: { name: 'glance', domain: { name: 'Default' } }, password: 'not-the-password', project: { name: 'service', domain: { name: 'Default' } } })
  const err: unknown = await client.token().catch((e: unknown) => e)
  t.ok(err instanceof CinderfsError && err.code === 'EACCES', 'EACCES')
  t.match(String((err as Error).message), /^Keystone refused the credentials of user glance: .*401/)
  t.notOk((err as Error).message.includes('\n'), 'one line')
  t.ok((err as CinderfsError).details.requestId, 'carries the request id')
  t.notOk(lines.join('').includes('not-the-password'), 'the password is not in the logs')
})

t.test('one token serves many calls; a token near expiry is renewed first', { skip }, async t => {
  let clock = Date.now()
  const { client, lines } = keystone(undefined, { now: () => clock })
  const a = await client.token()
  const b = await client.token()
  t.equal(b.id, a.id, 'reused')
  clock = a.expiresAt.getTime() - 119_000 // inside keystoneauth's 120 s margin
  const c = await client.token()
  t.not(c.id, a.id, 'renewed before it expired')
  t.equal(lines.filter(l => l.includes('authenticated to Keystone')).length, 2)
  for (const token of [a.id, c.id]) t.notOk(lines.join('').includes(token), 'tokens are not logged')
  t.notOk(lines.join('').includes(password()), 'the password is not logged')
})

t.test('a revoked token is replaced transparently on the 401', { skip }, async t => {
  const { client, http, settings, lines } = keystone()
  const url = await client.endpoint(settings.endpoint)
  const old = await client.token()
  // revoke it behind the client's back (a user may revoke its own token)
  await http.send({ method: 'DELETE', url: `${settings.authUrl}/auth/tokens`, headers: { 'X-Auth-Token': old.id, 'X-Subject-Token': old.id }, idempotent: true })
  const status = await client.withToken(async token => (await http.send({ method: 'GET', url: `${url}/volumes`, headers: { 'X-Auth-Token': token.id }, idempotent: true })).status)
  t.equal(status, 200, 'the call went through')
  t.not((await client.token()).id, old.id, 'with a new token')
  t.ok(lines.some(l => l.includes('token refused, authenticating again')), 'and the re-auth was logged')
})

t.test('application credentials, by id and by name, and token auth', { skip }, async t => {
  const { client, http, settings } = keystone()
  const token = await client.token()
  const created = await http.send({
    method: 'POST',
    url: `${settings.authUrl}/users/${token.userId}/application_credentials`,
    headers: { 'X-Auth-Token': token.id },
    body: { application_credential: { name: `cinderfs-test-${Date.now()}`, secret: 'app-cred-secret' } },
    idempotent: false,
  })
  const cred = (created.data as { application_credential: { id: string, name: string } }).application_credential
  t.teardown(() => http.send({ method: 'DELETE', url: `${settings.authUrl}/users/${token.userId}/application_credentials/${cred.id}`, headers: { 'X-Auth-Token': token.id }, idempotent: true }))
  const byId = await keystone({ method: 'application_credential', id: cred.id, secret: 'app-cred-secret' }).client.token()
  t.equal(byId.projectId, token.projectId, 'by id: scoped to the credential project')
  const byName = await keystone({ method: 'application_credential', name: cred.name, user: { id: token.userId }, secret: 'app-cred-secret' }).client.token()
  t.equal(byName.projectId, token.projectId, 'by name and user')
  const fromToken = await keystone({ method: 'token', token: token.id, project: { id: token.projectId ?? '' } }).client.token()
  t.equal(fromToken.userId, token.userId, 'token auth')
  await t.rejects(keystone({ method: 'application_credential', id: cred.id, secret: 'wrong' }).client.token(), { code: 'EACCES' })
})
