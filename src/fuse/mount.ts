import { execFile } from 'node:child_process'
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

/** The mount point must be a directory; a dead daemon's mount on it ("Transport endpoint is not connected") is cleared. */
export async function prepareMountpoint(mountpoint: string, log: Logger): Promise<void> {
  try {
    const stat = await fs.stat(mountpoint)
    if (!stat.isDirectory()) throw new ConfigError(`mount point ${mountpoint} is not a directory`)
  } catch (err) {
    if (errorCode(err) === 'ENOTCONN') {
      log.warn({ mountpoint }, 'clearing a stale mount left by a daemon that died')
      await unmountLazily(mountpoint)
      return
    }
    if (errorCode(err) === 'ENOENT') throw new ConfigError(`mount point ${mountpoint} does not exist`)
    throw err
  }
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
