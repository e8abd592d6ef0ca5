import { LRUCache } from 'lru-cache'
import { CinderfsError } from '../errors/errors.js'
import { AlignedBlockPool } from '../memory/aligned-blocks.js'

/** Where blocks come from: one attached, immutable image. */
export interface BlockSource {
  /** Cache key prefix; the volume id, since a finalised image never changes. */
  readonly key: string
  /** Image size in bytes; nothing at or past it is read. */
  readonly size: number
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<number>
}

/** Per-open-file readahead state: how far a sequential reader has come and how far we look ahead. */
export interface ReadStream {
  nextPosition: number
  windowBlocks: number
}

export function newReadStream(): ReadStream {
  return { nextPosition: 0, windowBlocks: 0 }
}

export interface BlockCacheOptions {
  budgetBytes: number
  blockSize: number
  readaheadBytes: number
}

export interface BlockCacheStats {
  hits: number
  misses: number
  deviceReads: number
  deviceBytes: number
  prefetches: number
  /** Blocks dropped: LRU eviction, drop-behind, a deleted image's. */
  evictions: number
  cachedBytes: number
}

/**
 * The kernel's readahead requests reach libfuse's threads concurrently and
 * arrive out of order: in a cold `dd` about a third of the 128 KiB reads came
 * swapped with a neighbour. A request this far behind a stream is a late one,
 * not a new random reader; and drop-behind keeps this much behind the reader.
 */
const reorderSlack = 1024 * 1024

type Waiter = (block: Buffer | undefined, err?: unknown) => void

/**
 * LRU of fixed-size blocks with a byte budget. A miss reads one whole block
 * from the device, once however many readers want it (waiters join the read
 * in flight). Sequential readers get a readahead window that doubles up to
 * the configured limit. Everything a reader gets is copied out synchronously
 * in the callback that produced it, so evicted buffers can be reused at once.
 */
export class BlockCache {
  private readonly blockSize: number
  private readonly budgetBytes: number
  private readonly maxWindowBlocks: number
  private readonly lru: LRUCache<string, Buffer>
  private readonly inflight = new Map<string, Waiter[]>()
  /** Every block's memory: aligned, so devices can read into it with O_DIRECT, and reused. */
  private readonly pool: AlignedBlockPool
  private inflightBlocks = 0
  private readonly maxInflightBlocks: number
  readonly stats: BlockCacheStats = { hits: 0, misses: 0, deviceReads: 0, deviceBytes: 0, prefetches: 0, evictions: 0, cachedBytes: 0 }

  constructor(options: BlockCacheOptions) {
    this.blockSize = options.blockSize
    this.budgetBytes = options.budgetBytes
    this.maxWindowBlocks = Math.max(1, Math.floor(options.readaheadBytes / options.blockSize))
    const budgetBlocks = Math.floor(options.budgetBytes / options.blockSize)
    this.pool = new AlignedBlockPool(options.blockSize)
    // In-flight blocks are not in the LRU yet; bound them so the budget holds.
    this.maxInflightBlocks = Math.max(2, Math.min(this.maxWindowBlocks * 2, budgetBlocks >> 2))
    this.lru = new LRUCache<string, Buffer>({
      maxSize: options.budgetBytes,
      sizeCalculation: () => this.blockSize,
      dispose: block => {
        this.stats.evictions++
        this.stats.cachedBytes -= this.blockSize
        this.pool.give(block)
      },
    })
  }

  /**
   * Copies `length` bytes at `position` of `source` into `target`. Returns the
   * byte count directly when every block is cached (the FUSE reply can then go
   * out in the same tick), else a promise of it.
   */
  read(source: BlockSource, target: Buffer, length: number, position: number, stream?: ReadStream): number | Promise<number> {
    const end = Math.min(position + length, source.size)
    if (end <= position) return 0
    if (stream !== undefined) this.readahead(source, stream, position, end)
    const first = Math.floor(position / this.blockSize)
    const last = Math.floor((end - 1) / this.blockSize)
    if (this.allCached(source, first, last)) {
      this.stats.hits++
      for (let index = first; index <= last; index++) {
        const block = this.lru.get(blockKey(source, index))
        if (block !== undefined) this.copyOut(block, index, target, position, end)
      }
      return end - position
    }
    this.stats.misses++
    return new Promise<number>((resolve, reject) => {
      let pending = last - first + 1
      let failed = false
      for (let index = first; index <= last; index++) {
        this.withBlock(source, index, (block, err) => {
          if (failed) return
          if (block === undefined) {
            failed = true
            reject(err instanceof Error ? err : new CinderfsError('EIO', `read of block ${index} of ${source.key} failed`))
            return
          }
          this.copyOut(block, index, target, position, end)
          if (--pending === 0) resolve(end - position)
        })
      }
    })
  }

