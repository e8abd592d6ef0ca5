import type { Volume } from '../model/volume.js'
import { listAll, type VolumeService } from '../backends/volume-service.js'
import type { Logger } from '../log/logger.js'
import type { Clock } from '../model/clock.js'
import { decodeImage, isImageVolume, type ImageAttributes, type OwnerDefaults } from './metadata.js'
import { fileNameOf } from './names.js'

export interface ImageEntry {
  name: string
  volume: Volume
  attrs: ImageAttributes
}

export interface ImageStoreOptions {
  service: VolumeService
  logger: Logger
  listTtlMs: number
  owner: OwnerDefaults
  clock: Clock
}

/**
 * A listing is trusted for at least this many times as long as it took: the
 * backend's listing grows with the library (one of 300 Cinder volumes is
 * 320 KB of JSON), and a migration's lookups would otherwise have Cinder list
 * thousands of volumes every --list-ttl seconds. So listing takes at most a
 * tenth of the time, and other hosts' changes show within the longer of the two.
 */
export const listingTrustFactor = 10

/**
 * The namespace: file name ↔ image volume. Built from the backend's volume
 * list, trusted for a short TTL (other hosts' changes show within it), and
 * updated in place by our own changes. A change made while a listing is in
 * flight wins over that listing; pinned names (our uploads) are always kept.
 */
export class ImageStore {
  private entries = new Map<string, ImageEntry>()
  private fetchedAt = Number.NEGATIVE_INFINITY
  /** How long the last listing took. */
  private listingMs = 0
  private refreshing: Promise<void> | undefined
  private epoch = 0
  private readonly touched = new Map<string, number>()
  private readonly pinned = new Set<string>()
  private readonly watchers: Array<(name: string) => void> = []
  private readonly log: Logger

  constructor(private readonly options: ImageStoreOptions) {
    this.log = options.logger.child({ component: 'store' })
  }

  async lookup(name: string): Promise<ImageEntry | undefined> {
    await this.fresh()
    return this.entries.get(name)
  }

  async list(): Promise<ImageEntry[]> {
    await this.fresh()
    return [...this.entries.values()]
  }

  /** The entry as we have it, without listing. */
  peek(name: string): ImageEntry | undefined {
    return this.entries.get(name)
  }

  /** The entry that names this volume now, if any (a rename moves it; a listing may replace it). */
  byVolume(volumeId: string): ImageEntry | undefined {
    for (const entry of this.entries.values()) if (entry.volume.id === volumeId) return entry
    return undefined
  }

  /**
   * Changes the entry of a volume in place, under whatever name it has now:
   * the owner of an image's life records each step here, and a step never
   * brings back a name that was renamed or removed meanwhile.
   */
  updateVolume(volumeId: string, change: (entry: ImageEntry) => ImageEntry): void {
    const entry = this.byVolume(volumeId)
    if (entry !== undefined) this.set(change(entry))
  }

  /** Every image volume in the backend, including transient ones (for recovery). */
  async scan(): Promise<Array<{ name: string, volume: Volume, attrs: ImageAttributes }>> {
    const out = []
    for (const volume of await listAll(this.options.service)) {
      const name = fileNameOf(volume.name)
      if (name !== undefined && isImageVolume(volume)) out.push({ name, volume, attrs: decodeImage(volume, this.options.owner) })
    }
    return out
  }

  decode(volume: Volume): ImageAttributes {
    return decodeImage(volume, this.options.owner)
  }

  set(entry: ImageEntry): void {
    this.touch(entry.name)
    this.entries.set(entry.name, entry)
  }

  remove(name: string): void {
    this.touch(name)
    this.entries.delete(name)
    this.pinned.delete(name)
  }

  /** Keeps `name` as we have it across listings (an upload in progress is hidden from listings). */
  pin(name: string): void {
    this.pinned.add(name)
  }

  isPinned(name: string): boolean {
    return this.pinned.has(name)
  }

  unpin(name: string): void {
    this.pinned.delete(name)
  }

  /**
   * Calls `listener` with each name a listing found gone or pointing at
   * another volume (another host's rm or replace), so a FUSE binding that
   * lets the kernel cache names can tell it to drop them.
   */
  watch(listener: (name: string) => void): void {
    this.watchers.push(listener)
  }

  /** Forces the next lookup to list again. */
  invalidate(): void {
    this.fetchedAt = Number.NEGATIVE_INFINITY
  }

  private touch(name: string): void {
    this.touched.set(name, ++this.epoch)
  }

  private async fresh(): Promise<void> {
    const trustedMs = Math.max(this.options.listTtlMs, listingTrustFactor * this.listingMs)
    if (this.options.clock.now() - this.fetchedAt < trustedMs) return
    this.refreshing ??= this.refresh().finally(() => { this.refreshing = undefined })
    await this.refreshing
  }

  private async refresh(): Promise<void> {
    const startEpoch = this.epoch
    const started = this.options.clock.now()
    const listed = await this.scan()
    this.listingMs = this.options.clock.now() - started
    const next = new Map<string, ImageEntry>()
    for (const entry of listed) {
      if (entry.attrs.state !== 'final') continue
      const other = next.get(entry.name)
      if (other === undefined || entry.attrs.generation > other.attrs.generation) next.set(entry.name, entry)
    }
    // Names we changed since the listing began, and pinned names, are kept as we have them.
    const ours = new Map<string, string>()
    const keep = (name: string): void => {
      const current = this.entries.get(name)
      if (current === undefined) {
        next.delete(name)
        return
      }
      next.set(name, current)
      ours.set(current.volume.id, name)
    }
    for (const [name, epoch] of this.touched) if (epoch > startEpoch) keep(name)
    for (const name of this.pinned) keep(name)
    // Such a volume is shown under that name only: a listing that began before
    // a rename (written behind) reached the backend still has its old name.
    for (const [name, entry] of next) {
      const oursAs = ours.get(entry.volume.id)
      if (oursAs !== undefined && oursAs !== name) next.delete(name)
    }
    for (const [name, epoch] of this.touched) {
      if (epoch <= startEpoch) this.touched.delete(name)
    }
    const previous = this.entries
    this.entries = next
    this.fetchedAt = started
    for (const [name, entry] of previous) {
      if (next.get(name)?.volume.id !== entry.volume.id) for (const listener of this.watchers) listener(name)
    }
    this.log.debug({ images: next.size, ms: this.listingMs }, 'listing refreshed')
  }
}
