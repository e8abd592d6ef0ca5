import type { AttachmentManager } from '../attachments/attachment-manager.js'
import type { VolumeService } from '../backends/volume-service.js'
import type { BlockCache } from '../cache/block-cache.js'
import { errorMessage, fail } from '../errors/errors.js'
import type { Logger } from '../log/logger.js'
import type { Volume } from '../model/volume.js'
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
  /** Recorded while an image is not sealed, so recovery on this host knows the volume is its own. */
  host: string
  uid: number
  gid: number
}

/** Log lines tests and operators wait for. */
export const lifecycleMessages = {
  begun: 'upload started',
  completed: 'image finalised',
  reopened: 'finalised image reopened for writing',
  sealed: 'image sealed read-only',
  deleted: 'image deleted',
  renamed: 'renamed',
  refusedNotImage: 'refused to delete a volume that is not an image',
} as const

/**
 * The one owner of an image's life in the backend: begin → complete ⇄ reopen
 * → seal, and mark-deleting → delete, and recovery of what a crash left.
 * Each step makes its backend call and then records the result in the
 * namespace (ImageStore) under the volume's current name, so nothing above
 * patches the namespace by hand. Metadata is written so that a crash at any
 * point leaves a volume recovery understands: `cinderfs_state` is set until
 * the bytes and their size are recorded, and `cinderfs_host` until sealed.
 */
export class ImageLifecycle {
  private readonly log: Logger

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
    const volume = await this.o.service.create({ name: volumeNameOf(name), sizeGiB: 1, metadata })
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
    await this.o.service.updateMetadata(volumeId, changes)
    this.record(volumeId, changes, { sizeGiB: result.sizeGiB })
    const entry = this.o.store.byVolume(volumeId)
    if (entry !== undefined) this.o.store.unpin(entry.name)
    this.log.info({ volumeId, name: entry?.name, bytes: result.size, md5: result.digests.md5 }, lifecycleMessages.completed)
  }

  /** A finalised, unsealed image taken back for writing (inside the seal delay). */
  async reopen(volumeId: string): Promise<void> {
    const changes = { [keys.state]: 'uploading', [keys.host]: this.o.host }
    await this.o.service.updateMetadata(volumeId, changes)
    this.o.cache.forget(volumeId)
    this.record(volumeId, changes)
    const entry = this.o.store.byVolume(volumeId)
    if (entry !== undefined) this.o.store.pin(entry.name)
    this.log.info({ volumeId, name: entry?.name }, lifecycleMessages.reopened)
  }

  /**
   * Marks a complete image read-only. The volume must be detached (Cinder
   * changes the flag only on an available volume); the host mark goes last,
   * so recovery seals an image whose daemon died before this.
   */
  async seal(volumeId: string): Promise<void> {
    await this.o.service.setReadOnly(volumeId, true)
    const changes = { [keys.host]: null }
    await this.o.service.updateMetadata(volumeId, changes)
    this.record(volumeId, changes, { readOnly: true })
    this.log.info({ volumeId, name: this.o.store.byVolume(volumeId)?.name }, lifecycleMessages.sealed)
  }

  /** An image unlinked while open: a crash before its delete leaves it for recovery, not as an image. */
  async markDeleting(volumeId: string): Promise<void> {
    await this.o.service.updateMetadata(volumeId, { [keys.state]: 'deleting', [keys.host]: this.o.host })
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

  /** Renames the image's volume; the generation goes first, so from then on this volume wins the name. */
  async rename(entry: ImageEntry, toName: string): Promise<void> {
    const volumeId = entry.volume.id
    const generation = Date.now()
    const changes = { [keys.renamedAt]: String(generation), [keys.glanceImageId]: isUuid(toName) ? toName : null }
    await this.o.service.updateMetadata(volumeId, changes)
    await this.o.service.rename(volumeId, volumeNameOf(toName))
    const current = this.o.store.byVolume(volumeId) ?? entry
    const pinned = this.o.store.isPinned(current.name)
    this.o.store.remove(current.name)
    const volume = withMetadata({ ...current.volume, name: volumeNameOf(toName) }, changes)
    this.o.store.set({ name: toName, volume, attrs: { ...current.attrs, generation } })
    if (pinned) this.o.store.pin(toName)
    this.log.info({ volumeId, from: entry.name, to: toName }, lifecycleMessages.renamed)
  }

  async setAttributes(volumeId: string, changes: ImageAttributeChanges): Promise<void> {
    const metadata = attributeMetadata(changes)
    if (Object.keys(metadata).length === 0) return
    await this.o.service.updateMetadata(volumeId, metadata)
    this.record(volumeId, metadata)
  }

  /**
   * At start: delete attachments this host left behind, seal images it had
   * finalised but not sealed, and delete volumes it was uploading or deleting
   * (a partial upload is never shown as an image; it is not resumed). One
   * leftover that cannot be cleaned now (Cinder refuses, another process
   * holds it) is logged and left for the next start: it must not keep every
   * other image from being served.
   */
  async recover(): Promise<void> {
    const attempt = async (what: string, ids: Record<string, string>, work: () => Promise<void>): Promise<void> => {
      this.log.warn(ids, `recovery: ${what}`)
      await work().catch((err: unknown) => { this.log.error({ ...ids, err: errorMessage(err) }, `recovery: could not ${what}; retried at the next start`) })
    }
    for (const attachment of await this.o.service.listOwnAttachments()) {
      await attempt('delete an attachment left by an earlier run', { volumeId: attachment.volumeId, attachmentId: attachment.id }, async () => this.o.service.detach(attachment))
    }
    for (const image of await this.o.store.scan()) {
      if (image.attrs.host !== this.o.host) continue
      const ids = { volumeId: image.volume.id, name: image.name }
      if (image.attrs.state === 'final') {
        // Complete (a crash inside the seal delay, or before the last release): seal it.
        await attempt('seal a finalised image', ids, async () => {
          if (!image.volume.readOnly) await this.o.service.setReadOnly(image.volume.id, true)
          await this.o.service.updateMetadata(image.volume.id, { [keys.host]: null })
        })
      } else {
        await attempt(`delete a volume left ${image.attrs.state} by an earlier run`, ids, async () => this.o.service.delete(image.volume.id))
      }
    }
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
