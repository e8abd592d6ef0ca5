import { constants } from 'node:fs'
import type { AttachmentManager, Lease } from '../attachments/attachment-manager.js'
import { GiB } from '../model/volume.js'
import type { VolumeService } from '../backends/volume-service.js'
import type { BlockCache } from '../cache/block-cache.js'
import { errorMessage, fail } from '../errors/errors.js'
import type { Logger } from '../log/logger.js'
import type { ImageEntry, ImageStore } from '../store/image-store.js'
import { attributeMetadata, isImageVolume, keys } from '../store/metadata.js'
import { checkFileName, fileNameFromPath, isFuseHiddenName, isUuid, volumeNameOf } from '../store/names.js'
import { AlignedBlockPool } from '../memory/aligned-blocks.js'
import { Upload, uploadWindowBytes, type PendingAttributes } from '../upload/upload.js'
import { HandleTable, type Handle } from './handles.js'
import { xattrNames, type FileStat, type FsStat } from './types.js'

export interface ImageFsOptions {
  service: VolumeService
  store: ImageStore
  attachments: AttachmentManager
  cache: BlockCache
  logger: Logger
  readOnly: boolean
  writeBuffer: number
  imageOwner: string
  host: string
  uid: number
  gid: number
  /** Told when an image is sealed or renamed, e.g. to register it in Glance; never awaited. */
  imageReady?: (volumeId: string) => void
}

/** The I/O size we advertise (st_blksize); FUSE moves at most 128 KiB per request with libfuse2. */
const ioSize = 128 * 1024
const unchangedId = 0xffffffff
/** O_ACCMODE, which Node does not export. */
const accessModeMask = 3

/**
 * The file-system operations, in terms of images: every method takes paths
 * or handles and returns values or throws CinderfsError. The FUSE adapter
 * only translates. Finalised images are immutable (EROFS); a new file is an
 * upload until its writer closes it.
 */
export class ImageFs {
  private readonly handles = new HandleTable()
  private readonly uploads = new Map<string, Upload>()
  /** Staging memory of every upload, reused from one to the next. */
  private readonly uploadChunks = new AlignedBlockPool(uploadWindowBytes, { shared: true })
  /** libfuse2's `.fuse_hidden…` names for open files that were unlinked or replaced. */
  private readonly hidden = new Map<string, ImageEntry>()
  /** The root has no volume: its attributes (rsync -a sets them) live in memory for the mount's life. */
  private readonly root: { mtimeMs: number, mode: number, uid: number, gid: number }
  private readonly log: Logger

  constructor(private readonly o: ImageFsOptions) {
    this.log = o.logger.child({ component: 'fs' })
    this.root = { mtimeMs: Date.now(), mode: 0o755, uid: o.uid, gid: o.gid }
  }

  async getattr(path: string): Promise<FileStat> {
    if (path === '/') {
      const r = this.root
      return { mode: constants.S_IFDIR | r.mode, uid: r.uid, gid: r.gid, size: 4096, nlink: 2, blocks: 8, blksize: ioSize, mtimeMs: r.mtimeMs }
    }
    return this.statOf(await this.resolve(path))
  }

  async readdir(path: string): Promise<string[]> {
    if (path !== '/') {
      await this.resolve(path)
      fail('ENOTDIR', `${path} is not a directory`)
    }
    return ['.', '..', ...(await this.o.store.list()).map(entry => entry.name)]
  }

  async create(path: string, mode: number): Promise<number> {
    this.checkWritableMount('create', path)
    const name = fileNameFromPath(path)
    checkFileName(name)
    if (isFuseHiddenName(name)) fail('EPERM', `${name}: names starting with .fuse_hidden are reserved`)
    if (await this.o.store.lookup(name) !== undefined) fail('EEXIST', `${name} exists`)
    const upload = await this.startUpload(name, mode & 0o7777)
    const handle = this.handles.open(this.entryOf(upload), true, upload)
    upload.writeHandles++
    return handle.id
  }

