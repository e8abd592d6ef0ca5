import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

/** What the bench takes from the daemon's Prometheus metrics (src/metrics/metrics.ts). */
export interface MetricsSnapshot {
  readSizes: Record<string, number>
  writeSizes: Record<string, number>
  bytesRead: number
  bytesWritten: number
  deviceBytes: number
  deviceReads: number
}

export interface DaemonOptions {
  mountpoint: string
  localDir: string
  logFile: string
  cacheSize: string
  blockSize: string
  /** Extra node flags for the daemon (--cpu-prof, --perf-basic-prof ...). */
  nodeArgs: string[]
  /** --fuse-binding of the daemon. */
  fuseBinding: string
}

const repoRoot = path.join(__dirname, '..', '..', '..')
export const cliPath = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js')

export function isMounted(mountpoint: string): boolean {
  const mounts = fs.readFileSync('/proc/self/mounts', 'utf8')
  return mounts.split('\n').some(line => line.split(' ')[1] === mountpoint)
}

/**
 * One cinderfs daemon in its own process group (so Ctrl-C reaches the bench,
 * which stops the daemon in order). Logs go to a file; metrics are read from it.
 */
export class Daemon {
  private child: ChildProcess | undefined
  private exited: Promise<number | null> | undefined

  constructor(private readonly o: DaemonOptions) {}

  get pid(): number | undefined {
    return this.child?.pid
  }

  get running(): boolean {
    return this.child !== undefined
  }

  async start(): Promise<number> {
    if (this.child !== undefined) throw new Error('daemon already running')
    const log = fs.openSync(this.o.logFile, 'a')
    const child = spawn(process.execPath, [
      ...this.o.nodeArgs, cliPath, 'mount', this.o.mountpoint, '--local-dir', this.o.localDir,
      '--cache-size', this.o.cacheSize, '--block-size', this.o.blockSize, '--fuse-binding', this.o.fuseBinding, '--log-level', 'info', '--metrics-addr', '127.0.0.1:0',
    ], { detached: true, stdio: ['ignore', log, log] })
    fs.closeSync(log)
    this.child = child
    this.exited = new Promise(resolve => child.once('exit', code => resolve(code)))
    let exitCode: number | null | undefined
    void this.exited.then(code => { exitCode = code })
    for (let waited = 0; !isMounted(this.o.mountpoint); waited += 50) {
      if (exitCode !== undefined) {
        this.child = undefined
        throw new Error(`cinderfs exited with ${String(exitCode)} before mounting; last log lines:\n${this.tail(5)}`)
      }
      // Recovery lists every volume first: with the 10,000 images of the list rows that takes a while.
      if (waited > 180_000) throw new Error(`cinderfs did not mount ${this.o.mountpoint} within 180 s; last log lines:\n${this.tail(5)}`)
      await sleep(50)
    }
    if (child.pid === undefined) throw new Error('cinderfs has no pid')
    return child.pid
  }

  /** A scrape of the daemon's /metrics (on the port its `serving metrics` line names). */
  async metrics(): Promise<MetricsSnapshot> {
    if (this.pid === undefined) throw new Error('daemon not running')
    const line = fs.readFileSync(this.o.logFile, 'utf8').split('\n').filter(l => l.includes('"msg":"serving metrics"')).at(-1)
    const port = line === undefined ? undefined : (JSON.parse(line) as { port?: number }).port
    if (port === undefined) throw new Error('the daemon logged no "serving metrics" line')
    const response = await fetch(`http://127.0.0.1:${port}/metrics`)
    if (!response.ok) throw new Error(`GET /metrics: ${response.status}`)
    return parseMetrics(await response.text())
  }

  /** SIGTERM and wait (the daemon detaches and unmounts); SIGKILL and a lazy unmount if it hangs. */
  async stop(): Promise<void> {
    const child = this.child
    if (child === undefined || this.exited === undefined) return
    const exited = this.exited
    child.kill('SIGTERM')
    const code = await Promise.race([exited, sleep(120_000).then(() => 'timeout' as const)])
    if (code === 'timeout') {
      child.kill('SIGKILL')
      await exited
    }
    this.child = undefined
    if (isMounted(this.o.mountpoint)) spawnSync('fusermount', ['-u', '-z', this.o.mountpoint])
    if (code === 'timeout') throw new Error('cinderfs did not stop within 120 s of SIGTERM (killed)')
    if (code !== 0) throw new Error(`cinderfs stopped with exit code ${String(code)}; last log lines:\n${this.tail(5)}`)
  }

  tail(lines: number): string {
    const text = fs.existsSync(this.o.logFile) ? fs.readFileSync(this.o.logFile, 'utf8') : ''
    return text.trimEnd().split('\n').slice(-lines).join('\n')
  }

}

/** The Prometheus text exposition → the bench's snapshot (request sizes as per-bucket counts: "128K"). */
function parseMetrics(text: string): MetricsSnapshot {
  const samples = text.split('\n').filter(l => l !== '' && !l.startsWith('#')).map(l => {
    const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(l)
    const labels = Object.fromEntries([...(m?.[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map(([, k, v]) => [k, v]))
    return { name: m?.[1] ?? '', labels, value: Number(m?.[3]) }
  })
  const value = (name: string): number => samples.find(s => s.name === name)?.value ?? 0
  const sizes = (op: string): Record<string, number> => {
    const buckets = samples.filter(s => s.name === 'cinderfs_fuse_request_size_bytes_bucket' && s.labels.op === op && s.labels.le !== '+Inf')
      .map(s => ({ le: Number(s.labels.le), count: s.value })).sort((a, b) => a.le - b.le)
    const out: Record<string, number> = {}
    let below = 0
    for (const { le, count } of buckets) {
      if (count > below) out[le >= 1024 ? `${le / 1024}K` : `${le}B`] = count - below
      below = count
    }
    return out
  }
  return {
    readSizes: sizes('read'),
    writeSizes: sizes('write'),
    bytesRead: value('cinderfs_read_bytes_total'),
    bytesWritten: value('cinderfs_written_bytes_total'),
    deviceBytes: value('cinderfs_device_read_bytes_total'),
    deviceReads: value('cinderfs_device_reads_total'),
  }
}

/** What happened between two snapshots. */
export function metricsDelta(from: MetricsSnapshot, to: MetricsSnapshot): MetricsSnapshot {
  const sub = (a: Record<string, number>, b: Record<string, number>): Record<string, number> =>
    Object.fromEntries(Object.entries(b).map(([k, v]) => [k, v - (a[k] ?? 0)]).filter(([, v]) => v !== 0))
  return {
    readSizes: sub(from.readSizes, to.readSizes),
    writeSizes: sub(from.writeSizes, to.writeSizes),
    bytesRead: to.bytesRead - from.bytesRead,
    bytesWritten: to.bytesWritten - from.bytesWritten,
    deviceBytes: to.deviceBytes - from.deviceBytes,
    deviceReads: to.deviceReads - from.deviceReads,
  }
}
