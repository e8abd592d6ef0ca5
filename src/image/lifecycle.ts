import type { AttachmentManager } from '../attachments/attachment-manager.js'
import type { VolumeService } from '../backends/volume-service.js'
import type { BlockCache } from '../cache/block-cache.js'
import { errorCode, fail } from '../errors/errors.js'
import type { Janitor } from '../janitor/janitor.js'
import type { Logger } from '../log/logger.js'
import type { Clock } from '../model/clock.js'
import type { Volume } from '../model/volume.js'
import { withinRetryWindow } from '../outage/retry-window.js'
import type { ImageEntry, ImageStore } from '../store/image-store.js'
import { attributeMetadata, isImageVolume, keys } from '../store/metadata.js'
import { isUuid, volumeNameOf } from '../store/names.js'
import type { UploadResult } from '../upload/upload.js'

/** POSIX attributes set on an image (chmod, chown, utimens) that its metadata records. */
export interface ImageAttributeChanges {
  mtimeNs?: bigint
  mode?: number
  uid?: number
  gid?: number
}

export interface ImageLifecycleOptions {
  service: VolumeService
  store: ImageStore
  attachments: AttachmentManager
  cache: BlockCache
  logger: Logger
  imageOwner: string
  /** Recorded at begin, so recovery on this host knows an unsealed volume is its own; it stays as who wrote the image. */
  host: string
  uid: number
  gid: number
  /** Cleanups that fail (a delete, a seal) are retried there while the daemon runs. */
  janitor: Janitor
  /** How long the calls an upload needs (create, reopen, final metadata) ride out an outage. */
  apiRetryWindowMs: number
  /** Told when an image is sealed or renamed, e.g. to register it in Glance; never awaited. */
  imageReady?: (volumeId: string) => void
  /** Times the writes behind (see ImageLifecycle). */
  clock: Clock
}

/**
 * How long a deferred write waits for more changes: rsync's utimens, chmod
 * and rename of one file come within a few ms of each other, and go in one write.
 */
export const WRITE_BEHIND_MS = 100

/** Log lines tests and operators wait for. */
export const lifecycleMessages = {
  begun: 'image volume created for an upload',
  completed: 'image finalised',
  reopened: 'finalised image reopened for writing',
  sealed: 'image sealed read-only',
  deleted: 'image deleted',
  renamed: 'renamed',
  /** A rename or attribute change of an unsealed image, written behind: the backend has it now. */
  writtenBehind: 'name and attributes written',
  refusedNotImage: 'refused to delete a volume that is not an image',
} as const

/**
 * The one owner of an image's life in the backend: begin → complete ⇄ reopen
 * → seal, and mark-deleting → delete, and recovery of what a crash left.
 * Each step makes its backend call and then records the result in the
 * namespace (ImageStore) under the volume's current name, so nothing above
 * patches the namespace by hand. Metadata is written so that a crash at any
 * point leaves a volume recovery understands: `cinderfs_state` is set until
 * the bytes and their size are recorded, `cinderfs_host` names the writer,
 * and the read-only flag is the seal.
 *
 * While an image is this host's (from begin until sealed) nobody else writes
 * its volume, so each write sends the entry's whole name and metadata in one
 * request, and a rename or attribute change of a finalised image is written
 * behind (`deferred`): the call returns once the namespace has it, and the
 * write follows WRITE_BEHIND_MS later with every change made meanwhile. A crash
 * in between leaves a complete image under its former name and times, which
 * recovery seals; never lost bytes.
 */
export class ImageLifecycle {
  private readonly log: Logger
  /** The tail of each volume's writes: they reach the backend in the order they were made. */
  private readonly writes = new Map<string, Promise<void>>()
  /** Volumes with a deferred write queued and not yet begun (a later change rides along with it). */
  private readonly queued = new Set<string>()
  /** Ends the wait of a queued deferred write, by volume: whoever needs it written does not wait WRITE_BEHIND_MS. */
  private readonly hurry = new Map<string, () => void>()

  constructor(private readonly o: ImageLifecycleOptions) {
    this.log = o.logger.child({ component: 'lifecycle' })
  }