  async open(path: string, flags: number): Promise<number> {
    const entry = await this.resolve(path)
    const writable = (flags & accessModeMask) !== constants.O_RDONLY
    const upload = this.uploads.get(entry.volume.id)
    if (writable) {
      this.checkWritableMount('open for writing', path)
      if (upload === undefined || !upload.isOpen) {
        this.log.info({ path, volumeId: entry.volume.id }, 'refused: finalised images are read-only')
        fail('EROFS', `${entry.name} is a finalised image and cannot be written`, { volumeId: entry.volume.id })
      }
      if ((flags & constants.O_TRUNC) !== 0) await upload.truncate(0)
      upload.writeHandles++
    }
    return this.handles.open(entry, writable, upload).id
  }

  /** A number when served from the cache in this tick, else a promise. */
  read(fh: number, target: Buffer, length: number, position: number): number | Promise<number> {
    const handle = this.handles.get(fh)
    if (handle.upload !== undefined && handle.upload.isOpen) return handle.upload.read(target, length, position)
    if (handle.source !== undefined) return this.o.cache.read(handle.source, target, length, position, handle.stream)
    return this.attachForRead(handle).then(() => {
      if (handle.source === undefined) fail('EIO', 'attach gave no device')
      return this.o.cache.read(handle.source, target, length, position, handle.stream)
    })
  }

  async write(fh: number, data: Buffer, length: number, position: number): Promise<number> {
    const handle = this.handles.get(fh)
    const upload = handle.upload
    if (!handle.writable || upload === undefined) fail('EBADF', `handle ${fh} is not open for writing`)
    if (!upload.isOpen) await this.reopen(upload)
    handle.dirty = true
    return upload.write(data, length, position)
  }

  /**
   * close(2) of a writer lands here, and errors here reach the writer (those
   * of release never do). So the upload is finalised here when this handle
   * wrote and is the last that can write. A flush from a handle that wrote
   * nothing finalises nothing: dd and shells open the file, dup2 it and close
   * the original before the first write, and finalising there would cost a
   * detach and an attach (release finalises a file nobody wrote). If a dirty
   * flush was only of a duplicate, a later write reopens the image.
   */
  async flush(fh: number): Promise<void> {
    const handle = this.handles.get(fh)
    const upload = handle.upload
    if (!handle.writable || upload === undefined || upload.discarded) return
    try {
      upload.throwIfFailed()
      if (!handle.dirty || upload.writeHandles > 1 || !upload.isOpen) return
      handle.dirty = false
      await this.finalise(upload)
    } catch (err) {
      // The upload is lost: clean up before the writer's close returns, so nothing is left when cp exits.
      await this.dropUpload(upload, errorMessage(err))
      throw err
    }
  }

  async fsync(fh: number): Promise<void> {
    const handle = this.handles.get(fh)
    if (handle.writable && handle.upload !== undefined && handle.upload.isOpen) await handle.upload.fsync()
  }

  async release(fh: number): Promise<void> {
    const handle = this.handles.close(fh)
    if (handle === undefined) return
    handle.lease?.release()
    const upload = handle.upload
    if (!handle.writable || upload === undefined) return
    upload.writeHandles--
    if (upload.writeHandles > 0) return
    try {
      await this.closeUpload(upload)
    } finally {
      // Only now: until the upload is done, metadata changes and renames wait for it (see settledUpload).
      this.uploads.delete(upload.volumeId)
    }
  }

