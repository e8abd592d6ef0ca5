import { constants, readFileSync } from 'node:fs'
import os from 'node:os'
import { errorCode, errorMessage, fail } from '../errors/errors.js'
import type { ImageFs } from '../fs/image-fs.js'
import type { FileStat } from '../fs/types.js'
import type { Logger } from '../log/logger.js'
import { AlignedBlockPool } from '../memory/aligned-blocks.js'
import type { Metrics } from '../metrics/metrics.js'
import type { Transfers } from '../metrics/transfers.js'
import { requestFailure } from './fuse-adapter.js'
import { generation, InodeTable, rootIno, type Inode } from './inodes.js'
import { openFlags, type Attr, type Entry, type Fuse3Native } from './fuse3-native.js'

const errno = os.constants.errno
/** O_ACCMODE, which Node does not export. */
const accessModeMask = 3
/** The kernel never asks for more than 1 MiB per read (max_pages 256). */
const maxRequestBytes = 1024 * 1024
/** setattr's valid bits (fuse_lowlevel.h FUSE_SET_ATTR_*). */
const setAttr = { mode: 1, uid: 2, gid: 4, size: 8, mtime: 32, mtimeNow: 128 } as const
/** renameat2 flags. */
const renameNoReplace = 1
/** Smallest bytes one directory entry takes in a reply (plain; plus is larger): bounds what we hand to C. */
const minDirentBytes = 32
/** Requests a caller's signal may cut short: nothing has changed when we answer EINTR. */
const interruptible = new Set(['lookup', 'getattr', 'readdir', 'readdirplus', 'open', 'read'])

export interface Fuse3AdapterOptions {
  fs: ImageFs
  native: Fuse3Native
  log: Logger
  metrics: Metrics
  /** Progress lines and `cinderfs status` of uploads and reads. */
  transfers: Transfers
  /** Entry and (sealed images') attribute timeout: the listing's TTL, as stale as the namespace may be anyway. */
  ttlSeconds: number
}

/**
 * libfuse3 low-level requests → ImageFs calls. Inodes are looked up in the
 * InodeTable (one per volume) and turned into paths for ImageFs; everything
 * else is translation. Sealed images are opened with keep_cache (the kernel
 * serves re-reads from its page cache); writers with direct_io; readers of
 * an image not yet sealed keep pages for that open only.
 */
export class Fuse3Adapter {
  readonly inodes = new InodeTable()
  private readonly fs: ImageFs
  private readonly native: Fuse3Native
  private readonly log: Logger
  private readonly metrics: Metrics
  private readonly transfers: Transfers
  private readonly ttl: number
  private readonly failure: (op: string, path: string, err: unknown) => number
  /** Directory listings, one per opendir, so offsets stay meaningful while names come and go. */
  private readonly listings = new Map<number, string[]>()
  private nextListing = 1
  /** Ids of interruptible requests in flight. */
  private readonly inFlight = new Set<number>()
  /** Reply memory for reads the block cache cannot answer with views (misses, uploads). */
  private readonly replyBuffers = new AlignedBlockPool(maxRequestBytes)
  private hiddenCount = 0
  private onExit: ((code: number) => void) | undefined

  constructor(o: Fuse3AdapterOptions) {
    this.fs = o.fs
    this.native = o.native
    this.log = o.log.child({ component: 'fuse3' })
    this.metrics = o.metrics
    this.transfers = o.transfers
    this.ttl = o.ttlSeconds
    this.failure = requestFailure(this.log)
  }

  /** Called once when the session ends (unmounted by us or from outside). */
  whenExited(listener: (code: number) => void): void {
    this.onExit = listener
  }

  /** The namespace learnt that `name` is gone or means another volume: the kernel must look it up again. */
  nameChanged(name: string): void {
    const inode = this.inodes.named(name)
    if (inode === undefined || inode.hiddenAs !== undefined) return
    this.inodes.unname(name)
    this.native.invalidate(rootIno, name)
    this.log.debug({ name, volumeId: inode.volumeId }, 'name changed elsewhere; kernel entry invalidated')
  }