  /** A new, empty image volume marked as uploading, shown under `name` at once. */
  async begin(name: string, mode: number): Promise<ImageEntry> {
    const metadata: Record<string, string> = {
      [keys.imageOwner]: this.o.imageOwner,
      // Until finalised an image is 0 bytes, never the whole volume.
      [keys.imageSize]: '0',
      [keys.state]: 'uploading',
      [keys.host]: this.o.host,
      ...attributeMetadata({ mode, uid: this.o.uid, gid: this.o.gid }),
    }
    if (isUuid(name)) metadata[keys.glanceImageId] = name
    // Provisional: complete() writes name and metadata whole; a crash before leaves a volume of this host's recovery deletes.
    const volume = await this.withinWindow(async () => this.o.service.create({ name: volumeNameOf(name), sizeGiB: 1, metadata, provisional: true }))
    const entry = { name, volume, attrs: this.o.store.decode(volume) }
    this.o.store.set(entry)
    this.o.store.pin(name)
    this.log.info({ volumeId: volume.id, name }, lifecycleMessages.begun)
    return entry
  }

  /**
   * Records what an upload produced, in one metadata request whose last effect
   * is clearing the uploading mark: before it, a crash leaves a volume recovery deletes.
   */
  async complete(volumeId: string, result: UploadResult, attrs: ImageAttributeChanges): Promise<void> {
    const changes: Record<string, string | null> = {
      // mode and owner were recorded at begin; only what changed since, and the mtime.
      ...attributeMetadata({ ...attrs, mtimeNs: attrs.mtimeNs ?? result.modifiedNs }),
      [keys.imageSize]: String(result.size),
      [keys.md5]: result.digests.md5,
      [keys.sha512]: result.digests.sha512,
      [keys.state]: null,
    }
    await this.withinWindow(async () => this.inOrder(volumeId, async () => this.write(volumeId, changes, { sizeGiB: result.sizeGiB })))
    const entry = this.o.store.byVolume(volumeId)
    if (entry !== undefined) this.o.store.unpin(entry.name)
    this.log.info({ volumeId, name: entry?.name, bytes: result.size, md5: result.digests.md5 }, lifecycleMessages.completed)
  }

  /** A finalised, unsealed image taken back for writing (inside the seal delay). */
  async reopen(volumeId: string): Promise<void> {
    const changes = { [keys.state]: 'uploading', [keys.host]: this.o.host }
    await this.withinWindow(async () => this.inOrder(volumeId, async () => this.write(volumeId, changes)))
    this.o.cache.forget(volumeId)
    const entry = this.o.store.byVolume(volumeId)
    if (entry !== undefined) this.o.store.pin(entry.name)
    this.log.info({ volumeId, name: entry?.name }, lifecycleMessages.reopened)
  }

  /**
   * Marks a complete image read-only. The volume must be detached (Cinder
   * changes the flag only on an available volume). The flag is the whole
   * seal: recovery seals a finalised image of this host's without it, so no
   * metadata write follows (one request less per image than clearing the
   * host mark, which cost Cinder as much as the flag).
   */
  async seal(volumeId: string): Promise<void> {
    this.hurry.get(volumeId)?.()
    await this.inOrder(volumeId, async () => {
      await this.o.service.setReadOnly(volumeId, true)
      this.record(volumeId, {}, { readOnly: true })
    })
    this.log.info({ volumeId, name: this.o.store.byVolume(volumeId)?.name }, lifecycleMessages.sealed)
    this.o.imageReady?.(volumeId)
  }

  /** seal, or when it fails (an outage, the volume still attached) the janitor's to retry. Never throws. */
  async sealEventually(volumeId: string): Promise<void> {
    await this.o.janitor.attempt({ volumeId, call: 'seal', run: async () => this.seal(volumeId) })
  }

  /** delete, or when it fails the janitor's to retry (a volume still `creating` goes once Cinder allows it). Never throws. */
  async discard(volumeId: string): Promise<void> {
    await this.o.janitor.attempt({
      volumeId,
      call: 'delete volume',
      run: async () => this.delete(volumeId).catch((err: unknown) => { if (errorCode(err) !== 'ENOENT') throw err }),
    })
  }

  /** An image unlinked while open: a crash before its delete leaves it for recovery, not as an image. */
  async markDeleting(volumeId: string): Promise<void> {
    await this.inOrder(volumeId, async () => this.o.service.updateMetadata(volumeId, { [keys.state]: 'deleting', [keys.host]: this.o.host }))
  }

