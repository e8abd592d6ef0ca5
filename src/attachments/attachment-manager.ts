import type { Attachment, AttachMode } from '../model/volume.js'
import type { VolumeService } from '../backends/volume-service.js'
import type { BlockDevice } from '../connectors/connector.js'
import type { ConnectorRegistry } from '../connectors/registry.js'
import { errorMessage, fail } from '../errors/errors.js'
import type { Logger } from '../log/logger.js'

/** Log lines tests and operators wait for. */
export const attachmentMessages = {
  attached: 'attached',
  detached: 'detached',
} as const

/** A claim on an attached volume; the volume stays attached until every lease is released. */
export interface Lease {
  readonly device: BlockDevice
  readonly attachment: Attachment
  release(): void
}

interface Entry {
  volumeId: string
  mode: AttachMode
  refs: number
  ready: Promise<{ attachment: Attachment, device: BlockDevice }>
  idleTimer?: NodeJS.Timeout
  /** Woken when the last lease goes (a seal or delete waiting to detach); they detach, not the idle timer. */
  idleWaiters: Array<() => void>
}

export interface AttachmentManagerOptions {
  service: VolumeService
  connectors: ConnectorRegistry
  idleDetachMs: number
  logger: Logger
}

/**
 * One attachment per volume, shared by every open handle: attached on first
 * use, kept while leased, detached after it has been idle for a while (so a
 * reader that reopens the file soon pays no attach again), all detached at
 * unmount.
 */
export class AttachmentManager {
  private readonly entries = new Map<string, Entry>()
  /** Detaches in flight: a new attach of the same volume waits for them (a normal Cinder volume takes one attachment). */
  private readonly detaching = new Map<string, Promise<void>>()
  private readonly log: Logger

  constructor(private readonly options: AttachmentManagerOptions) {
    this.log = options.logger.child({ component: 'attachments' })
  }

  async acquire(volumeId: string, mode: AttachMode): Promise<Lease> {
    while (!this.entries.has(volumeId) && this.detaching.has(volumeId)) await this.detaching.get(volumeId)
    let entry = this.entries.get(volumeId)
    if (entry !== undefined && mode === 'rw' && entry.mode === 'ro') {
      fail('EBUSY', `volume ${volumeId} is attached read-only here; it cannot be written`, { volumeId })
    }
    if (entry === undefined) {
      entry = { volumeId, mode, refs: 0, ready: this.attach(volumeId, mode), idleWaiters: [] }
      this.entries.set(volumeId, entry)
    }
    const current = entry
    current.refs++
    if (current.idleTimer !== undefined) {
      clearTimeout(current.idleTimer)
      delete current.idleTimer
    }
    let ready: { attachment: Attachment, device: BlockDevice }
    try {
      ready = await current.ready
    } catch (err) {
      current.refs--
      if (this.entries.get(volumeId) === current) this.entries.delete(volumeId)
      throw err
    }
    let released = false
    return {
      device: ready.device,
      attachment: ready.attachment,
      release: () => {
        if (released) return
        released = true
        this.release(current)
      },
    }
  }

  isAttached(volumeId: string): boolean {
    return this.entries.has(volumeId)
  }

  /** Detaches once no lease on the volume is left (now, if none is); a seal or a delete waits here for readers. */
  async detachWhenIdle(volumeId: string): Promise<void> {
    for (;;) {
      const entry = this.entries.get(volumeId)
      if (entry === undefined) {
        await this.detaching.get(volumeId)
        return
      }
      if (entry.refs === 0) {
        await this.teardown(entry)
        return
      }
      await new Promise<void>(resolve => entry.idleWaiters.push(resolve))
    }
  }

  /** Detaches now; the caller guarantees no lease is in use (the grow fallback, recovery). */
  async detach(volumeId: string): Promise<void> {
    const entry = this.entries.get(volumeId)
    if (entry === undefined) return
    if (entry.refs > 0) fail('EBUSY', `volume ${volumeId} is still in use here`, { volumeId, refs: entry.refs })
    await this.teardown(entry)
  }

  async detachAll(): Promise<void> {
    const all = [...this.entries.values()]
    await Promise.all(all.map(async entry => this.teardown(entry).catch((err: unknown) => {
      this.log.error({ volumeId: entry.volumeId, err: errorMessage(err) }, 'detach at unmount failed')
    })))
  }

  private async attach(volumeId: string, mode: AttachMode): Promise<{ attachment: Attachment, device: BlockDevice }> {
    const started = Date.now()
    const attachment = await this.options.service.attach(volumeId, mode)
    if (mode === 'rw' && attachment.mode !== 'rw') {
      await this.options.service.detach(attachment)
      fail('EROFS', `volume ${volumeId} is read-only in the backend`, { volumeId })
    }
    try {
      const device = await this.options.connectors.connect(attachment.connectionInfo, attachment.mode)
      this.log.info({ volumeId, attachmentId: attachment.id, mode: attachment.mode, device: device.path, ms: Date.now() - started }, attachmentMessages.attached)
      return { attachment, device }
    } catch (err) {
      // Never leave an attachment behind for a device we could not open.
      await this.options.service.detach(attachment).catch((detachErr: unknown) => {
        this.log.error({ volumeId, attachmentId: attachment.id, err: errorMessage(detachErr) }, 'detach after failed connect failed')
      })
      throw err
    }
  }

  private release(entry: Entry): void {
    entry.refs--
    if (entry.refs > 0) return
    if (entry.idleWaiters.length > 0) {
      const waiters = entry.idleWaiters
      entry.idleWaiters = []
      for (const wake of waiters) wake()
      return
    }
    entry.idleTimer = setTimeout(() => {
      if (entry.refs === 0 && this.entries.get(entry.volumeId) === entry) {
        void this.teardown(entry).catch((err: unknown) => {
          this.log.error({ volumeId: entry.volumeId, err: errorMessage(err) }, 'idle detach failed')
        })
      }
    }, this.options.idleDetachMs)
    entry.idleTimer.unref()
  }

  private async teardown(entry: Entry): Promise<void> {
    if (this.entries.get(entry.volumeId) === entry) this.entries.delete(entry.volumeId)
    if (entry.idleTimer !== undefined) clearTimeout(entry.idleTimer)
    const done = (async () => {
      const { attachment, device } = await entry.ready
      await device.close()
      await this.options.service.detach(attachment)
      this.log.info({ volumeId: entry.volumeId, attachmentId: attachment.id }, attachmentMessages.detached)
    })()
    const settled = done.then(() => undefined, () => undefined)
    this.detaching.set(entry.volumeId, settled)
    try {
      await done
    } finally {
      if (this.detaching.get(entry.volumeId) === settled) this.detaching.delete(entry.volumeId)
    }
  }
}
