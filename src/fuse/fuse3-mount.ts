import fs from 'node:fs/promises'
import { errorMessage } from '../errors/errors.js'
import type { ImageFs } from '../fs/image-fs.js'
import type { Logger } from '../log/logger.js'
import type { Metrics } from '../metrics/metrics.js'
import type { Transfers } from '../metrics/transfers.js'
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
const unmountRetryMs = 100

export interface Fuse3MountOptions extends MountOptions {
  /** Entry and attribute timeout, seconds. */
  ttlSeconds: number
}

/** Mounts with native/fuse3; the inode table and adapter live as long as the session. */
export async function mountFuse3(mountpoint: string, imageFs: ImageFs, store: ImageStore, options: Fuse3MountOptions, log: Logger, metrics: Metrics, transfers: Transfers): Promise<FuseMount & { adapter: Fuse3Adapter }> {
  await prepareMountpoint(mountpoint, log)
  const native = loadFuse3()
  const adapter = new Fuse3Adapter({ fs: imageFs, native, log, metrics, transfers, ttlSeconds: options.ttlSeconds })
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
      // Repeated until the session ends: the wake-up can land just before the loop sleeps (see fuse3.c).
      native.unmount()
      const again = setInterval(() => { if (!exited) native.unmount() }, unmountRetryMs)
      await ended
      clearInterval(again)
    },
  }
}

/** The mount's anonymous device ("0:53"), which names its bdi. */
async function mountDevice(mountpoint: string): Promise<string | undefined> {
  const lines = (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n')
  const mine = lines.filter(line => line.split(' ')[4] === mountpoint && line.includes(' fuse.cinderfs '))
  return mine.at(-1)?.split(' ')[2]
}