  readonly handle = (op: string, id: number, ino: number, a: number, b: number, fh: number, name: string | null, name2: string | null, data: Buffer | number[] | undefined): void => {
    switch (op) {
      case 'forget': return this.inodes.forget(ino, a)
      case 'interrupt': return this.interrupt(a, b)
      case 'exit': return this.onExit?.(a)
      case 'read': return this.read(id, fh, a, b)
      case 'write': return this.write(id, fh, b, data instanceof Buffer ? data : Buffer.alloc(0))
    }
    if (interruptible.has(op)) this.inFlight.add(id)
    const answered = this.metrics.fuseRequest(op)
    const label = name === null || op.endsWith('xattr') ? this.inodes.get(ino)?.name ?? (ino === rootIno ? '' : `#${ino}`) : name
    this.dispatch(op, id, ino, a, b, fh, name ?? '', name2 ?? '', data).then(() => { answered(0) }, (err: unknown) => {
      const errno = this.failure(op, `/${label}`, err)
      answered(errno)
      this.reply(id, () => { this.native.replyErr(id, -errno) })
    })
  }

  private async dispatch(op: string, id: number, ino: number, a: number, b: number, fh: number, name: string, name2: string, data: Buffer | number[] | undefined): Promise<void> {
    const fs = this.fs
    switch (op) {
      case 'lookup': return this.lookup(id, ino, name)
      case 'getattr': {
        const attr = await this.attrOf(ino)
        this.reply(id, () => { this.native.replyAttr(id, attr, this.attrTtl(ino)) })
        return
      }
      case 'setattr': return this.setattr(id, ino, b, fh, a === 1, Array.isArray(data) ? data : [])
      case 'opendir': {
        if (ino !== rootIno) fail('ENOTDIR', `inode ${ino} is not a directory`)
        const listing = this.nextListing++
        this.listings.set(listing, await fs.readdir('/'))
        if (!this.reply(id, () => this.native.replyOpen(id, listing, 0))) this.listings.delete(listing)
        return
      }
      case 'readdir':
      case 'readdirplus': return this.readdir(id, fh, a, b, op === 'readdirplus')
      case 'releasedir':
        this.listings.delete(fh)
        return this.ok(id)
      case 'open': return this.open(id, ino, a)
      case 'create': return this.create(id, ino, name, b)
      case 'flush':
        await fs.flush(fh)
        return this.ok(id)
      case 'fsync':
        await fs.fsync(fh)
        return this.ok(id)
      case 'release': return this.release(id, ino, fh)
      case 'unlink': return this.unlink(id, name)
      case 'rename': return this.rename(id, name, name2, a)
      case 'statfs': {
        const s = await fs.statfs()
        this.reply(id, () => { this.native.replyStatfs(id, [s.bsize, s.frsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.namemax]) })
        return
      }
      case 'getxattr': {
        this.sized(id, await fs.getxattr(this.pathOf(ino), name), a)
        return
      }
      case 'listxattr': {
        const names = await fs.listxattr(this.pathOf(ino))
        this.sized(id, Buffer.from(names.map(n => `${n}\0`).join('')), a)
        return
      }
      case 'setxattr':
        await fs.setxattr(this.pathOf(ino), name, Buffer.from(name2))
        return this.ok(id)
      case 'removexattr': return fail('ENOTSUP', `${name}: cinderfs stores no extended attributes`)
      case 'rmdir':
        await fs.rmdir(`/${name}`)
        return this.ok(id)
      case 'mkdir':
      case 'mknod':
      case 'symlink':
      case 'link': return fs.refuse(op, `/${name}`)
      default: return fail('ENOSYS', `${op} is not implemented`)
    }
  }

  private async lookup(id: number, parent: number, name: string): Promise<void> {
    if (parent !== rootIno) fail('ENOTDIR', `inode ${parent} is not a directory`)
    let inode: Inode
    try {
      inode = await this.bind(name)
    } catch (err) {
      // A negative entry: the kernel need not ask again for a while (as long as the listing is trusted).
      if (errorCode(err) !== 'ENOENT') throw err
      this.reply(id, () => { this.native.replyEntry(id, [0, 0, null, this.ttl, 0]) })
      return
    }
    if (this.reply(id, () => { this.native.replyEntry(id, this.entryOf(inode)) })) this.inodes.lookedUp(inode)
    else this.inodes.dropIfUnused(inode)
  }

