import type { FileStat } from '../fs/types.js'

/** FUSE's inode number of the mount's root. */
export const rootIno = 1

/**
 * Inode numbers are never reused while mounted (a counter that would take
 * centuries to pass 2^53), so one generation serves every inode.
 */
export const generation = 1

export interface Inode {
  readonly ino: number
  /** One inode per volume: a name that comes to mean another volume gets another inode. */
  readonly volumeId: string
  /** The name the kernel knows it by; undefined once that name is gone or means another volume. */
  name: string | undefined
  /** Lookups the kernel holds (each lookup/create/readdirplus entry adds one, forget takes them back). */
  lookups: number
  /** Open file handles on it. */
  opens: number
  /** Last attributes seen: what a nameless inode (unlinked, replaced) still reports. */
  stat: FileStat
  sealed: boolean
  /** Set when it was unlinked or replaced while open: the name it hides under until its last close. */
  hiddenAs?: string
}

/**
 * The superblock's inode table for the libfuse3 binding. Inodes belong to
 * volumes, not names: rsync's rename over an image, or another host
 * replacing it, leaves the kernel's cached pages on the old volume's inode,
 * where nothing can reach them by the name any more. An inode lives while
 * the kernel holds lookups on it or a file is open on it.
 */
export class InodeTable {
  private readonly byIno = new Map<number, Inode>()
  private readonly byVolume = new Map<string, Inode>()
  private readonly byName = new Map<string, Inode>()
  private next = rootIno + 1

  get(ino: number): Inode | undefined {
    return this.byIno.get(ino)
  }

  /** The inode the kernel may have cached under `name`. */
  named(name: string): Inode | undefined {
    return this.byName.get(name)
  }

  get size(): number {
    return this.byIno.size
  }

  /** The inode of `volumeId`, now known as `name` (made if new). Takes no lookup. */
  bind(name: string, volumeId: string, stat: FileStat, sealed: boolean): Inode {
    let inode = this.byVolume.get(volumeId)
    if (inode === undefined) {
      inode = { ino: this.next++, volumeId, name: undefined, lookups: 0, opens: 0, stat, sealed }
      this.byIno.set(inode.ino, inode)
      this.byVolume.set(volumeId, inode)
    }
    inode.stat = stat
    inode.sealed = sealed
    if (inode.name !== name) {
      // Renamed elsewhere (another host): its old name no longer leads here.
      if (inode.name !== undefined && this.byName.get(inode.name) === inode) this.byName.delete(inode.name)
      this.unname(name)
      inode.name = name
      this.byName.set(name, inode)
    }
    return inode
  }

  /** `name` no longer leads to the inode that had it (unlinked, replaced, or gone on another host). */
  unname(name: string): Inode | undefined {
    const inode = this.byName.get(name)
    if (inode === undefined) return undefined
    this.byName.delete(name)
    inode.name = undefined
    this.dropIfUnused(inode)
    return inode
  }

  /** Our own rename: the inode keeps its number under the new name; the one it replaced loses the name. */
  rename(from: string, to: string): void {
    const inode = this.byName.get(from)
    this.unname(to)
    if (inode === undefined) return
    this.byName.delete(from)
    inode.name = to
    this.byName.set(to, inode)
  }

  lookedUp(inode: Inode, count = 1): void {
    inode.lookups += count
  }

  forget(ino: number, count: number): void {
    const inode = this.byIno.get(ino)
    if (inode === undefined) return
    inode.lookups = Math.max(0, inode.lookups - count)
    this.dropIfUnused(inode)
  }

  opened(inode: Inode): void {
    inode.opens++
  }

  closed(inode: Inode): void {
    inode.opens = Math.max(0, inode.opens - 1)
    this.dropIfUnused(inode)
  }

  /** An inode nobody references any more (e.g. made for a readdirplus entry that did not fit). */
  dropIfUnused(inode: Inode): void {
    if (inode.lookups > 0 || inode.opens > 0) return
    this.byIno.delete(inode.ino)
    if (this.byVolume.get(inode.volumeId) === inode) this.byVolume.delete(inode.volumeId)
    if (inode.name !== undefined && this.byName.get(inode.name) === inode) this.byName.delete(inode.name)
  }
}