  /**
   * As read, but a hit comes back as views of the cached blocks, not copied:
   * the FUSE reply sends them to the kernel as they are. The views are only
   * good until this tick ends (an evicted block's memory is reused). A miss
   * is copied into `target` as read does.
   */
  views(source: BlockSource, target: Buffer, length: number, position: number, stream?: ReadStream): Buffer[] | Promise<Buffer[]> {
    const end = Math.min(position + length, source.size)
    const first = Math.floor(position / this.blockSize)
    const last = Math.floor((end - 1) / this.blockSize)
    if (end <= position || !this.allCached(source, first, last)) {
      const copied = this.read(source, target, length, position, stream)
      return typeof copied === 'number' ? [target.subarray(0, copied)] : copied.then(n => [target.subarray(0, n)])
    }
    if (stream !== undefined) this.readahead(source, stream, position, end)
    this.stats.hits++
    const out: Buffer[] = []
    for (let index = first; index <= last; index++) {
      const block = this.lru.get(blockKey(source, index))
      const blockStart = index * this.blockSize
      if (block !== undefined) out.push(block.subarray(Math.max(position, blockStart) - blockStart, Math.min(end, blockStart + block.length) - blockStart))
    }
    return out
  }

  /** Drops every block of one image (after it was deleted). */
  forget(sourceKey: string): void {
    const prefix = `${sourceKey}:`
    for (const key of [...this.lru.keys()]) {
      if (key.startsWith(prefix)) this.lru.delete(key)
    }
  }

  private allCached(source: BlockSource, first: number, last: number): boolean {
    for (let index = first; index <= last; index++) {
      if (!this.lru.has(blockKey(source, index))) return false
    }
    return true
  }

  private copyOut(block: Buffer, index: number, target: Buffer, position: number, end: number): void {
    const blockStart = index * this.blockSize
    const from = Math.max(position, blockStart)
    const to = Math.min(end, blockStart + block.length)
    if (to > from) block.copy(target, from - position, from - blockStart, to - blockStart)
  }

  /** Calls `use` with the block, now if cached, else when the (shared) device read finishes. */
  private withBlock(source: BlockSource, index: number, use: Waiter): void {
    const key = blockKey(source, index)
    const cached = this.lru.get(key)
    if (cached !== undefined) return use(cached)
    const waiters = this.inflight.get(key)
    if (waiters !== undefined) {
      waiters.push(use)
      return
    }
    this.fetch(source, index, key, [use])
  }

  private fetch(source: BlockSource, index: number, key: string, waiters: Waiter[]): void {
    this.inflight.set(key, waiters)
    this.inflightBlocks++
    const start = index * this.blockSize
    const length = Math.min(this.blockSize, source.size - start)
    const buffer = this.pool.take()
    this.stats.deviceReads++
    source.read(buffer, 0, length, start).then(n => {
      if (n !== length) throw new CinderfsError('EIO', `short read from ${source.key}: ${n} of ${length} bytes at ${start}`)
      return buffer.subarray(0, n)
    }).then(block => {
      this.stats.deviceBytes += block.length
      this.settle(key, block)
      this.lru.set(key, block)
      this.stats.cachedBytes += this.blockSize
    }, (err: unknown) => {
      this.pool.give(buffer)
      this.settle(key, undefined, err)
    })
  }

  private settle(key: string, block: Buffer | undefined, err?: unknown): void {
    const waiters = this.inflight.get(key) ?? []
    this.inflight.delete(key)
    this.inflightBlocks--
    for (const waiter of waiters) waiter(block, err)
  }

  private readahead(source: BlockSource, stream: ReadStream, position: number, end: number): void {
    const ahead = position - stream.nextPosition
    // Overtaken by its successors: the stream goes on as it was.
    if (ahead < 0 && -ahead <= reorderSlack) return
    stream.nextPosition = end
    // In order, or one request ahead of one still on its way; anything else is a new (random) reader.
    if (ahead < 0 || ahead > end - position) {
      stream.windowBlocks = 0
      return
    }
    // Drop-behind: a sequential reader of an image larger than the budget would
    // evict its own blocks before it could re-read them, and every block would
    // be fresh memory (first-touch page faults dominated cold-read CPU). So when
    // the reader enters a new block, the block reorderSlack behind it goes back
    // to the free list and the next device read reuses its memory.
    if (source.size > this.budgetBytes && position % this.blockSize < end - position) {
      const behind = Math.floor((position - reorderSlack) / this.blockSize) - 1
      if (behind >= 0) this.lru.delete(blockKey(source, behind))
    }
    stream.windowBlocks = Math.min(this.maxWindowBlocks, Math.max(2, stream.windowBlocks * 2))
    const from = Math.floor((end - 1) / this.blockSize) + 1
    const to = Math.min(from + stream.windowBlocks, Math.ceil(source.size / this.blockSize))
    for (let index = from; index < to && this.inflightBlocks < this.maxInflightBlocks; index++) {
      const key = blockKey(source, index)
      if (this.lru.has(key) || this.inflight.has(key)) continue
      this.stats.prefetches++
      this.fetch(source, index, key, [])
    }
  }
}

function blockKey(source: BlockSource, index: number): string {
  return `${source.key}:${index}`
}