  private async setattr(id: number, ino: number, valid: number, fh: number, hasFh: boolean, values: number[]): Promise<void> {
    const [mode = 0, uid = -1, gid = -1, size = 0, mtimeMs = -1] = values
    const path = this.pathOf(ino)
    if ((valid & setAttr.mode) !== 0) await this.fs.chmod(path, mode)
    if ((valid & (setAttr.uid | setAttr.gid)) !== 0) {
      await this.fs.chown(path, (valid & setAttr.uid) !== 0 ? uid : -1, (valid & setAttr.gid) !== 0 ? gid : -1)
    }
    if ((valid & setAttr.size) !== 0) {
      if (hasFh) await this.fs.ftruncate(fh, size)
      else await this.fs.truncate(path, size)
    }
    if ((valid & (setAttr.mtime | setAttr.mtimeNow)) !== 0) await this.fs.utimens(path, mtimeMs < 0 ? Date.now() : mtimeMs)
    const attr = await this.attrOf(ino)
    this.reply(id, () => { this.native.replyAttr(id, attr, this.attrTtl(ino)) })
  }

  private async readdir(id: number, fh: number, size: number, offset: number, plus: boolean): Promise<void> {
    const names = this.listings.get(fh) ?? await this.fs.readdir('/')
    const slice = names.slice(offset, offset + Math.ceil(size / minDirentBytes))
    const entries: Array<[string, number, Entry]> = []
    const bound: Array<Inode | undefined> = []
    for (const [i, name] of slice.entries()) {
      const next = offset + i + 1
      if (name === '.' || name === '..') {
        entries.push([name, next, [0, 0, toAttr(rootIno, directoryStat), 0, 0]])
        bound.push(undefined)
        continue
      }
      const inode = await this.bind(name).catch(() => undefined)
      if (inode === undefined) continue // gone since the listing was taken
      entries.push([name, next, plus ? this.entryOf(inode) : [0, 0, toAttr(inode.ino, inode.stat), 0, 0]])
      bound.push(plus ? inode : undefined)
    }
    let added = 0
    this.reply(id, () => { added = this.native.replyDirectory(id, size, plus, entries) })
    // Each entry of a readdirplus reply that reached the kernel is a lookup it now holds.
    for (const [i, inode] of bound.entries()) {
      if (inode === undefined) continue
      if (i < added) this.inodes.lookedUp(inode)
      else this.inodes.dropIfUnused(inode)
    }
  }

  private async open(id: number, ino: number, flags: number): Promise<void> {
    const inode = this.inodeOf(ino)
    const path = this.pathOf(ino)
    const now = await this.fs.identify(path)
    // The name now means another volume: ESTALE makes the kernel look it up again and open the new inode.
    if (now.volumeId !== inode.volumeId) fail('ESTALE', `${path} was replaced by another image`, { volumeId: inode.volumeId })
    const fh = await this.fs.open(path, flags)
    this.track(fh, flags, path)
    // Asked again: the open may have waited for a finalisation to end.
    inode.sealed = (await this.fs.identify(path).catch(() => now)).sealed
    const writable = (flags & accessModeMask) !== constants.O_RDONLY
    // Writers skip the page cache. Readers of an image a writer may still take back (the seal delay) get
    // the page cache for this open only (the kernel drops it at the next open: close-to-open); sealed ones keep it.
    const mode = writable ? openFlags.directIo : inode.sealed ? openFlags.keepCache : 0
    this.inodes.opened(inode)
    if (!this.reply(id, () => this.native.replyOpen(id, fh, mode))) await this.release(0, ino, fh)
  }

  private async create(id: number, parent: number, name: string, mode: number): Promise<void> {
    if (parent !== rootIno) fail('ENOTDIR', `inode ${parent} is not a directory`)
    const fh = await this.fs.create(`/${name}`, mode)
    this.track(fh, constants.O_WRONLY, `/${name}`)
    const inode = await this.bind(name)
    this.inodes.opened(inode)
    this.inodes.lookedUp(inode)
    if (!this.reply(id, () => this.native.replyCreate(id, this.entryOf(inode), fh, openFlags.directIo))) {
      this.inodes.forget(inode.ino, 1)
      await this.release(0, inode.ino, fh)
    }
  }

