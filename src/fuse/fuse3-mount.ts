import fs from 'node:fs/promises'
import { errorMessage } from '../errors/errors.js'
import type { ImageFs } from '../fs/image-fs.js'
import type { Logger } from '../log/logger.js'
import type { Metrics } from '../metrics/metrics.js'
import type { ImageStore } from '../store/image-store.js'
import { Fuse3Adapter } from './fuse3-adapter.js'
import { loadFuse3 } from './fuse3-native.js'
import { prepareMountpoint, type FuseMount, type MountOptions } from './mount.js'

/** libfuse's worker threads: they only move requests, so a few are plenty on small hosts. */
const maxThreads = 8
/**
 * The kernel's readahead for the mount. Its default (128 KiB) would cut
 * every buffered read into 128 KiB requests; 1 MiB matches max_pages.
 */
const readaheadKiB = 1024
/** How long an unmount may wait for open files before the connection is aborted. */
const unmountGraceMs = 10_000

export interface Fuse3MountOptions extends MountOptions {
  /** Entry and attribute timeout, seconds. */
  ttlSeconds: number
}

/** Mounts with native/fuse3; the inode table and adapter live as long as the session. */
export async function mountFuse3(mountpoint: string, imageFs: ImageFs, store: ImageStore, options: Fuse3MountOptions, log: Logger, metrics: Metrics): Promise<FuseMount & { adapter: Fuse3Adapter }> {
  await prepareMountpoint(mountpoint, log)
  const native = loadFuse3()
  const adapter = new Fuse3Adapter({ fs: imageFs, native, log, metrics, ttlSeconds: options.ttlSeconds })
  const mountOptions = ['fsname=cinderfs', 'subtype=cinderfs', 'default_permissions']
  if (options.allowOther) mountOptions.push('allow_other')
  if (options.readOnly) mountOptions.push('ro')
  let exited = false
  const ended = new Promise<void>(resolve => {
    adapter.whenExited(code => {
      exited = true
      native.close()
      log.info({ code }, 'FUSE session ended')
      resolve()
    })
  })
  native.mount(mountpoint, mountOptions.join(','), adapter.handle, maxThreads)
  store.watch(name => { adapter.nameChanged(name) })
  const device = await mountDevice(mountpoint)
  if (device !== undefined) {
    await fs.writeFile(`/sys/class/bdi/${device}/read_ahead_kb`, String(readaheadKiB)).catch((err: unknown) => {
      log.warn({ device, err: errorMessage(err) }, 'could not raise the mount\'s readahead; buffered reads stay at 128 KiB requests')
    })
  }
  return {
    adapter,
    ended,
    unmount: async () => {
      if (exited) return
      native.unmount()
      const timer = setTimeout(() => { void abortConnection(device, log) }, unmountGraceMs)
      await ended
      clearTimeout(timer)
    },
  }
}

/** The mount's anonymous device ("0:53"): its bdi and its /sys/fs/fuse/connections entry are named by it. */
async function mountDevice(mountpoint: string): Promise<string | undefined> {
  const lines = (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n')
  const mine = lines.filter(line => line.split(' ')[4] === mountpoint && line.includes(' fuse.cinderfs '))
  return mine.at(-1)?.split(' ')[2]
}

/** Files still open on a lazily unmounted mount would keep the session alive: end it. */
async function abortConnection(device: string | undefined, log: Logger): Promise<void> {
  const minor = device?.split(':')[1]
  if (minor === undefined) return
  log.warn({ device }, 'files still open after unmount; aborting the FUSE connection')
  await fs.writeFile(`/sys/fs/fuse/connections/${minor}/abort`, '1').catch((err: unknown) => {
    log.error({ device, err: errorMessage(err) }, 'aborting the FUSE connection failed')
  })
}