  /** The last writer is gone: finalise (or drop) what is still open, then mark it read-only. */
  private async closeUpload(upload: Upload): Promise<void> {
    if (upload.isOpen) {
      if (upload.discarded) {
        await this.dropUpload(upload, 'unlinked while open')
        return
      }
      try {
        upload.throwIfFailed()
        await this.finalise(upload)
      } catch (err) {
        await this.dropUpload(upload, `finalisation failed: ${errorMessage(err)}`)
        return
      }
    }
    // Complete already; the read-only flag only guards it from other writers.
    await upload.seal().then(() => { this.o.imageReady?.(upload.volumeId) }, (err: unknown) => {
      this.log.warn({ volumeId: upload.volumeId, err: errorMessage(err) }, 'marking the image read-only failed')
    })
  }

  async truncate(path: string, size: number): Promise<void> {
    this.checkWritableMount('truncate', path)
    const entry = await this.resolve(path)
    await this.openUploadOf(entry).truncate(size)
  }

  async ftruncate(fh: number, size: number): Promise<void> {
    const handle = this.handles.get(fh)
    if (!handle.writable || handle.upload === undefined) fail('EBADF', `handle ${fh} is not open for writing`)
    handle.dirty = true
    await handle.upload.truncate(size)
  }

  async utimens(path: string, mtimeMs: number): Promise<void> {
    await this.setAttributes(path, { mtimeNs: BigInt(Math.round(mtimeMs)) * 1_000_000n })
  }

  async chmod(path: string, mode: number): Promise<void> {
    await this.setAttributes(path, { mode: mode & 0o7777 })
  }

  async chown(path: string, uid: number, gid: number): Promise<void> {
    const changes: PendingAttributes = {}
    if (uid !== unchangedId && uid !== -1) changes.uid = uid
    if (gid !== unchangedId && gid !== -1) changes.gid = gid
    await this.setAttributes(path, changes)
  }

  async unlink(path: string): Promise<void> {
    this.checkWritableMount('unlink', path)
    const name = fileNameFromPath(path)
    const hidden = this.hidden.get(name)
    if (hidden !== undefined) {
      this.hidden.delete(name)
      await this.destroy(hidden)
      return
    }
    const entry = await this.resolve(path)
    this.o.store.remove(entry.name)
    await this.destroy(entry)
  }

  async rename(from: string, to: string): Promise<void> {
    this.checkWritableMount('rename', from)
    const source = await this.resolve(from)
    const toName = fileNameFromPath(to)
    if (isFuseHiddenName(toName)) {
      await this.hide(source, toName)
      return
    }
    checkFileName(toName)
    if (toName === source.name) return
    const replaced = await this.o.store.lookup(toName)
    const volumeId = source.volume.id
    const upload = await this.settledUpload(source)
    const generation = Date.now()
    // Generation first: from the moment the name changes this volume wins over the one it replaces.
    await this.o.service.updateMetadata(volumeId, {
      [keys.renamedAt]: String(generation),
      [keys.glanceImageId]: isUuid(toName) ? toName : null,
    })
    await this.o.service.rename(volumeId, volumeNameOf(toName))
    const renamed: ImageEntry = {
      name: toName,
      volume: { ...source.volume, name: volumeNameOf(toName) },
      attrs: { ...source.attrs, generation },
    }
    this.o.store.remove(source.name)
    this.o.store.set(renamed)
    if (upload !== undefined) {
      upload.name = toName
      if (upload.isOpen) this.o.store.pin(toName)
    }
    this.log.info({ volumeId, from: source.name, to: toName, replaces: replaced?.volume.id }, 'renamed')
    if (upload === undefined || !upload.isOpen) this.o.imageReady?.(volumeId)
    // Only now that the new image stands under the name is the old one deleted.
    if (replaced !== undefined && replaced.volume.id !== volumeId) {
      await this.destroy(replaced).catch((err: unknown) => {
        this.log.error({ volumeId: replaced.volume.id, err: errorMessage(err) }, 'replaced image could not be deleted; it stays hidden behind the new one')
      })
    }
  }

