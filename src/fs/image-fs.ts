import { constants } from 'node:fs'
import type { AttachmentManager } from '../attachments/attachment-manager.js'
import type { VolumeService } from '../backends/volume-service.js'
import type { BlockCache } from '../cache/block-cache.js'
import { errorMessage, fail } from '../errors/errors.js'
import type { ImageAttributeChanges, ImageLifecycle } from '../image/lifecycle.js'
import type { Logger } from '../log/logger.js'
import { withinRetryWindow } from '../outage/retry-window.js'
import { AlignedBlockPool } from '../memory/aligned-blocks.js'
import type { Clock } from '../model/clock.js'
import { GiB } from '../model/volume.js'
import type { ImageEntry, ImageStore } from '../store/image-store.js'
import { keys } from '../store/metadata.js'
import { checkFileName, fileNameFromPath, isFuseHiddenName } from '../store/names.js'
import { GrowableVolume } from '../upload/growth.js'
import { Upload, uploadWindowBytes } from '../upload/upload.js'
import { HandleTable, type Handle } from './handles.js'
import { OpenImage, type Phase } from './open-image.js'
import { xattrNames, type FileStat, type FsStat, type Identity } from './types.js'

export interface ImageFsOptions {
  service: VolumeService
  store: ImageStore
  lifecycle: ImageLifecycle
  attachments: AttachmentManager
  cache: BlockCache
  logger: Logger
  clock: Clock
  readOnly: boolean
  writeBuffer: number
  /** How long a finalised image stays writable by this host after its last writer closed; 0 seals at once. */
  sealDelayMs: number
  /** How long the backend calls of an upload (create, attach, grow) ride out an outage. */
  apiRetryWindowMs: number
  uid: number
  gid: number
}

/** Log lines tests and operators wait for. */
export const fsMessages = {
  uploadStarted: 'upload started',
  refusedFinal: 'refused: finalised images are read-only',
  refusedNotRegular: 'refused: cinderfs holds only regular image files',
  unlinkedOpen: 'open image unlinked; deleting it when its last handle closes',
  dropped: 'upload dropped; deleting its volume',
  sealFailed: 'detaching the image to seal it failed; the janitor retries',
} as const

/** The I/O size we advertise (st_blksize); FUSE moves at most 128 KiB per request with libfuse2. */
const ioSize = 128 * 1024
const unchangedId = 0xffffffff
/** O_ACCMODE, which Node does not export. */
const accessModeMask = 3

/**
 * The file-system operations, in terms of images: every method takes paths
 * or handles and returns values or throws CinderfsError; the FUSE adapter
 * only translates. A new file is an upload until its last writer closes it;
 * it is then finalised (errors reach close()), stays writable by this host
 * for the seal delay (tools that create, close and reopen), and is sealed
 * read-only after it. Sealed images are immutable (EROFS). The backend and
 * the namespace change only through the ImageLifecycle.
 */
export class ImageFs {
  private readonly handles = new HandleTable()
  /** Images open on this mount, or in their seal delay, by volume id. */
  private readonly images = new Map<string, OpenImage>()
  /** Staging memory of every upload, reused from one to the next. */
  private readonly uploadChunks = new AlignedBlockPool(uploadWindowBytes, { shared: true })
  /** libfuse2's `.fuse_hidden…` names for open files that were unlinked or replaced. */
  private readonly hidden = new Map<string, ImageEntry>()
  /** The root has no volume: its attributes (rsync -a sets them) live in memory for the mount's life. */
  private readonly root: { mtimeMs: number, mode: number, uid: number, gid: number }
  /** Work no request waits for (seals when the delay ends); shutdown and tests wait for it. */
  private readonly background = new Set<Promise<void>>()
  private readonly creating = new Set<Promise<void>>()
  private stopping = false
  private readonly log: Logger

  constructor(private readonly o: ImageFsOptions) {
    this.log = o.logger.child({ component: 'fs' })
    this.root = { mtimeMs: o.clock.now(), mode: 0o755, uid: o.uid, gid: o.gid }
  }