  /** id 0: a release of our own (the open's reply did not reach its caller). */
  private async release(id: number, ino: number, fh: number): Promise<void> {
    this.transfers.end(fh)
    try {
      await this.fs.release(fh)
    } finally {
      const inode = this.inodes.get(ino)
      if (inode !== undefined) {
        this.inodes.closed(inode)
        if (inode.opens === 0 && inode.hiddenAs !== undefined) await this.removeHidden(inode)
      }
    }
    if (id !== 0) this.ok(id)
  }

  private async removeHidden(inode: Inode): Promise<void> {
    const hidden = inode.hiddenAs
    if (hidden === undefined) return
    inode.hiddenAs = undefined
    this.inodes.unname(hidden)
    await this.fs.unlink(`/${hidden}`).catch((err: unknown) => {
      this.log.error({ volumeId: inode.volumeId, err: errorMessage(err) }, 'deleting an image unlinked while open failed')
    })
  }

  private async unlink(id: number, name: string): Promise<void> {
    const inode = this.inodes.named(name)
    if (inode !== undefined && inode.opens > 0) await this.hide(inode, name)
    else {
      await this.fs.unlink(`/${name}`)
      this.inodes.unname(name)
    }
    this.ok(id)
  }

  /**
   * The kernel lets an unlinked or replaced file live on while it is open;
   * ImageFs knows that as libfuse2's `.fuse_hidden` rename (deleted at the
   * last close), so the same happens here.
   */
  private async hide(inode: Inode, name: string): Promise<void> {
    const hidden = `.fuse_hidden${inode.ino.toString(16).padStart(8, '0')}${(++this.hiddenCount).toString(16).padStart(8, '0')}`
    await this.fs.rename(`/${name}`, `/${hidden}`)
    this.inodes.rename(name, hidden)
    inode.hiddenAs = hidden
  }

  private async rename(id: number, from: string, to: string, flags: number): Promise<void> {
    if ((flags & ~renameNoReplace) !== 0) fail('EINVAL', `rename flags ${flags} are not supported`)
    const target = await this.fs.identify(`/${to}`).catch(() => undefined)
    if (target !== undefined && (flags & renameNoReplace) !== 0) fail('EEXIST', `${to} exists`)
    const replaced = this.inodes.named(to)
    if (target !== undefined && replaced !== undefined && replaced.volumeId === target.volumeId && replaced.opens > 0 && from !== to) {
      await this.hide(replaced, to)
    }
    await this.fs.rename(`/${from}`, `/${to}`)
    this.inodes.rename(from, to)
    this.ok(id)
  }

  /** An open or create, for the metrics and the progress of long copies. */
  private track(fh: number, flags: number, path: string): void {
    if ((flags & accessModeMask) !== constants.O_RDONLY) {
      this.metrics.uploadStarted()
      this.transfers.begin(fh, 'upload', path)
      return
    }
    this.transfers.begin(fh, 'read', path)
    void this.fs.getattr(path).then(stat => { this.transfers.sized(fh, stat.size) }, () => undefined)
  }

  private read(id: number, fh: number, length: number, position: number): void {
    const answered = this.metrics.fuseRequest('read', length)
    this.inFlight.add(id)
    const target = this.replyBuffers.take()
    const send = (views: Buffer[]): void => {
      const bytes = views.reduce((sum, view) => sum + view.length, 0)
      answered(bytes)
      if (bytes > 0) this.transfers.add(fh, bytes)
      this.reply(id, () => { this.native.replyData(id, views) })
      this.replyBuffers.give(target)
    }
    const failed = (err: unknown): void => {
      this.replyBuffers.give(target)
      const errno = this.failure('read', `fh ${fh}`, err)
      answered(errno)
      this.reply(id, () => { this.native.replyErr(id, -errno) })
    }
    try {
      const views = this.fs.readViews(fh, target, Math.min(length, maxRequestBytes), position)
      if (Array.isArray(views)) send(views)
      else views.then(send, failed)
    } catch (err) {
      failed(err)
    }
  }

  private write(id: number, fh: number, position: number, data: Buffer): void {
    const answered = this.metrics.fuseRequest('write', data.length)
    // `data` is libfuse's receive buffer, valid until this reply; the upload copies it into its window.
    this.fs.write(fh, data, data.length, position).then(
      n => {
        answered(n)
        this.transfers.add(fh, n)
        this.reply(id, () => { this.native.replyWrite(id, n) })
      },
      (err: unknown) => {
        const errno = this.failure('write', `fh ${fh}`, err)
        answered(errno)
        this.reply(id, () => { this.native.replyErr(id, -errno) })
      },
    )
  }