  async statfs(): Promise<FsStat> {
    const capacity = await this.o.service.capacity()
    const frsize = 1024 * 1024
    const total = capacity?.totalBytes ?? 1024 * GiB
    const free = capacity?.freeBytes ?? total
    const images = (await this.o.store.list()).length
    return {
      bsize: ioSize, frsize,
      blocks: Math.floor(total / frsize), bfree: Math.floor(free / frsize), bavail: Math.floor(free / frsize),
      files: images + 1_000_000, ffree: 1_000_000, namemax: 255 - 'image-'.length,
    }
  }

  async getxattr(path: string, name: string): Promise<Buffer> {
    const value = path === '/' ? undefined : this.xattrs(await this.resolve(path))[name]
    if (value === undefined) fail('ENODATA', `${path} has no attribute ${name}`)
    return Buffer.from(value)
  }

  async listxattr(path: string): Promise<string[]> {
    return path === '/' ? [] : Object.keys(this.xattrs(await this.resolve(path)))
  }

  async setxattr(path: string, name: string, value: Buffer): Promise<void> {
    if (name !== xattrNames.sizeHint) fail('ENOTSUP', `${name}: cinderfs stores no extended attributes`)
    const bytes = Number(value.toString('utf8').trim())
    if (!Number.isSafeInteger(bytes) || bytes < 0) fail('EINVAL', `${name}: '${value.toString('utf8')}' is not a size in bytes`)
    this.openUploadOf(await this.resolve(path)).hintSize(bytes)
  }

  /** There are no directories to remove: the root is the mount point, and images are files. */
  async rmdir(path: string): Promise<void> {
    if (path === '/') fail('EBUSY', 'the root of the mount cannot be removed')
    await this.resolve(path)
    fail('ENOTDIR', `${path} is not a directory`)
  }

  /** mkdir, symlink, link, mknod: images are flat regular files. */
  refuse(operation: string, path: string): never {
    this.log.info({ operation, path }, `refused: cinderfs holds only regular image files`)
    fail('EPERM', `${operation} is not supported: cinderfs holds only regular image files`)
  }

