import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { run } from './shell.js'

const cli = path.join(__dirname, '..', '..', '..', 'bin', 'cinderfs')

export interface Daemon {
  mountpoint: string
  localDir: string
  child: ChildProcess
  /** Everything the daemon logged so far (JSON lines). */
  logs(): string
  /** `mountpoint/name`. */
  file(name: string): string
  /** SIGTERM and wait; resolves with the exit code. */
  stop(): Promise<number | null>
  /** SIGKILL, as a crash: the mount is left stale. */
  kill(): Promise<void>
}

export interface Workspace {
  root: string
  mountpoint: string
  localDir: string
}

interface TapLike {
  teardown(fn: () => unknown): void
}

/** Temp directories for one test; on teardown, anything mounted or attached under them is cleaned up. */
export async function workspace(t: TapLike): Promise<Workspace> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'cinderfs-test-'))
  const ws = { root, mountpoint: path.join(root, 'mnt'), localDir: path.join(root, 'volumes') }
  await fs.mkdir(ws.mountpoint)
  t.teardown(async () => {
    await run(`fusermount -u -z '${ws.mountpoint}' 2>/dev/null; umount -l '${ws.localDir}' 2>/dev/null; true`)
    for (const loop of await loopsUnder(root)) await run(`losetup -d ${loop}`)
    await fs.rm(root, { recursive: true, force: true })
  })
  return ws
}

/**
 * Starts `cinderfs mount` on the workspace and waits for it to be mounted.
 * `cwd` is where the daemon runs (its ./clouds.yaml for --os-cloud).
 */
export async function startDaemon(t: TapLike, ws: Workspace, args: string[] = [], options: { cwd?: string } = {}): Promise<Daemon> {
  const child = spawn(process.execPath, [cli, 'mount', ws.mountpoint, '--local-dir', ws.localDir, '--log-level', 'debug', ...args], { stdio: ['ignore', 'ignore', 'pipe'], cwd: options.cwd })
  let logs = ''
  child.stderr?.on('data', (chunk: Buffer) => { logs += chunk.toString() })
  const exited = new Promise<number | null>(resolve => child.on('exit', code => resolve(code)))
  const daemon: Daemon = {
    mountpoint: ws.mountpoint,
    localDir: ws.localDir,
    child,
    logs: () => logs,
    file: name => path.join(ws.mountpoint, name),
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
      return Promise.race([exited, sleep(60_000).then(() => { child.kill('SIGKILL'); return null })])
    },
    kill: async () => {
      child.kill('SIGKILL')
      await exited
    },
  }
  t.teardown(async () => { await daemon.stop() })
  for (let waited = 0; !logs.includes('"msg":"mounted"'); waited += 50) {
    if (child.exitCode !== null || waited > 30_000) throw new Error(`cinderfs did not mount (exit ${child.exitCode}):\n${logs}`)
    await sleep(50)
  }
  return daemon
}

/** Loop devices whose backing files lie under `dir` (a leak check). */
export async function loopsUnder(dir: string): Promise<string[]> {
  const out = (await run('losetup --list --noheadings --output NAME,BACK-FILE')).stdout
  return out.split('\n').filter(line => line.includes(dir)).map(line => line.trim().split(/\s+/)[0] ?? '').filter(name => name !== '')
}

/** Volumes of the local backend, as their records say. */
export async function localVolumes(dir: string): Promise<Array<{ id: string, name: string, sizeGiB: number, readOnly: boolean, metadata: Record<string, string> }>> {
  const entries = await fs.readdir(dir).catch(() => [])
  const out = []
  for (const entry of entries) {
    if (!entry.endsWith('.json')) continue
    out.push(JSON.parse(await fs.readFile(path.join(dir, entry), 'utf8')) as { id: string, name: string, sizeGiB: number, readOnly: boolean, metadata: Record<string, string> })
  }
  return out
}

/** A file of random bytes, made once per size per run. */
export async function randomFile(size: number): Promise<string> {
  const file = path.join(os.tmpdir(), `cinderfs-random-${size}`)
  const exists = await fs.stat(file).then(s => s.size === size, () => false)
  if (!exists) {
    await run(`head -c ${size} /dev/urandom > '${file}.tmp' && mv '${file}.tmp' '${file}'`)
  }
  return file
}