  /**
   * The kernel sends an interrupt for any signal, and a program that never
   * expects EINTR from open or read (qemu's timers) would fail on it. So
   * only a caller being killed is answered now; any other signal waits for
   * the real answer, as a local disk would.
   */
  private interrupt(id: number, pid: number): void {
    if (!this.inFlight.has(id) || !beingKilled(pid)) return
    this.metrics.fuseRequest('interrupt')(0)
    // Answered now; the work goes on, and its own answer is dropped as stale.
    this.reply(id, () => { this.native.replyErr(id, errno.EINTR) })
  }

  /** Sends one reply; false when the request was already answered (interrupted) or its caller is gone. */
  private reply(id: number, send: () => unknown): boolean {
    this.inFlight.delete(id)
    try {
      return send() !== false
    } catch (err) {
      if (errorCode(err) !== 'ESTALE') this.log.error({ err: errorMessage(err) }, 'reply failed')
      return false
    }
  }

  private ok(id: number): void {
    this.reply(id, () => { this.native.replyErr(id, 0) })
  }

  /** getxattr/listxattr: size 0 asks how big; too small a buffer is ERANGE. */
  private sized(id: number, value: Buffer, size: number): void {
    if (size === 0) this.reply(id, () => { this.native.replyXattrSize(id, value.length) })
    else if (value.length > size) fail('ERANGE', `value of ${value.length} bytes does not fit in ${size}`)
    else this.reply(id, () => { this.native.replyData(id, value) })
  }

  /** The name's inode, attributes fresh. */
  private async bind(name: string): Promise<Inode> {
    const now = await this.fs.identify(`/${name}`)
    return this.inodes.bind(name, now.volumeId, now.stat, now.sealed)
  }

  private inodeOf(ino: number): Inode {
    const inode = this.inodes.get(ino)
    if (inode === undefined) fail('ESTALE', `inode ${ino} is not known`)
    return inode
  }

  private pathOf(ino: number): string {
    if (ino === rootIno) return '/'
    const name = this.inodeOf(ino).name
    if (name === undefined) fail('ENOENT', `inode ${ino} was unlinked or replaced`)
    return `/${name}`
  }

  /** Attributes of an inode: fresh while its name still leads to its volume, else as last seen. */
  private async attrOf(ino: number): Promise<Attr> {
    if (ino === rootIno) return toAttr(rootIno, await this.fs.getattr('/'))
    const inode = this.inodeOf(ino)
    if (inode.name !== undefined) {
      const now = await this.fs.identify(`/${inode.name}`).catch(() => undefined)
      if (now?.volumeId === inode.volumeId) {
        inode.stat = now.stat
        inode.sealed = now.sealed
      }
    }
    return toAttr(ino, inode.stat)
  }

  private attrTtl(ino: number): number {
    return ino === rootIno || this.inodes.get(ino)?.sealed === true ? this.ttl : 0
  }

  private entryOf(inode: Inode): Entry {
    return [inode.ino, generation, toAttr(inode.ino, inode.stat), this.ttl, inode.sealed ? this.ttl : 0]
  }
}

/** SIGKILL pending for the thread (or its process): it is dying, and will not look at our answer. */
function beingKilled(pid: number): boolean {
  let status: string
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8')
  } catch {
    return true // already gone
  }
  const killBit = 1n << BigInt(os.constants.signals.SIGKILL - 1)
  return [...status.matchAll(/^(?:SigPnd|ShdPnd):\s*([0-9a-f]+)$/gm)].some(m => (BigInt(`0x${m[1] ?? '0'}`) & killBit) !== 0n)
}

const directoryStat: FileStat = { mode: constants.S_IFDIR | 0o755, uid: 0, gid: 0, size: 4096, nlink: 2, blocks: 8, blksize: 4096, mtimeMs: 0 }

function toAttr(ino: number, s: FileStat): Attr {
  return [ino, s.mode, s.nlink, s.uid, s.gid, s.size, s.blocks, s.blksize, s.mtimeMs]
}