  async getattr(path: string): Promise<FileStat> {
    if (path === '/') {
      const r = this.root
      return { mode: constants.S_IFDIR | r.mode, uid: r.uid, gid: r.gid, size: 4096, nlink: 2, blocks: 8, blksize: ioSize, mtimeMs: r.mtimeMs }
    }
    return this.statOf(await this.resolve(path))
  }

  /**
   * What a name is now: its volume (a FUSE binding gives each volume an
   * inode of its own), whether it is sealed (no writer can change it any
   * more, so the kernel may cache its pages), and its attributes.
   */
  async identify(path: string): Promise<Identity> {
    const entry = await this.resolve(path)
    const kind = this.images.get(entry.volume.id)?.phase.kind
    // Sealing or sealed: no writer may come back, so its bytes are final.
    const sealed = kind === undefined || kind === 'sealing' || kind === 'sealed'
    return { volumeId: entry.volume.id, sealed, stat: this.statOf(entry) }
  }

  async readdir(path: string): Promise<string[]> {
    if (path !== '/') {
      await this.resolve(path)
      fail('ENOTDIR', `${path} is not a directory`)
    }
    return ['.', '..', ...(await this.o.store.list()).map(entry => entry.name)]
  }

  async create(path: string, mode: number): Promise<number> {
    // Shutdown waits for creates in flight, so none leaves a volume behind it.
    const creating = withinRetryWindow(this.o.apiRetryWindowMs, async () => this.startUpload(path, mode))
    const tracked = creating.then(() => undefined, () => undefined)
    this.creating.add(tracked)
    try {
      return await creating
    } finally {
      this.creating.delete(tracked)
    }
  }

  private async startUpload(path: string, mode: number): Promise<number> {
    this.checkWritableMount('create', path)
    if (this.stopping) fail('EROFS', `create ${path}: cinderfs is stopping`)
    const name = fileNameFromPath(path)
    checkFileName(name)
    if (isFuseHiddenName(name)) fail('EPERM', `${name}: names starting with .fuse_hidden are reserved`)
    if (await this.o.store.lookup(name) !== undefined) fail('EEXIST', `${name} exists`)
    const entry = await this.o.lifecycle.begin(name, mode & 0o7777)
    const volumeId = entry.volume.id
    let lease
    try {
      lease = await this.o.attachments.acquire(volumeId, 'rw')
    } catch (err) {
      // No orphan volume when the attach fails.
      await this.o.lifecycle.discard(volumeId)
      throw err
    }
    const volume = new GrowableVolume({ volumeId, sizeGiB: entry.volume.sizeGiB, lease, service: this.o.service, attachments: this.o.attachments, logger: this.log, apiRetryWindowMs: this.o.apiRetryWindowMs })
    const upload = new Upload({ volumeId, name, volume, writeBuffer: this.o.writeBuffer, chunks: this.uploadChunks, logger: this.o.logger })
    const image = new OpenImage(volumeId, { kind: 'writing', upload })
    this.images.set(volumeId, image)
    this.log.info({ volumeId, name }, fsMessages.uploadStarted)
    return this.handles.open(image, 'write').id
  }

  async open(path: string, flags: number): Promise<number> {
    const entry = await this.resolve(path)
    const volumeId = entry.volume.id
    if ((flags & accessModeMask) === constants.O_RDONLY) {
      const image = this.images.get(volumeId) ?? this.track(new OpenImage(volumeId, { kind: 'sealed' }))
      if (image.upload === undefined) image.knownSize = entry.attrs.size
      return this.handles.open(image, 'read').id
    }
    this.checkWritableMount('open for writing', path)
    const image = this.images.get(volumeId)
    if (image === undefined) this.refuseFinal(entry.name, volumeId)
    const handle = this.handles.open(image, 'write')
    try {
      const upload = await image.exclusive(async () => this.writableUpload(image))
      if ((flags & constants.O_TRUNC) !== 0) await upload.truncate(0)
    } catch (err) {
      await this.release(handle.id)
      throw err
    }
    return handle.id
  }