  /**
   * Deletes an image's volume, after checking it really is one; waits for
   * readers still holding its attachment, then detaches.
   */
  async delete(volumeId: string): Promise<void> {
    const volume = await this.o.service.get(volumeId)
    if (!isImageVolume(volume)) {
      this.log.error({ volumeId, name: volume.name }, lifecycleMessages.refusedNotImage)
      fail('EPERM', `volume ${volumeId} (${volume.name}) is not an image volume; not deleting it`, { volumeId })
    }
    this.o.cache.forget(volumeId)
    await this.o.attachments.detachWhenIdle(volumeId)
    await this.o.service.delete(volumeId)
    const entry = this.o.store.byVolume(volumeId)
    if (entry !== undefined) this.o.store.remove(entry.name)
    this.log.info({ volumeId, name: entry?.name ?? volume.name }, lifecycleMessages.deleted)
  }

  /**
   * Renames the image's volume; the generation goes first, so from then on
   * this volume wins the name. `deferred` (an image of this host's, not
   * sealed): written behind, see the class comment.
   */
  async rename(entry: ImageEntry, toName: string, deferred = false): Promise<void> {
    const volumeId = entry.volume.id
    const generation = Date.now()
    const changes = { [keys.renamedAt]: String(generation), [keys.glanceImageId]: isUuid(toName) ? toName : null }
    const recordRename = (): void => {
      const current = this.o.store.byVolume(volumeId) ?? entry
      const pinned = this.o.store.isPinned(current.name)
      this.o.store.remove(current.name)
      const volume = withMetadata({ ...current.volume, name: volumeNameOf(toName) }, changes)
      this.o.store.set({ name: toName, volume, attrs: { ...current.attrs, generation } })
      if (pinned) this.o.store.pin(toName)
    }
    if (deferred) recordRename()
    else {
      // recorded inside the volume's turn, so a write queued after it sees the new name
      await this.inOrder(volumeId, async () => {
        await this.o.service.updateMetadata(volumeId, changes)
        await this.o.service.rename(volumeId, volumeNameOf(toName))
        recordRename()
      })
    }
    this.log.info({ volumeId, from: entry.name, to: toName, deferred }, lifecycleMessages.renamed)
    if (deferred) this.writeBehind(volumeId)
    else this.o.imageReady?.(volumeId)
  }

  /** `deferred`: as for rename. */
  async setAttributes(volumeId: string, changes: ImageAttributeChanges, deferred = false): Promise<void> {
    const metadata = attributeMetadata(changes)
    if (Object.keys(metadata).length === 0) return
    if (deferred) {
      this.record(volumeId, metadata)
      this.writeBehind(volumeId)
      return
    }
    await this.inOrder(volumeId, async () => {
      await this.o.service.updateMetadata(volumeId, metadata)
      this.record(volumeId, metadata)
    })
  }

  /** Resolves once the writes of this volume made so far have ended (either way); a deferred one goes now. */
  async written(volumeId: string): Promise<void> {
    this.hurry.get(volumeId)?.()
    await this.writes.get(volumeId)
  }

  /** At stop: every deferred write goes now. */
  async allWritten(): Promise<void> {
    for (const go of this.hurry.values()) go()
    await Promise.all(this.writes.values())
  }

  /**
   * Queues one write of the volume's entry as it will be then (name and whole
   * metadata). The name stays pinned until it is written, so a listing of the
   * backend meanwhile cannot bring the old name back. An upload's entry is
   * left to complete(), which writes it whole anyway. A write that fails is
   * the janitor's to retry.
   */
  private writeBehind(volumeId: string): void {
    const entry = this.o.store.byVolume(volumeId)
    if (entry === undefined || entry.attrs.state === 'uploading') return
    this.o.store.pin(entry.name)
    if (this.queued.has(volumeId)) return
    this.queued.add(volumeId)
    void this.inOrder(volumeId, async () => {
      await new Promise<void>(resolve => {
        const cancel = this.o.clock.schedule(WRITE_BEHIND_MS, resolve)
        this.hurry.set(volumeId, () => { cancel(); resolve() })
      })
      this.hurry.delete(volumeId)
      this.queued.delete(volumeId)
      await this.o.janitor.attempt({
        volumeId,
        call: 'write name and attributes',
        run: async () => {
          if (this.o.store.byVolume(volumeId) === undefined) return // deleted meanwhile
          await this.write(volumeId, {})
          const now = this.o.store.byVolume(volumeId)
          this.log.info({ volumeId, name: now?.name }, lifecycleMessages.writtenBehind)
          if (now !== undefined && now.attrs.state !== 'uploading' && !this.queued.has(volumeId)) this.o.store.unpin(now.name)
          this.o.imageReady?.(volumeId)
        },
      })
    })
  }