  /**
   * At start: delete attachments this host left behind, and volumes it was
   * uploading or deleting when it stopped (a partial upload is never shown
   * as an image; we do not resume it). A leftover that cannot be removed now
   * (Cinder refuses to delete a volume that someone else has attached) is
   * logged and left for the next start: it must not keep every other image
   * from being served.
   */
  async recover(): Promise<void> {
    // One leftover that cannot be cleaned (Cinder refuses, another process holds it) must not fail the mount.
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
        // Complete, but the daemon died before the last writer's release marked it read-only.
        await attempt('mark a finalised image read-only', ids, async () => {
          if (!image.volume.readOnly) await this.o.service.setReadOnly(image.volume.id, true)
          await this.o.service.updateMetadata(image.volume.id, { [keys.host]: null })
        })
      } else {
        await attempt(`delete a volume left ${image.attrs.state} by an earlier run`, ids, async () => this.o.service.delete(image.volume.id))
      }
    }
  }

  /** SIGTERM/unmount: uploads still being written cannot complete; fail them and detach everything. */
  async shutdown(): Promise<void> {
    await Promise.all([...this.uploads.values()].map(async upload => this.dropUpload(upload, 'cinderfs is stopping')))
    await this.o.attachments.detachAll()
  }

  private async resolve(path: string): Promise<ImageEntry> {
    const name = fileNameFromPath(path)
    const entry = this.hidden.get(name) ?? await this.o.store.lookup(name)
    if (entry === undefined) fail('ENOENT', `${name}: no such image`, { path })
    return entry
  }

  private statOf(entry: ImageEntry): FileStat {
    const upload = this.uploads.get(entry.volume.id)
    const live = upload?.isLive === true ? upload : undefined
    const size = live === undefined ? entry.attrs.size : live.size
    const attrs = live === undefined ? entry.attrs : { ...entry.attrs, ...live.attrs, mtimeNs: live.mtimeNs }
    return {
      mode: constants.S_IFREG | attrs.mode, uid: attrs.uid, gid: attrs.gid, size, nlink: 1,
      blocks: Math.ceil(size / 512), blksize: ioSize, mtimeMs: Number(attrs.mtimeNs / 1_000_000n),
    }
  }

  private entryOf(upload: Upload): ImageEntry {
    const entry = this.o.store.peek(upload.name)
    if (entry === undefined) fail('EIO', `upload ${upload.name} lost its entry`)
    return entry
  }

  private openUploadOf(entry: ImageEntry): Upload {
    const upload = this.uploads.get(entry.volume.id)
    if (upload === undefined || !upload.isOpen) fail('EROFS', `${entry.name} is a finalised image and cannot be changed`, { volumeId: entry.volume.id })
    return upload
  }

  private checkWritableMount(operation: string, path: string): void {
    if (this.o.readOnly) fail('EROFS', `${operation} ${path}: mounted read-only`)
  }

  private async startUpload(name: string, mode: number): Promise<Upload> {
    const metadata: Record<string, string> = {
      [keys.imageOwner]: this.o.imageOwner,
      [keys.state]: 'uploading',
      [keys.host]: this.o.host,
      ...attributeMetadata({ mode, uid: this.o.uid, gid: this.o.gid }),
    }
    if (isUuid(name)) metadata[keys.glanceImageId] = name
    const volume = await this.o.service.create({ name: volumeNameOf(name), sizeGiB: 1, metadata })
    let lease: Lease
    try {
      lease = await this.o.attachments.acquire(volume.id, 'rw')
    } catch (err) {
      // No orphan volume when the attach fails.
      await this.o.service.delete(volume.id).catch((deleteErr: unknown) => {
        this.log.error({ volumeId: volume.id, err: errorMessage(deleteErr) }, 'could not delete the volume of a failed upload')
      })
      throw err
    }
    const upload = new Upload({
      volumeId: volume.id, name, capacityGiB: volume.sizeGiB, lease, service: this.o.service,
      attachments: this.o.attachments, writeBuffer: this.o.writeBuffer, chunks: this.uploadChunks, host: this.o.host, logger: this.o.logger,
    })
    upload.attrs.mode = mode
    this.uploads.set(volume.id, upload)
    this.o.store.set({ name, volume, attrs: this.o.store.decode(volume) })
    this.o.store.pin(name)
    this.log.info({ volumeId: volume.id, name }, 'upload started')
    return upload
  }

  private async finalise(upload: Upload): Promise<void> {
    const final = await upload.finalise()
    // Shown at once (size, mtime and hashes must not flicker while the volume is fetched again).
    const entry = this.o.store.peek(upload.name)
    if (entry?.volume.id === upload.volumeId) {
      this.o.store.set({ ...entry, attrs: { ...entry.attrs, ...final.attrs, size: final.size, ...final.digests, state: 'final' } })
    }
    const volume = await this.o.service.get(upload.volumeId)
    this.o.store.unpin(upload.name)
    this.o.store.set({ name: upload.name, volume, attrs: this.o.store.decode(volume) })
  }

  private async reopen(upload: Upload): Promise<void> {
    this.o.cache.forget(upload.volumeId)
    await upload.reopen()
    const volume = await this.o.service.get(upload.volumeId)
    this.o.store.set({ name: upload.name, volume, attrs: this.o.store.decode(volume) })
    this.o.store.pin(upload.name)
  }

  private async dropUpload(upload: Upload, reason: string): Promise<void> {
    this.uploads.delete(upload.volumeId)
    this.o.store.unpin(upload.name)
    const entry = this.o.store.peek(upload.name)
    if (entry?.volume.id === upload.volumeId) this.o.store.remove(upload.name)
    await upload.abort(reason)
  }

  /** The entry's upload, once any finalisation in flight has ended. */
  private async settledUpload(entry: ImageEntry): Promise<Upload | undefined> {
    const upload = this.uploads.get(entry.volume.id)
    await upload?.settled()
    return upload
  }

  private async attachForRead(handle: Handle): Promise<void> {
    handle.leasing ??= this.o.attachments.acquire(handle.entry.volume.id, 'ro')
    const lease = await handle.leasing
    if (handle.lease === undefined) {
      handle.lease = lease
      handle.source = {
        key: handle.entry.volume.id,
        size: handle.entry.attrs.size,
        read: async (buffer, offset, length, position) => lease.device.read(buffer, offset, length, position),
      }
    }
  }

  private async setAttributes(path: string, changes: PendingAttributes): Promise<void> {
    this.checkWritableMount('set attributes of', path)
    if (path === '/') {
      const { mtimeNs, ...rest } = changes
      Object.assign(this.root, rest, mtimeNs === undefined ? {} : { mtimeMs: Number(mtimeNs / 1_000_000n) })
      return
    }
    const entry = await this.resolve(path)
    const upload = await this.settledUpload(entry)
    if (upload !== undefined && upload.isOpen) {
      Object.assign(upload.attrs, changes)
      return
    }
    const metadata = attributeMetadata(changes)
    if (Object.keys(metadata).length === 0) return
    await this.o.service.updateMetadata(entry.volume.id, metadata)
    this.o.store.set({ ...entry, volume: { ...entry.volume, metadata: { ...entry.volume.metadata, ...metadata } }, attrs: { ...entry.attrs, ...changes } })
  }

  /** libfuse hides an open file that is unlinked or replaced; it is deleted when its last handle goes. */
  private async hide(entry: ImageEntry, hiddenName: string): Promise<void> {
    const upload = await this.settledUpload(entry)
    if (upload !== undefined && upload.isOpen) upload.discarded = true
    else await this.o.service.updateMetadata(entry.volume.id, { [keys.state]: 'deleting', [keys.host]: this.o.host })
    this.o.store.remove(entry.name)
    this.hidden.set(hiddenName, entry)
    this.log.info({ volumeId: entry.volume.id, name: entry.name }, 'open image unlinked; deleting it when its last handle closes')
  }

  /** Deletes an image's volume, after checking it really is one; waits for its readers to go. */
  private async destroy(entry: ImageEntry): Promise<void> {
    const upload = await this.settledUpload(entry)
    if (upload !== undefined && upload.isOpen) {
      upload.discarded = true
      if (upload.writeHandles === 0) await this.dropUpload(upload, 'unlinked')
      return
    }
    const volume = await this.o.service.get(entry.volume.id)
    if (!isImageVolume(volume)) {
      this.log.error({ volumeId: volume.id, name: volume.name }, 'refused to delete a volume that is not an image')
      fail('EPERM', `volume ${volume.id} (${volume.name}) is not an image volume; not deleting it`)
    }
    this.o.cache.forget(volume.id)
    const remove = async (): Promise<void> => {
      await this.o.attachments.detach(volume.id)
      await this.o.service.delete(volume.id)
      this.log.info({ volumeId: volume.id, name: entry.name }, 'image deleted')
    }
    if (!this.o.attachments.isAttached(volume.id)) return remove()
    await new Promise<void>((resolve, reject) => {
      this.o.attachments.whenIdle(volume.id, () => { remove().then(resolve, reject) })
    })
  }

  private xattrs(entry: ImageEntry): Record<string, string> {
    const out: Record<string, string> = { [xattrNames.volumeId]: entry.volume.id }
    const optional = {
      [xattrNames.md5]: entry.attrs.md5,
      [xattrNames.sha512]: entry.attrs.sha512,
      [xattrNames.glanceImageId]: entry.volume.metadata[keys.glanceImageId],
    }
    for (const [name, value] of Object.entries(optional)) if (value !== undefined) out[name] = value
    return out
  }
}