  /** A number when served from the cache in this tick, else a promise. */
  read(fh: number, target: Buffer, length: number, position: number): number | Promise<number> {
    const handle = this.handles.get(fh)
    const image = handle.image
    const upload = image.upload
    if (upload !== undefined) return upload.read(target, length, position)
    const source = image.cachedSource
    if (source !== undefined) return this.o.cache.read(source, target, length, position, handle.stream)
    return this.readThroughAttach(handle, target, length, position)
  }

  /** As read, but bytes in the block cache come back as views of its blocks, not copied (good until this tick ends). */
  readViews(fh: number, target: Buffer, length: number, position: number): Buffer[] | Promise<Buffer[]> {
    const handle = this.handles.get(fh)
    const source = handle.image.upload === undefined ? handle.image.cachedSource : undefined
    if (source !== undefined) return this.o.cache.views(source, target, length, position, handle.stream)
    const copied = this.read(fh, target, length, position)
    return typeof copied === 'number' ? [target.subarray(0, copied)] : copied.then(n => [target.subarray(0, n)])
  }

  async write(fh: number, data: Buffer, length: number, position: number): Promise<number> {
    const handle = this.handles.writer(fh)
    const image = handle.image
    // A write through a handle that outlived a finalisation (a shell's dup) takes the image back.
    const upload = image.upload ?? await image.exclusive(async () => this.writableUpload(image))
    handle.dirty = true
    delete image.pending.mtimeNs
    return upload.write(data, length, position)
  }

  /**
   * close(2) of a writer lands here, and errors here reach the writer (those
   * of release never do). So the upload is finalised here when this handle
   * wrote and is the last that can write. A flush from a handle that wrote
   * nothing finalises nothing: dd and shells open the file, dup2 it and close
   * the original before the first write (release finalises a file nobody wrote).
   */
  async flush(fh: number): Promise<void> {
    const handle = this.handles.get(fh)
    if (handle.kind !== 'write') return
    const image = handle.image
    await image.exclusive(async () => {
      const upload = image.upload
      if (upload === undefined) return
      try {
        upload.throwIfFailed()
      } catch (err) {
        // The upload is lost: clean up before the writer's close returns, so nothing is left when cp exits.
        await this.drop(image, errorMessage(err))
        throw err
      }
      if (!handle.dirty || image.writers > 1) return
      handle.dirty = false
      await this.finalise(image, true)
    })
  }

  async fsync(fh: number): Promise<void> {
    await this.handles.get(fh).image.upload?.fsync()
  }

  async release(fh: number): Promise<void> {
    const handle = this.handles.close(fh)
    if (handle === undefined) return
    const image = handle.image
    await image.exclusive(async () => {
      if (handle.kind === 'write' && image.writers === 0 && !image.unlinked) {
        await this.finalise(image, false).catch(() => undefined)
        this.scheduleSeal(image)
      }
      if (image.handles > 0) return
      image.releaseRead()
      if (image.unlinked) await this.destroy(image)
      if (image.phase.kind === 'sealed' || image.phase.kind === 'gone') this.untrack(image)
    })
  }

  async truncate(path: string, size: number): Promise<void> {
    this.checkWritableMount('truncate', path)
    const entry = await this.resolve(path)
    const image = this.images.get(entry.volume.id)
    if (image === undefined) this.refuseFinal(entry.name, entry.volume.id)
    const upload = await image.exclusive(async () => this.writableUpload(image))
    await upload.truncate(size)
  }

  async ftruncate(fh: number, size: number): Promise<void> {
    const handle = this.handles.writer(fh)
    const image = handle.image
    const upload = image.upload ?? await image.exclusive(async () => this.writableUpload(image))
    handle.dirty = true
    delete image.pending.mtimeNs
    await upload.truncate(size)
  }

  async utimens(path: string, mtimeMs: number): Promise<void> {
    // Kept to the millisecond, truncated as stat(1) and rsync read times (libfuse3 passes nanoseconds).
    await this.setAttributes(path, { mtimeNs: BigInt(Math.floor(mtimeMs)) * 1_000_000n })
  }

