import path from 'node:path'

/** [ino, mode, nlink, uid, gid, size, blocks, blksize, mtimeMs] */
export type Attr = [number, number, number, number, number, number, number, number, number]
/** [ino (0: none), generation, attr, entryTimeout, attrTimeout] */
export type Entry = [number, number, Attr | null, number, number]

/** Open flags of replyOpen/replyCreate. */
export const openFlags = { directIo: 1, keepCache: 2 } as const

/**
 * One request from the kernel, as native/fuse3 hands it over: `id` is what
 * a reply names (0 for events that take none: forget, interrupt, exit).
 * `a`, `b`, `name`, `name2` and `data` mean what each op says in fuse3.c.
 */
export type Fuse3Handler = (op: string, id: number, ino: number, a: number, b: number, fh: number, name: string | null, name2: string | null, data: Buffer | number[] | undefined) => void

/** native/fuse3's exports. Replies throw (code ESTALE) when their request was already answered. */
export interface Fuse3Native {
  mount(mountpoint: string, options: string, handler: Fuse3Handler, maxThreads: number): void
  unmount(): void
  close(): void
  replyErr(id: number, errno: number): void
  replyEntry(id: number, entry: Entry): void
  replyAttr(id: number, attr: Attr, timeout: number): void
  /** False when the caller is gone: the handle will never be released by the kernel. */
  replyOpen(id: number, fh: number, flags: number): boolean
  replyCreate(id: number, entry: Entry, fh: number, flags: number): boolean
  replyData(id: number, data: Buffer | Buffer[]): void
  replyWrite(id: number, count: number): void
  replyXattrSize(id: number, size: number): void
  replyStatfs(id: number, values: [number, number, number, number, number, number, number, number]): void
  /** Entries [name, nextOffset, entry]; returns how many fitted in `size` bytes. */
  replyDirectory(id: number, size: number, plus: boolean, entries: Array<[string, number, Entry]>): number
  /** Drops the kernel's cached `name` under `ino`, or (name null) the inode's cached pages and attributes. */
  invalidate(ino: number, name: string | null): void
}

let loaded: Fuse3Native | undefined

/** native/fuse3, built by scripts/setup; loaded only when the fuse3 binding is used. */
export function loadFuse3(): Fuse3Native {
  loaded ??= require(path.join(__dirname, '..', '..', '..', 'native', 'fuse3', 'build', 'Release', 'cinderfs_fuse3.node')) as Fuse3Native
  return loaded
}
