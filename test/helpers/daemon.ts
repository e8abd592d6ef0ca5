import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { pino } from 'pino'
import { LocalVolumeService } from '../../src/backends/local.js'
import { listAll, type VolumeService } from '../../src/backends/volume-service.js'
import { isolatedCloud, needsOpenStack, rigRunning, STATE_DIR, type IsolatedCloud } from './openstack.js'
import { needsFuse } from './requirements.js'
import { run } from './shell.js'

const cli = path.join(__dirname, '..', '..', '..', 'bin', 'cinderfs')

/**
 * The backend the file-system suite runs on: CINDERFS_TEST_BACKEND=local
 * (the default) or cinder (the rig of scripts/openstack, which scripts/test
 * starts; each workspace gets a project of its own on it).
 */
export const backend: BackendName = process.env.CINDERFS_TEST_BACKEND === 'cinder' ? 'cinder' : 'local'
export type BackendName = 'local' | 'cinder'

/**
 * The FUSE binding the daemons of the suite use: CINDERFS_TEST_FUSE_BINDING
 * (fuse3 or fuse-native), else the daemon's default. scripts/test runs the
 * file-system suite once more on the binding that is not the default.
 */
export const fuseBinding: string | undefined = process.env.CINDERFS_TEST_FUSE_BINDING

/**
 * The rig's volume type the cinder daemons put images on:
 * CINDERFS_TEST_VOLUME_TYPE (e.g. `iscsi`, the tgtd backend that only the
 * libiscsi connector reaches), else the default type (loop devices).
 */
export const volumeType: string | undefined = process.env.CINDERFS_TEST_VOLUME_TYPE || undefined
/** startDaemon's arguments for volumeType. */
export const volumeTypeArgs: string[] = volumeType === undefined ? [] : ['--volume-type', volumeType]

/** Why the file-system tests cannot run on this backend here, or false (tap's `skip`). */
export function needsBackend(on: BackendName = backend): string | false {
  const fuse = needsFuse()
  if (fuse !== false || on === 'local') return fuse
  const openStack = needsOpenStack()
  if (openStack !== false) return openStack
  return rigRunning() ? false : 'the OpenStack rig is not running (scripts/test starts it for the cinder pass)'
}

/** `skip` for a test that only the local backend can run, saying why; else as needsBackend. */
export function localOnly(why: string): string | false {
  return backend === 'local' ? needsBackend() : `local backend only: ${why}`
}

export interface Daemon {
  mountpoint: string
  localDir: string
  child: ChildProcess
  /** Everything the daemon logged so far (JSON lines). */
  logs(): string
  /**
   * Resolves once the daemon has logged `message` (an exported message
   * constant) on `times` lines (default 1) whose fields equal `fields`.
   */
  logged(message: string, match?: { times?: number } & Record<string, unknown>): Promise<void>
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
  /** image_owner of the images its daemons make: `cinderfs` (local) or the project id (cinder). */
  imageOwner: string
  /** The backend as the daemons see it, built in the test process. */
  service: VolumeService
  /** cinder only: the workspace's own project and clouds.yaml. */
  cloud?: IsolatedCloud
  /** Volume ids the daemons logged (their loop devices are checked for leaks). */
  volumeIds: Set<string>
  daemons: Daemon[]
}

interface TapLike {
  teardown(fn: () => unknown): void
}

/**
 * Temp directories for one test (and, on cinder, a project of its own); on
 * teardown its daemons are stopped, and anything mounted, attached or
 * created under them is cleaned up.
 */
export async function workspace(t: TapLike, on: BackendName = backend): Promise<Workspace> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'cinderfs-test-'))
  const localDir = path.join(root, 'volumes')
  await fs.mkdir(path.join(root, 'mnt'))
  const base = { root, mountpoint: path.join(root, 'mnt'), localDir, volumeIds: new Set<string>(), daemons: [] }
  let ws: Workspace
  if (on === 'cinder') {
    const cloud = await isolatedCloud(root)
    ws = { ...base, imageOwner: cloud.projectId, service: cloud.service, cloud }
  } else {
    const service = new LocalVolumeService({ dir: localDir, host: 'cinderfs-test', useLoopDevices: false, logger: pino({ level: 'silent' }) })
    ws = { ...base, imageOwner: 'cinderfs', service }
  }
  t.teardown(async () => {
    for (const daemon of ws.daemons) await daemon.stop()
    await run(`fusermount -u -z '${ws.mountpoint}' 2>/dev/null; umount -l '${ws.localDir}' 2>/dev/null; true`)
    for (const loop of await loopsOf(ws)) await run(`losetup -d ${loop}`)
    await ws.cloud?.remove()
    await fs.rm(root, { recursive: true, force: true })
  })
  return ws
}

/**
 * Starts `cinderfs mount` on the workspace and waits for it to be mounted; the workspace stops it on teardown.
 * `cwd` is where the daemon runs (its ./clouds.yaml for --os-cloud; default the workspace).
 */
