import type { AlignedBlockPool } from '../memory/aligned-blocks.js'
import { addRange, type Range } from './ranges.js'

/**
 * One aligned window of the volume whose writes are gathered in memory: the
 * device gets it in one O_DIRECT write and both hash workers read it in
 * place, so a byte written costs one copy (FUSE buffer → window).
 */
export interface Window {
  readonly block: Buffer
  /** Volume offset of block[0]; a multiple of the window size. */
  readonly start: number
  /** What was written, as offsets into block: sorted, disjoint, merged. */
  readonly ranges: Range[]
}

/** Where the windows go: the volume as it is now, and how it grows. */
export interface StagingTarget {
  /** Bytes the volume holds now; a window reaching past it waits for a grow. */
  readonly capacity: number
  /** Makes the volume hold at least `bytes`; resolves when it does (rejects when it cannot). */
  ensure(bytes: number): Promise<void>
  write(data: Buffer, offset: number, length: number, position: number): Promise<void>
}

export interface StagingOptions {
  chunks: AlignedBlockPool
  /** Bytes of windows held while the volume grows. */
  writeBuffer: number
  target: StagingTarget
  /** A window is about to be written; `retain` keeps its block until the matching `release`. */
  onSubmit(window: Window, retain: () => () => void): void
  /** A device write or grow failed: the upload fails with this. */
  onFailure(err: unknown, context: string): void
}

/** Windows on their way to the device at once (the libuv pool has four threads). */
const maxWritesInFlight = 4

interface Stage extends Window {
  /** Owners until the block may be reused: the device write, and each hashed range. */
  refs: number
}

/**
 * Gathers writes into aligned windows and sends each to the device as soon as
 * it is full or the writer moves on, a few at a time. A window past the
 * volume's end waits in a bounded queue while the target grows, so the writer
 * does not stall on the grow; past the bound it waits for the grow.
 *
 * INVARIANT: every block taken from `chunks` is given back exactly once, when
 * its last owner (open window, device write, hash range, queue) lets go.
 */
export class StagingWindows {
  private stage: Stage | undefined
  /** End of the furthest window handed on: a window before it may still be on its way to the device. */
  private stagedUpTo = 0
  private readonly writes = new Set<Promise<void>>()
  private queue: Stage[] = []
  private queuedBytes = 0
  /** The grow the queue waits for, then the queue's own writes. */
  private growing: Promise<void> | undefined
  /** Bytes the volume must hold once the grow in progress is done. */
  private growTarget = 0

  constructor(private readonly o: StagingOptions) {}

  /** Copies `length` bytes at `position` into windows; `checkAlive` throws if the upload failed while waiting for room. */
  async copyIn(data: Buffer, length: number, position: number, checkAlive: () => void): Promise<void> {
    const windowBytes = this.o.chunks.blockSize
    for (let done = 0; done < length;) {
      const at = position + done
      const start = at - (at % windowBytes)
      if (this.stage !== undefined && this.stage.start !== start) await this.submit()
      checkAlive()
      const stage = this.stage ?? await this.open(start, checkAlive)
      const from = at - start
      const n = Math.min(length - done, windowBytes - from)
      data.copy(stage.block, from, done, done + n)
      addRange(stage.ranges, from, from + n)
      done += n
      const [only] = stage.ranges
      if (stage.ranges.length === 1 && only !== undefined && only.from === 0 && only.to === windowBytes) await this.submit()
    }
  }

  /** Hands the open window on (device or grow queue); waits only for room. */
  async submit(): Promise<void> {
    const stage = this.stage
    if (stage === undefined) return
    this.stage = undefined
    const last = stage.ranges.at(-1)
    if (last === undefined) {
      this.release(stage)
      return
    }
    this.stagedUpTo = Math.max(this.stagedUpTo, stage.start + this.o.chunks.blockSize)
    this.o.onSubmit(stage, () => {
      stage.refs++
      return () => this.release(stage)
    })
    const end = stage.start + last.to
    if (this.queue.length > 0 || end > this.o.target.capacity) {
      this.startGrow(end)
      if (this.queuedBytes + stage.block.length <= this.o.writeBuffer) {
        this.queue.push(stage)
        this.queuedBytes += stage.block.length
        return
      }
      while (this.growing !== undefined) await this.growing
      if (end > this.o.target.capacity) {
        // The grow failed (onFailure has it): this window will not be written either.
        this.release(stage)
        return
      }
    }
    while (this.writes.size >= maxWritesInFlight) await Promise.race(this.writes)
    const write: Promise<void> = this.writeStage(stage)
      .catch((err: unknown) => { this.o.onFailure(err, 'writing to the device failed') })
      .finally(() => { this.writes.delete(write) })
    this.writes.add(write)
  }

  /** Starts growing ahead of need (a write or truncate past the end, a size hint). */
  reserve(bytes: number): void {
    if (bytes > this.o.target.capacity) this.startGrow(bytes)
  }

  /** Until the grow and every window on its way to the device are done (failures went to onFailure). */
  async settle(): Promise<void> {
    while (this.growing !== undefined) await this.growing
    while (this.writes.size > 0) await Promise.all(this.writes)
  }

  /** Sends the open window, then settles. */
  async drain(): Promise<void> {
    await this.submit()
    await this.settle()
  }

  /** Gives up what is only in memory (abort); what is on its way to the device is left to land. */
  drop(): void {
    if (this.stage !== undefined) this.release(this.stage)
    this.stage = undefined
    this.dropQueue()
  }

  /** A window the writer comes back to waits for its earlier bytes to land. */
  private async open(start: number, checkAlive: () => void): Promise<Stage> {
    if (start < this.stagedUpTo) {
      await this.settle()
      checkAlive()
    }
    const stage: Stage = { block: this.o.chunks.take(), start, ranges: [], refs: 1 }
    this.stage = stage
    return stage
  }

  private startGrow(bytes: number): void {
    this.growTarget = Math.max(this.growTarget, bytes)
    this.growing ??= this.grow().finally(() => { this.growing = undefined })
  }

  private async grow(): Promise<void> {
    try {
      while (this.o.target.capacity < this.growTarget) await this.o.target.ensure(this.growTarget)
      for (let next = this.queue.shift(); next !== undefined; next = this.queue.shift()) {
        this.queuedBytes -= next.block.length
        await this.writeStage(next)
      }
    } catch (err) {
      this.dropQueue()
      this.o.onFailure(err, 'growing the volume failed')
    }
  }

  private async writeStage(stage: Stage): Promise<void> {
    try {
      for (const range of stage.ranges) await this.o.target.write(stage.block, range.from, range.to - range.from, stage.start + range.from)
    } finally {
      this.release(stage)
    }
  }

  private release(stage: Stage): void {
    if (--stage.refs === 0) this.o.chunks.give(stage.block)
  }

  private dropQueue(): void {
    for (const stage of this.queue) this.release(stage)
    this.queue = []
    this.queuedBytes = 0
  }
}