  async chmod(path: string, mode: number): Promise<void> {
    await this.setAttributes(path, { mode: mode & 0o7777 })
  }

  async chown(path: string, uid: number, gid: number): Promise<void> {
    const changes: ImageAttributeChanges = {}
    if (uid !== unchangedId && uid !== -1) changes.uid = uid
    if (gid !== unchangedId && gid !== -1) changes.gid = gid
    await this.setAttributes(path, changes)
  }

  async unlink(path: string): Promise<void> {
    this.checkWritableMount('unlink', path)
    const name = fileNameFromPath(path)
    // libfuse2 unlinks the hidden name after the last release, which already deleted the image.
    if (this.hidden.delete(name)) return
    await this.remove(await this.resolve(path))
  }

  async rename(from: string, to: string): Promise<void> {
    this.checkWritableMount('rename', from)
    const source = await this.resolve(from)
    const toName = fileNameFromPath(to)
    if (isFuseHiddenName(toName)) {
      this.hidden.set(toName, source)
      await this.remove(source)
      return
    }
    checkFileName(toName)
    if (toName === source.name) return
    const replaced = await this.o.store.lookup(toName)
    const image = this.images.get(source.volume.id)
    // An image of this host's not sealed yet is renamed behind (one write, soon, with its attributes).
    const rename = async (): Promise<void> => this.o.lifecycle.rename(source, toName, image !== undefined && isOwnUnsealed(image.phase))
    await (image === undefined ? rename() : image.exclusive(rename))
    // Only once the new image stands under the name in the backend is the old one deleted.
    if (replaced !== undefined && replaced.volume.id !== source.volume.id) {
      await this.o.lifecycle.written(source.volume.id)
      await this.remove(replaced).catch((err: unknown) => {
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
    const entry = await this.resolve(path)
    const image = this.images.get(entry.volume.id)
    if (image === undefined) this.refuseFinal(entry.name, entry.volume.id)
    const upload = await image.exclusive(async () => this.writableUpload(image))
    upload.hintSize(bytes)
  }

  /** There are no directories to remove: the root is the mount point, and images are files. */
  async rmdir(path: string): Promise<void> {
    if (path === '/') fail('EBUSY', 'the root of the mount cannot be removed')
    await this.resolve(path)
    fail('ENOTDIR', `${path} is not a directory`)
  }

  /** mkdir, symlink, link, mknod: images are flat regular files. */
  refuse(operation: string, path: string): never {
    this.log.info({ operation, path }, fsMessages.refusedNotRegular)
    fail('EPERM', `${operation} is not supported: cinderfs holds only regular image files`)
  }

  /** Resolves when the work no request waits for (seals) has ended. */
  async settled(): Promise<void> {
    while (this.background.size > 0) await Promise.all(this.background)
  }

  /** At start: what an earlier run left (see ImageLifecycle.recover). */
  async recover(): Promise<void> {
    await this.o.lifecycle.recover()
  }

  /**
   * SIGTERM/unmount: uploads a writer still holds open cannot complete (they
   * fail and their volumes go, even if a dup's close finalised them);
   * images in their seal delay are sealed now; everything is detached.
   */
  async shutdown(): Promise<void> {
    this.stopping = true
    await Promise.all(this.creating)
    await this.o.lifecycle.allWritten()
    // The mount is gone: no reader will release, and a seal must not wait for one.
    for (const image of this.images.values()) image.releaseRead()
    await Promise.all([...this.images.values()].map(async image => {
      if (image.phase.kind === 'final' && image.writers === 0) await this.seal(image)
      else await image.exclusive(async () => this.drop(image, 'cinderfs is stopping'))
    }))
    await this.settled()
    await this.o.attachments.detachAll()
  }

  private async resolve(path: string): Promise<ImageEntry> {
    const name = fileNameFromPath(path)
    const entry = this.hidden.get(name) ?? await this.o.store.lookup(name)
    if (entry === undefined) fail('ENOENT', `${name}: no such image`, { path })
    return entry
  }

  private statOf(entry: ImageEntry): FileStat {
    const image = this.images.get(entry.volume.id)
    const upload = image?.upload
    let { size, mode, uid, gid, mtimeNs } = entry.attrs
    if (image !== undefined && upload !== undefined) {
      // Being written: the upload's size and last write, and what was set meanwhile.
      size = upload.size
      mtimeNs = image.pending.mtimeNs ?? upload.modifiedNs
      mode = image.pending.mode ?? mode
      uid = image.pending.uid ?? uid
      gid = image.pending.gid ?? gid
    }
    return {
      mode: constants.S_IFREG | mode, uid, gid, size, nlink: 1,
      blocks: Math.ceil(size / 512), blksize: ioSize, mtimeMs: Number(mtimeNs / 1_000_000n),
    }
  }

  private track(image: OpenImage): OpenImage {
    this.images.set(image.volumeId, image)
    return image
  }

  private untrack(image: OpenImage): void {
    if (this.images.get(image.volumeId) === image) this.images.delete(image.volumeId)
  }

  private refuseFinal(name: string, volumeId: string): never {
    this.log.info({ volumeId, name }, fsMessages.refusedFinal)
    fail('EROFS', `${name} is a sealed image and cannot be written`, { volumeId })
  }

  private checkWritableMount(operation: string, path: string): void {
    if (this.o.readOnly) fail('EROFS', `${operation} ${path}: mounted read-only`)
  }

  /** The upload that takes this image's writes, reopening a finalised image still in its seal delay. REQUIRES(image lock). */
  private async writableUpload(image: OpenImage): Promise<Upload> {
    const phase = image.phase
    if (phase.kind === 'writing') return phase.upload
    if (phase.kind !== 'final' || image.unlinked) this.refuseFinal(this.o.store.byVolume(image.volumeId)?.name ?? image.volumeId, image.volumeId)
    phase.cancelSeal?.()
    await this.o.lifecycle.reopen(image.volumeId)
    phase.upload.reopen()
    image.forgetSource()
    image.phase = { kind: 'writing', upload: phase.upload }
    return phase.upload
  }

  /**
   * Finishes the upload and records it. `reportErrors`: at flush the writer
   * gets the error (the upload is dropped first, so nothing is left when cp
   * exits); at release nobody can, so it is logged. REQUIRES(image lock).
   */
  private async finalise(image: OpenImage, reportErrors: boolean): Promise<void> {
    const upload = image.upload
    // unlinked while open: its last release deletes it, so there is nothing to record
    if (upload === undefined || image.unlinked) return
    try {
      const result = await upload.finish()
      await this.o.lifecycle.complete(image.volumeId, result, image.pending)
      image.pending = {}
      image.knownSize = result.size
      image.phase = { kind: 'final', upload }
    } catch (err) {
      await this.drop(image, `finalisation failed: ${errorMessage(err)}`)
      if (reportErrors) throw err
    }
  }

  /** The seal delay starts (the last writer is gone). */
  private scheduleSeal(image: OpenImage): void {
    const phase = image.phase
    if (phase.kind !== 'final') return
    phase.cancelSeal?.()
    const seal = (): void => {
      const sealing = this.seal(image, phase).finally(() => { this.background.delete(sealing) })
      this.background.add(sealing)
    }
    if (this.o.sealDelayMs === 0) seal()
    else phase.cancelSeal = this.o.clock.schedule(this.o.sealDelayMs, seal)
  }

  /**
   * Lets go of the read-write attachment and marks the image read-only, if
   * it is still in the final phase `expected` (no writer took it back). The
   * flag can change only once the attachment is gone, so this waits for
   * readers of this mount to let go of it — outside the image's lock, which
   * their release needs.
   */
  private async seal(image: OpenImage, expected: Phase = image.phase): Promise<void> {
    const upload = await image.exclusive(async () => {
      const phase = image.phase
      if (phase !== expected || phase.kind !== 'final' || image.writers > 0) return undefined
      phase.cancelSeal?.()
      image.phase = { kind: 'sealing' }
      return phase.upload
    })
    if (upload === undefined) return
    try {
      await upload.close()
      await this.o.attachments.detachWhenIdle(image.volumeId)
    } catch (err) {
      // a failed detach is the janitor's; the seal waits behind it there
      this.log.warn({ volumeId: image.volumeId, err: errorMessage(err) }, fsMessages.sealFailed)
    }
    await this.o.lifecycle.sealEventually(image.volumeId)
    await image.exclusive(async () => {
      if (image.phase.kind !== 'sealing') return
      image.phase = { kind: 'sealed' }
      if (image.handles === 0) this.untrack(image)
    })
  }

  /** Gives up an upload: its volume is deleted. Never throws. REQUIRES(image lock). */
  private async drop(image: OpenImage, reason: string): Promise<void> {
    const phase = image.phase
    if (phase.kind !== 'writing' && phase.kind !== 'final') return
    if (phase.kind === 'final') phase.cancelSeal?.()
    image.phase = { kind: 'gone' }
    this.log.warn({ volumeId: image.volumeId, reason }, fsMessages.dropped)
    await phase.upload.abort(reason)
    image.releaseRead()
    await this.o.lifecycle.discard(image.volumeId)
    if (image.handles === 0) this.untrack(image)
  }

  /** Deletes an unlinked image whose last handle is gone. REQUIRES(image lock). */
  private async destroy(image: OpenImage): Promise<void> {
    if (image.phase.kind === 'writing' || image.phase.kind === 'final') {
      await this.drop(image, 'unlinked')
      return
    }
    image.phase = { kind: 'gone' }
    await this.o.lifecycle.delete(image.volumeId)
  }

  /**
   * unlink, or a rename onto it: the name goes at once. An image still open
   * here is deleted when its last handle goes (marked so a crash cannot
   * leave it); one in its seal delay or not open at all, now.
   */
  private async remove(entry: ImageEntry): Promise<void> {
    const image = this.images.get(entry.volume.id)
    if (image === undefined) {
      await this.o.lifecycle.delete(entry.volume.id)
      return
    }
    await image.exclusive(async () => {
      const current = this.o.store.byVolume(image.volumeId)
      if (current !== undefined) this.o.store.remove(current.name)
      image.unlinked = true
      if (image.phase.kind === 'final') image.phase.cancelSeal?.()
      if (image.handles === 0) {
        await this.destroy(image)
        this.untrack(image)
        return
      }
      if (image.phase.kind !== 'writing') await this.o.lifecycle.markDeleting(image.volumeId)
      this.log.info({ volumeId: image.volumeId, name: entry.name }, fsMessages.unlinkedOpen)
    })
  }

  private async readThroughAttach(handle: Handle, target: Buffer, length: number, position: number): Promise<number> {
    const image = handle.image
    const size = this.o.store.byVolume(image.volumeId)?.attrs.size ?? image.knownSize
    const source = await image.readSource(this.o.attachments, size)
    return this.o.cache.read(source, target, length, position, handle.stream)
  }

  private async setAttributes(path: string, changes: ImageAttributeChanges): Promise<void> {
    this.checkWritableMount('set attributes of', path)
    if (path === '/') {
      const { mtimeNs, ...rest } = changes
      Object.assign(this.root, rest, mtimeNs === undefined ? {} : { mtimeMs: Number(mtimeNs / 1_000_000n) })
      return
    }
    const entry = await this.resolve(path)
    const image = this.images.get(entry.volume.id)
    const apply = async (): Promise<void> => {
      if (image?.phase.kind === 'writing') Object.assign(image.pending, changes)
      else await this.o.lifecycle.setAttributes(entry.volume.id, changes, image !== undefined && isOwnUnsealed(image.phase))
    }
    await (image === undefined ? apply() : image.exclusive(apply))
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

/** Finalised or still uploading here: nobody else writes the volume, so its metadata can be written behind. */
function isOwnUnsealed(phase: Phase): boolean {
  return phase.kind === 'writing' || phase.kind === 'final'
}