export async function startDaemon(ws: Workspace, args: string[] = [], options: { cwd?: string } = {}): Promise<Daemon> {
  const backendArgs = ws.cloud === undefined ? ['--local-dir', ws.localDir] : ['--backend', 'cinder', '--os-cloud', ws.cloud.cloud, ...volumeTypeArgs]
  const bindingArgs = fuseBinding === undefined || args.includes('--fuse-binding') ? [] : ['--fuse-binding', fuseBinding]
  const child = spawn(process.execPath, [cli, 'mount', ws.mountpoint, ...backendArgs, '--log-level', 'debug', ...bindingArgs, ...args], { stdio: ['ignore', 'ignore', 'pipe'], cwd: options.cwd ?? ws.root })
  let logs = ''
  const waiters = new Set<() => void>()
  child.stderr?.on('data', (chunk: Buffer) => {
    const text = chunk.toString()
    logs += text
    for (const wake of waiters) wake()
    for (const [, id] of text.matchAll(/"volumeId":"([0-9a-f-]{36})"/g)) if (id !== undefined) ws.volumeIds.add(id)
  })
  const exited = new Promise<number | null>(resolve => child.on('exit', code => resolve(code)))
  const daemon: Daemon = {
    mountpoint: ws.mountpoint,
    localDir: ws.localDir,
    child,
    logs: () => logs,
    file: name => path.join(ws.mountpoint, name),
    logged: async (message, match = {}) => {
      const { times = 1, ...fields } = match
      const count = (): number => logLines(logs).filter(line => line.msg === message && Object.entries(fields).every(([k, v]) => line[k] === v)).length
      const deadline = Date.now() + loggedTimeoutMs
      while (count() < times) {
        if (child.exitCode !== null || child.signalCode !== null) throw new Error(`cinderfs exited before logging '${message}'`)
        if (Date.now() > deadline) throw new Error(`cinderfs did not log '${message}' ${times} time(s) with ${JSON.stringify(fields)} within ${loggedTimeoutMs / 1000} s`)
        await new Promise<void>(resolve => {
          const wake = (): void => { waiters.delete(wake); clearTimeout(timer); resolve() }
          // Woken by the next log line or the exit; the timer only bounds a wait for a line that never comes.
          const timer = setTimeout(wake, 1000)
          waiters.add(wake)
          child.once('exit', wake)
        })
      }
    },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
      // unref'd: a pending timer would keep the test process alive for the full minute
      return Promise.race([exited, sleep(60_000, undefined, { ref: false }).then(() => { child.kill('SIGKILL'); return null })])
    },
    kill: async () => {
      child.kill('SIGKILL')
      await exited
    },
  }
  ws.daemons.push(daemon)
  for (let waited = 0; !logs.includes('"msg":"mounted"'); waited += 50) {
    if (child.exitCode !== null || waited > 30_000) throw new Error(`cinderfs did not mount (exit ${child.exitCode}):\n${logs}`)
    await sleep(50)
  }
  return daemon
}

/**
 * Loop devices the workspace's volumes left (a leak check): on local those
 * backed by files under its root, on cinder those over the rig's files of
 * the volumes its daemons logged.
 */
export async function loopsOf(ws: Workspace): Promise<string[]> {
  const out = (await run('losetup --list --noheadings --output NAME,BACK-FILE')).stdout
  const ours = (backing: string): boolean => ws.cloud === undefined
    ? backing.startsWith(ws.root + '/')
    : backing.startsWith(STATE_DIR + '/') && [...ws.volumeIds].some(id => backing.includes(id))
  return out.split('\n').map(line => line.trim().split(/\s+/)).filter(([name, backing]) => name !== undefined && name !== '' && backing !== undefined && ours(backing)).map(([name]) => name ?? '')
}

/** The workspace's volumes, as its backend lists them, by name. */
export async function volumes(ws: Workspace): Promise<Array<{ id: string, name: string, sizeGiB: number, readOnly: boolean, metadata: Record<string, string> }>> {
  const all = await listAll(ws.service).catch((err: unknown) => {
    // the local directory does not exist before the first daemon made it
    if ((err as { code?: string }).code === 'ENOENT' && ws.cloud === undefined) return []
    throw err
  })
  return all.map(({ id, name, sizeGiB, readOnly, metadata }) => ({ id, name, sizeGiB, readOnly, metadata })).sort((a, b) => a.name.localeCompare(b.name))
}

/** The longest a test waits for a log line (a seal takes the seal delay and a few requests). */
const loggedTimeoutMs = 120_000

/** The daemon's JSON log lines, parsed (lines that are not JSON are skipped). */
export function logLines(logs: string): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = []
  for (const line of logs.split('\n')) {
    if (!line.startsWith('{')) continue
    try {
      out.push(JSON.parse(line) as Record<string, unknown>)
    } catch {
      // a line cut by the read; it is whole in a later call
    }
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

/** Attachments Cinder still lists on the workspace's volumes. */
export async function attachmentsOf(ws: Workspace): Promise<string[]> {
  if (ws.cloud === undefined) throw new Error('not a cinder workspace')
  return await ws.cloud.attachments()
}
