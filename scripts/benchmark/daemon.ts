import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

/** What the daemon's `metrics` log line carries (src/cli/daemon.ts, src/metrics/metrics.ts). */
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
      '--cache-size', this.o.cacheSize, '--block-size', this.o.blockSize, '--fuse-binding', this.o.fuseBinding, '--log-level', 'info',
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

  /** SIGUSR2, then the metrics line it logs. */
  async metrics(): Promise<MetricsSnapshot> {
    const pid = this.pid
    if (pid === undefined) throw new Error('daemon not running')
    const before = this.metricLines().length
    process.kill(pid, 'SIGUSR2')
    for (let waited = 0; waited < 10_000; waited += 20) {
      const lines = this.metricLines()
      const last = lines.at(-1)
      if (lines.length > before && last !== undefined) return parseMetrics(last)
      await sleep(20)
    }
    throw new Error('the daemon logged no metrics line within 10 s of SIGUSR2')
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

  private metricLines(): string[] {
    return fs.readFileSync(this.o.logFile, 'utf8').split('\n').filter(line => line.includes('"msg":"metrics"'))
  }
}

function parseMetrics(line: string): MetricsSnapshot {
  const parsed: unknown = JSON.parse(line)
  const record = (value: unknown): Record<string, unknown> => typeof value === 'object' && value !== null ? value as Record<string, unknown> : {}
  const numbers = (value: unknown): Record<string, number> =>
    Object.fromEntries(Object.entries(record(value)).filter((e): e is [string, number] => typeof e[1] === 'number'))
  const metrics = record(record(parsed).metrics)
  const cache = record(record(parsed).cache)
  return {
    readSizes: numbers(metrics.readSizes),
    writeSizes: numbers(metrics.writeSizes),
    bytesRead: Number(metrics.bytesRead ?? 0),
    bytesWritten: Number(metrics.bytesWritten ?? 0),
    deviceBytes: Number(cache.deviceBytes ?? 0),
    deviceReads: Number(cache.deviceReads ?? 0),
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
