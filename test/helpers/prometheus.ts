import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs/promises'
import net from 'node:net'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { SERVING_METRICS_MESSAGE } from '../../src/metrics/server.js'

interface TapLike {
  teardown(fn: () => unknown): void
}

/** Why Debian's Prometheus cannot be used here, or false (tap's `skip`). */
export function needsPrometheus(): string | false {
  for (const tool of ['prometheus', 'promtool']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return `needs Debian's prometheus package (${tool}; scripts/test installs it as root)`
  }
  return false
}

/** The port a daemon's --metrics-addr ended up on (its SERVING_METRICS_MESSAGE line). */
export function metricsPort(logs: string): number {
  const line = logs.split('\n').find(l => l.includes(`"msg":"${SERVING_METRICS_MESSAGE}"`))
  const port = line === undefined ? undefined : (JSON.parse(line) as { port?: number }).port
  if (port === undefined) throw new Error('the daemon logged no metrics port')
  return port
}

export async function freePort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  await new Promise<void>(resolve => server.close(() => resolve()))
  if (typeof address !== 'object' || address === null) throw new Error('no port')
  return address.port
}

export interface Prometheus {
  /** An instant query's single value (undefined when the series does not exist). */
  value(query: string): Promise<number | undefined>
  /** Waits until a query's value satisfies `ok` (Prometheus scrapes every 250 ms); returns it. */
  until(query: string, ok: (value: number) => boolean, timeoutMs?: number): Promise<number>
}

/** A real Prometheus scraping 127.0.0.1:`target` every 250 ms; stopped on teardown. */
export async function startPrometheus(t: TapLike, dir: string, target: number): Promise<Prometheus> {
  const port = await freePort()
  const config = path.join(dir, 'prometheus.yml')
  await fs.writeFile(config, [
    'global: { scrape_interval: 250ms, scrape_timeout: 200ms }',
    'scrape_configs:',
    '  - job_name: cinderfs',
    `    static_configs: [{ targets: ['127.0.0.1:${target}'] }]`,
    '',
  ].join('\n'))
  let logs = ''
  const child = spawn('prometheus', [
    `--config.file=${config}`, `--storage.tsdb.path=${path.join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn',
  ], { stdio: ['ignore', 'ignore', 'pipe'] })
  child.stderr?.on('data', (chunk: Buffer) => { logs += chunk.toString() })
  const exited = new Promise<void>(resolve => child.on('exit', () => resolve()))
  t.teardown(async () => {
    child.kill('SIGTERM')
    await exited
  })
  const base = `http://127.0.0.1:${port}`
  for (let waited = 0; !await fetch(`${base}/-/ready`).then(r => r.ok, () => false); waited += 100) {
    if (child.exitCode !== null || waited > 30_000) throw new Error(`prometheus did not become ready:\n${logs}`)
    await sleep(100)
  }
  const value = async (query: string): Promise<number | undefined> => {
    const reply = await fetch(`${base}/api/v1/query?query=${encodeURIComponent(query)}`)
    const body = await reply.json() as { status: string, data?: { result?: Array<{ value: [number, string] }> } }
    if (body.status !== 'success') throw new Error(`query ${query} failed: ${JSON.stringify(body)}`)
    const sample = body.data?.result?.[0]
    return sample === undefined ? undefined : Number(sample.value[1])
  }
  return {
    value,
    until: async (query, ok, timeoutMs = 30_000) => {
      let last: number | undefined
      for (let waited = 0; waited <= timeoutMs; waited += 100) {
        last = await value(query)
        if (last !== undefined && ok(last)) return last
        await sleep(100)
      }
      throw new Error(`${query} never satisfied the condition within ${timeoutMs} ms (last value ${String(last)})`)
    },
  }
}