  /**
   * Runs `work` after the volume's earlier writes, so they reach the backend
   * in the order they were made: every write of a volume's name or metadata
   * goes through here (a seal's whole-entry write must not overtake a rename).
   */
  private async inOrder(volumeId: string, work: () => Promise<void>): Promise<void> {
    const run = (this.writes.get(volumeId) ?? Promise.resolve()).then(work)
    const tail = run.then(() => undefined, () => undefined)
    this.writes.set(volumeId, tail)
    void tail.then(() => { if (this.writes.get(volumeId) === tail) this.writes.delete(volumeId) })
    await run
  }

  /**
   * Writes the entry's name and whole metadata with `changes` applied in one
   * request (the volume is this host's: nobody else changes it), then records
   * them. A volume no longer in the namespace (another host's image took its
   * name, or it was unlinked) gets `changes` merged, its name left alone.
   */
  private async write(volumeId: string, changes: Record<string, string | null>, volumeChanges: Partial<Volume> = {}): Promise<void> {
    const entry = this.o.store.byVolume(volumeId)
    if (entry === undefined) {
      await this.o.service.updateMetadata(volumeId, changes)
      return
    }
    const metadata = withMetadata(entry.volume, changes).metadata
    await this.o.service.replace(volumeId, volumeNameOf(entry.name), metadata)
    this.record(volumeId, changes, volumeChanges)
  }

  /**
   * At start: delete attachments this host left behind, seal images it had
   * finalised but not sealed, and delete volumes it was uploading or deleting
   * (a partial upload is never shown as an image; it is not resumed). One
   * leftover that cannot be cleaned now (Cinder refuses, another process
   * holds it) is the janitor's to retry while the daemon runs: it must not
   * keep every other image from being served.
   */
  async recover(): Promise<void> {
    const attempt = async (what: string, ids: { volumeId: string, attachmentId?: string, name?: string }, work: () => Promise<void>): Promise<void> => {
      this.log.warn(ids, `recovery: ${what}`)
      await this.o.janitor.attempt({ volumeId: ids.volumeId, call: `recovery: ${what}`, ...(ids.attachmentId === undefined ? {} : { attachmentId: ids.attachmentId }), run: work })
    }
    for (const attachment of await this.o.service.listOwnAttachments()) {
      await attempt('delete an attachment left by an earlier run', { volumeId: attachment.volumeId, attachmentId: attachment.id }, async () => this.o.service.detach(attachment))
    }
    for (const image of await this.o.store.scan()) {
      if (image.attrs.host !== this.o.host) continue
      const ids = { volumeId: image.volume.id, name: image.name }
      if (image.attrs.state === 'final') {
        if (image.volume.readOnly) continue // sealed
        // Complete (a crash inside the seal delay, or before the last release): seal it.
        await attempt('seal a finalised image', ids, async () => this.o.service.setReadOnly(image.volume.id, true))
      } else {
        await attempt(`delete a volume left ${image.attrs.state} by an earlier run`, ids, async () => this.o.service.delete(image.volume.id))
      }
    }
  }

  /** A call an upload cannot do without: it rides out a short outage (--api-retry-window). */
  private async withinWindow<T>(call: () => Promise<T>): Promise<T> {
    return withinRetryWindow(this.o.apiRetryWindowMs, call)
  }

  /** Applies metadata we wrote to the volume's entry, and decodes it again. */
  private record(volumeId: string, changes: Record<string, string | null>, volumeChanges: Partial<Volume> = {}): void {
    this.o.store.updateVolume(volumeId, entry => {
      const volume = withMetadata({ ...entry.volume, ...volumeChanges }, changes)
      return { ...entry, volume, attrs: { ...this.o.store.decode(volume), generation: entry.attrs.generation } }
    })
  }
}

function withMetadata(volume: Volume, changes: Record<string, string | null>): Volume {
  const metadata = { ...volume.metadata }
  for (const [key, value] of Object.entries(changes)) {
    if (value === null) delete metadata[key]
    else metadata[key] = value
  }
  return { ...volume, metadata }
}
