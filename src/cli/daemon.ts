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
import { isMounted, mountFuse, prepareMountpoint } from '../fuse/mount.js'
import type { Logger } from '../log/logger.js'
import { createMetrics } from '../metrics/metrics.js'
import { serveMetrics } from '../metrics/server.js'
import { Transfers } from '../metrics/transfers.js'
import { ImageStore } from '../store/image-store.js'
import { ObservedVolumeService } from './observed-service.js'
import { attachJournalFor, removePidFile, statusSocketFor, writePidFile } from './runtime.js'
import { serveStatus, type StatusReport } from './status.js'

/** Logged once the mount is usable (tests and operators wait for it). */
export const MOUNTED_MESSAGE = 'mounted'

/** How often the daemon looks whether someone else unmounted it (fusermount -u, umount). */
const mountCheckMs = 2000

/**
 * Builds the layers, recovers, mounts, and runs until SIGINT/SIGTERM or an
 * outside unmount. Resolves with the exit code. `onMounted` runs once the
 * mount is usable (readiness for systemd and the mount helper).
 */
export async function runMount(config: Config, log: Logger, onMounted: () => void = () => undefined): Promise<number> {
  // First: a mount point another daemon serves is refused before recovery,
  // which would take that daemon's attachments for a crash's leftovers.
  await prepareMountpoint(config.mountpoint, log)
  const metrics = createMetrics()
  const janitor = new Janitor({ logger: log })
  const apiRetryWindowMs = config.apiRetryWindowSeconds * 1000
  const backend = await openBackend(config, log, janitor, { spares: config.readOnly ? 0 : config.createAhead, metrics, attachJournal: attachJournalFor(config.mountpoint, config.host) })
  const service = new ObservedVolumeService(backend.service, metrics)
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
  const store = new ImageStore({ service, logger: log, listTtlMs: config.listTtlSeconds * 1000, owner: { uid: config.uid, gid: config.gid }, clock: systemClock })
  const lifecycle = new ImageLifecycle({
    service, store, attachments, cache, logger: log, imageOwner: backend.imageOwner, host: config.host, uid: config.uid, gid: config.gid,
    janitor, apiRetryWindowMs, clock: systemClock,
    ...(registering === undefined ? {} : { imageReady: (volumeId: string) => { registering.add(volumeId) } }),
  })
  const fs = new ImageFs({
    service, store, lifecycle, attachments, cache, logger: log, clock: systemClock, readOnly: config.readOnly,
    writeBuffer: config.writeBuffer, sealDelayMs: config.sealDelaySeconds * 1000, uid: config.uid, gid: config.gid,
    apiRetryWindowMs,
  })
  const transfers = new Transfers({ logger: log })
  metrics.watch({ cache: () => cache.stats, attachmentsHeld: () => service.held.size, uploadsInFlight: () => transfers.uploads() })
  const startedAt = new Date()
  const status = (): StatusReport => ({
    pid: process.pid, mountpoint: config.mountpoint, backend: service.kind, startedAt: startedAt.toISOString(),
    transfers: transfers.list(),
    attachments: [...service.held.values()].map(a => ({ volumeId: a.volumeId, attachmentId: a.attachmentId, mode: a.mode, transport: a.transport, seconds: (Date.now() - a.since.getTime()) / 1000 })),
    cache: { bytes: cache.stats.cachedBytes, budgetBytes: config.cacheSize, hits: cache.stats.hits, misses: cache.stats.misses, evictions: cache.stats.evictions },
  })
  let metricsServer: Awaited<ReturnType<typeof serveMetrics>> | undefined
  try {
    if (config.metricsAddr !== undefined) metricsServer = await serveMetrics(metrics.registry, config.metricsAddr, log)
    service.recovering = true
    if (!config.readOnly) await fs.recover()
    service.recovering = false
  } catch (err) {
    transfers.close()
    await metricsServer?.close()
    await service.close()
    throw err
  }
  const mountOptions = { allowOther: config.allowOther, readOnly: config.readOnly }
  const mount = config.fuseBinding === 'fuse3'
    ? await mountFuse3(config.mountpoint, fs, store, { ...mountOptions, ttlSeconds: config.listTtlSeconds }, log, metrics, transfers)
    : await mountFuse(config.mountpoint, fuseOperations(fs, log, metrics, transfers), mountOptions, log)
  await writePidFile(config.mountpoint)
  const statusServer = await serveStatus(statusSocketFor(config.mountpoint), status, log)
  log.info({
    mountpoint: config.mountpoint, backend: service.kind, fuseBinding: config.fuseBinding, cacheSize: formatSize(config.cacheSize),
    blockSize: formatSize(config.blockSize), readahead: formatSize(config.readahead), host: config.host,
  }, MOUNTED_MESSAGE)
  onMounted()
  // What `cinderfs status` shows, in the log (and a stray SIGUSR2 must not kill the daemon, Node's default).
  process.on('SIGUSR2', () => log.info({ ...status(), pendingCleanups: janitor.size }, 'status'))

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
          ['status', async () => statusServer.close()],
          ['metrics', async () => metricsServer?.close()],
        ] as const) {
          try {
            await work()
          } catch (err) {
            code = 1
            log.error({ step, err: errorMessage(err) }, 'stop step failed')
          }
        }
        transfers.close()
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
