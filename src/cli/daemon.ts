import { AttachmentManager } from '../attachments/attachment-manager.js'
import { openBackend, openRegistration, type GlanceRegistration } from './backend.js'
import { BlockCache } from '../cache/block-cache.js'
import type { Config } from '../config/config.js'
import { formatSize } from '../config/sizes.js'
import { ConnectorRegistry } from '../connectors/registry.js'
import type { VolumeService } from '../backends/volume-service.js'
import { errorMessage } from '../errors/errors.js'
import { candidates } from '../glance/registration.js'
import { ImageFs } from '../fs/image-fs.js'
import { ImageLifecycle } from '../image/lifecycle.js'
import { Janitor } from '../janitor/janitor.js'
import { systemClock } from '../model/clock.js'
import { fuseOperations } from '../fuse/fuse-adapter.js'
import { mountFuse3 } from '../fuse/fuse3-mount.js'
import { isMounted, mountFuse } from '../fuse/mount.js'
import type { Logger } from '../log/logger.js'
import { Metrics } from '../metrics/metrics.js'
import { ImageStore } from '../store/image-store.js'
import { removePidFile, writePidFile } from './runtime.js'

/** How often the daemon looks whether someone else unmounted it (fusermount -u, umount). */
const mountCheckMs = 2000

/** Builds the layers, recovers, mounts, and runs until SIGINT/SIGTERM or an outside unmount. Resolves with the exit code. */
export async function runMount(config: Config, log: Logger): Promise<number> {
  const janitor = new Janitor({ logger: log })
  const apiRetryWindowMs = config.apiRetryWindowSeconds * 1000
  const backend = await openBackend(config, log, janitor, { spares: config.readOnly ? 0 : config.createAhead })
  const { service } = backend
  let glance: GlanceRegistration | undefined
  try {
    if (config.glanceRegister) glance = await openRegistration(config, false, log)
  } catch (err) {
    await service.close()
    throw err
  }
  const registering = glance === undefined ? undefined : new RegistrationQueue(glance, service, log)
  const attachments = new AttachmentManager({
    service, connectors: new ConnectorRegistry(backend.connectors), idleDetachMs: config.idleDetachSeconds * 1000, logger: log, janitor,
  })
  const cache = new BlockCache({ budgetBytes: config.cacheSize, blockSize: config.blockSize, readaheadBytes: config.readahead })
  const store = new ImageStore({ service, logger: log, listTtlMs: config.listTtlSeconds * 1000, owner: { uid: config.uid, gid: config.gid } })
  const lifecycle = new ImageLifecycle({
    service, store, attachments, cache, logger: log, imageOwner: backend.imageOwner, host: config.host, uid: config.uid, gid: config.gid,
    janitor, apiRetryWindowMs,
    ...(registering === undefined ? {} : { imageReady: (volumeId: string) => { registering.add(volumeId) } }),
  })
  const fs = new ImageFs({
    service, store, lifecycle, attachments, cache, logger: log, clock: systemClock, readOnly: config.readOnly,
    writeBuffer: config.writeBuffer, sealDelayMs: config.sealDelaySeconds * 1000, uid: config.uid, gid: config.gid,
    apiRetryWindowMs,
  })
  const metrics = new Metrics()
  try {
    if (!config.readOnly) await fs.recover()
  } catch (err) {
    await service.close()
    throw err
  }
  const mountOptions = { allowOther: config.allowOther, readOnly: config.readOnly }
  const mount = config.fuseBinding === 'fuse3'
    ? await mountFuse3(config.mountpoint, fs, store, { ...mountOptions, ttlSeconds: config.listTtlSeconds }, log, metrics)
    : await mountFuse(config.mountpoint, fuseOperations(fs, log, metrics), mountOptions, log)
  await writePidFile(config.mountpoint)
  log.info({
    mountpoint: config.mountpoint, backend: service.kind, fuseBinding: config.fuseBinding, cacheSize: formatSize(config.cacheSize),
    blockSize: formatSize(config.blockSize), readahead: formatSize(config.readahead), host: config.host,
  }, 'mounted')

  const report = (): void => { log.info({ metrics: metrics.snapshot(), cache: cache.stats, pendingCleanups: janitor.size }, 'metrics') }
  process.on('SIGUSR2', report)
  return new Promise<number>(resolve => {
    let stopping = false
    // fuse-native does not say when the kernel ends the session, so an outside
    // unmount would leave the daemon running with its volumes attached.
    void mount.ended?.then(() => { stop('unmounted') })
    const watch = setInterval(() => {
      void isMounted(config.mountpoint).then(mounted => { if (!mounted) stop('unmounted') }, () => undefined)
    }, mountCheckMs)
    watch.unref()
    const stop = (signal: string): void => {
      if (stopping) return
      stopping = true
      clearInterval(watch)
      log.info({ signal }, 'stopping')
      void (async () => {
        let code = 0
        for (const [step, work] of [
          ['unmount', async () => { if (signal !== 'unmounted') await mount.unmount() }],
          ['shutdown', async () => fs.shutdown()],
          ['registration', async () => { await registering?.idle(); glance?.close() }],
          // Bounded: what is still pending after the window is logged, one line each, and the next start's recovery does it.
          ['cleanups', async () => {
            const left = await janitor.drain(apiRetryWindowMs)
            if (left > 0) throw new Error(`${left} cleanup step(s) left for recovery at the next start`)
          }],
          ['backend', async () => service.close()],
          ['pidfile', async () => removePidFile(config.mountpoint)],
        ] as const) {
          try {
            await work()
          } catch (err) {
            code = 1
            log.error({ step, err: errorMessage(err) }, 'stop step failed')
          }
        }
        report()
        log.info({ code }, 'stopped')
        resolve(code)
      })()
    }
    process.on('SIGINT', () => stop('SIGINT'))
    process.on('SIGTERM', () => stop('SIGTERM'))
  })
}

/**
 * --glance-register: registers images one at a time, in the order they became
 * ready, off the file-system path (a slow Glance never holds up a close or a
 * rename). Each decision is logged by the registrar; the daemon waits for the
 * queue before it stops.
 */
class RegistrationQueue {
  private tail: Promise<void> = Promise.resolve()

  constructor(private readonly glance: GlanceRegistration, private readonly service: VolumeService, private readonly log: Logger) {}

  add(volumeId: string): void {
    this.tail = this.tail.then(async () => {
      const volume = await this.service.get(volumeId)
      // only complete images named by a Glance image id; a temporary name (rsync's) waits for its rename
      if (candidates([volume]).length === 0 || !volume.readOnly) return
      await this.glance.registrar.register(volume)
    }).catch((err: unknown) => {
      this.log.warn({ volumeId, err: errorMessage(err), glance: this.glance.endpoint }, 'could not register the image in Glance; run cinderfs register later')
    })
  }

  async idle(): Promise<void> {
    await this.tail
  }
}
