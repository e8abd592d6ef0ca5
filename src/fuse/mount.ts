import { execFile } from 'node:child_process'
import type { Stats } from 'node:fs'
import fs from 'node:fs/promises'
import { promisify } from 'node:util'
import type { Operations } from 'fuse-native'
import { ConfigError, errorCode, errorMessage } from '../errors/errors.js'
import type { Logger } from '../log/logger.js'
import { loadFuse } from './binding.js'

const run = promisify(execFile)

export interface MountOptions {
  allowOther: boolean
  readOnly: boolean
}

export interface FuseMount {
  unmount(): Promise<void>
  /** Resolves when the kernel ended the session by itself (fusermount -u, umount); fuse3 only. */
  ended?: Promise<void>
}

/**
 * Options fuse-native has no switch for ride in after fsname (it joins the
 * option list with commas): big_writes, or libfuse2 sends 4 KiB writes
 * (46 MB/s instead of 400+ measured here); max_write to the 128 KiB libfuse2
 * allows. fuse-native's 15 s per-operation timeout is off: a lazy attach on
 * a real cloud can take longer, and the backend clients carry their own.
 */
export async function mountFuse(mountpoint: string, ops: Operations, options: MountOptions, log: Logger): Promise<FuseMount> {
  await prepareMountpoint(mountpoint, log)
  const Fuse = loadFuse()
  const extra = ['big_writes', 'max_write=131072', 'subtype=cinderfs']
  if (options.readOnly) extra.push('ro')
  const fuse = new Fuse(mountpoint, ops, {
    fsname: ['cinderfs', ...extra].join(','),
    timeout: false,
    allowOther: options.allowOther,
    defaultPermissions: true,
    attrTimeout: 1,
    entryTimeout: 1,
  })
  await new Promise<void>((resolve, reject) => fuse.mount(err => err === null ? resolve() : reject(err)))
  return {
    unmount: async () => new Promise<void>((resolve, reject) => fuse.unmount(err => err === null ? resolve() : reject(err))),
  }
}

/** How long a mount point may take to answer before its daemon counts as hung. */
const PROBE_TIMEOUT_MS = 10_000

/**
 * What a mount point answers: its stat, the error, or 'timeout' (a hung
 * daemon). statfs goes first because it always reaches a FUSE daemon: a
 * stat of the mount's root can be answered from the kernel's attribute
 * cache for a while after its daemon died.
 */
export async function probeMountpoint(mountpoint: string, timeoutMs = PROBE_TIMEOUT_MS): Promise<{ stat: Stats } | { error: unknown } | 'timeout'> {
  let timer: NodeJS.Timeout | undefined
  const hung = new Promise<'timeout'>(resolve => { timer = setTimeout(() => { resolve('timeout') }, timeoutMs) })
  try {
    return await Promise.race([
      fs.statfs(mountpoint).then(async () => ({ stat: await fs.stat(mountpoint) })).catch((error: unknown) => ({ error })),
      hung,
    ])
  } finally {
    clearTimeout(timer)
  }
}

/** The mount point must be a directory; a dead daemon's mount on it ("Transport endpoint is not connected") is cleared, a live one's refused. */
export async function prepareMountpoint(mountpoint: string, log: Logger): Promise<void> {
  const probe = await probeMountpoint(mountpoint)
  if (probe === 'timeout') throw new ConfigError(`${mountpoint} does not answer within ${PROBE_TIMEOUT_MS / 1000} s: the daemon serving it hangs (run: cinderfs unmount ${mountpoint})`)
  if ('error' in probe) {
    if (errorCode(probe.error) === 'ENOTCONN') {
      log.warn({ mountpoint }, 'clearing a stale mount left by a daemon that died')
      await unmountLazily(mountpoint)
      return
    }
    if (errorCode(probe.error) === 'ENOENT') throw new ConfigError(`mount point ${mountpoint} does not exist`)
    throw probe.error
  }
  if (!probe.stat.isDirectory()) throw new ConfigError(`mount point ${mountpoint} is not a directory`)
  if (await isMounted(mountpoint)) throw new ConfigError(`${mountpoint} is already mounted (run: cinderfs unmount ${mountpoint})`)
}

export async function isMounted(mountpoint: string): Promise<boolean> {
  const mounts = await fs.readFile('/proc/self/mounts', 'utf8')
  const escaped = mountpoint.replace(/[ \t\n\\]/g, c => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`)
  return mounts.split('\n').some(line => line.split(' ')[1] === escaped)
}

export async function unmountLazily(mountpoint: string): Promise<void> {
  try {
    await run('fusermount', ['-u', '-z', mountpoint], { timeout: 30_000 })
  } catch (err) {
    throw new Error(`fusermount -u -z ${mountpoint} failed: ${errorMessage(err)}`)
  }
}
