import { setTimeout as sleep } from 'node:timers/promises'
import type { AttachmentManager, Lease } from '../attachments/attachment-manager.js'
import { GiB } from '../model/volume.js'
import type { VolumeService } from '../backends/volume-service.js'
import { CinderfsError, errorCode, errorMessage, fail } from '../errors/errors.js'
import type { Janitor } from '../janitor/janitor.js'
import type { Logger } from '../log/logger.js'
import type { AlignedBlockPool } from '../memory/aligned-blocks.js'
import { withinRetryWindow } from '../outage/retry-window.js'
import { attributeMetadata, keys } from '../store/metadata.js'
import { Hasher, type Digests } from './hasher.js'
import { addRange, type Range } from './ranges.js'

export interface UploadOptions {
  volumeId: string
  name: string
  capacityGiB: number
  lease: Lease
  service: VolumeService
  attachments: AttachmentManager
  /** Bytes of writes held while the volume grows. */
  writeBuffer: number
  /** Aligned, shared memory for the staging windows (its block size is the window size). */
  chunks: AlignedBlockPool
  /** Recorded while uploading, so recovery on this host knows the volume is its own. */
  host: string
  logger: Logger
  /** Cleanups that fail (detach, delete, seal) are retried there. */
  janitor: Janitor
  /** How long each backend call the upload needs (grow, attach, final metadata) rides out an outage. */
  apiRetryWindowMs: number
}

export interface PendingAttributes {
  mtimeNs?: bigint
  mode?: number
  uid?: number
  gid?: number
}

export interface FinalImage {
  size: number
  digests: Digests
  attrs: Required<PendingAttributes>
}

type State = 'open' | 'finalising' | 'final' | 'aborted'

/**
 * One aligned window of the volume whose writes are gathered in memory: the
 * device gets it in one O_DIRECT write and both hash workers read it in
 * place, so a byte written costs one copy (FUSE buffer → window).
 */
interface Stage {
  block: Buffer
  /** Volume offset of block[0]; a multiple of the window size. */
  start: number
  /** What was written, as offsets into block: sorted, disjoint, merged. */
  ranges: Range[]
  /** Owners until the block may be reused: the device write, and each hashed range. */
  refs: number
}

/** Written bytes between background flushes: a full backend then stops the writer early, not at close. */
const checkpointBytes = 256 * 1024 * 1024
/** Below this much free space an I/O error from the device is taken to mean the backend is full. */
const lowSpaceBytes = 64 * 1024 * 1024
/** Size of a staging window: large device writes, few messages to the hash workers. */
export const uploadWindowBytes = 1024 * 1024
/** Windows on their way to the device at once (the libuv pool has four threads). */
const maxWritesInFlight = 4
/** How long a grown device may take to show its new size (iSCSI rescans, os-brick's LP#1959913). */
const resizeWaitMs = 20_000
const zeroChunk = Buffer.alloc(1024 * 1024)

export function ceilGiB(bytes: number): number {
  return Math.max(1, Math.ceil(bytes / GiB))
}

/**
 * One file being written into a fresh volume. Writes are gathered into
 * aligned windows (Stage) that go to the device, O_DIRECT where it can, as
 * soon as they are full or the writer moves on, a few at a time. A write past
 * the volume's end starts a grow to exactly the GiB it needs; windows wait in
 * a bounded in-memory queue meanwhile, so the writer does not stall on the
 * grow and the final volume is ceil(bytes / GiB) GiB, as Cinder cannot
 * shrink. md5 and sha512 follow in-order writes (holes hash as zeros);
 * anything out of order is hashed by reading the device back at the end.
 * Device errors of a window fail the next write, flush or close.
 */
export class Upload {
  readonly volumeId: string
  name: string
  /** Logical file size. */
  size = 0
  readonly attrs: PendingAttributes = {}
  /** Open handles that may write; finalisation waits for the last. */
  writeHandles = 0
  /** Set when the file was unlinked while open: its data is discarded, not finalised. */
  discarded = false
  private state: State = 'open'
  private finalising: Promise<FinalImage> | undefined
  private sealed = false
  private capacity: number
  private lease: Lease
  private hasher = new Hasher()
  private hashedUpTo = 0
  private hashInOrder = true
  private stage: Stage | undefined
  /** End of the furthest window handed to the device: a window before it may still be on its way. */
  private stagedUpTo = 0
  private readonly writes = new Set<Promise<void>>()
  /** Windows waiting for a grow. */
  private queue: Stage[] = []
  private queuedBytes = 0
  /** Writes, reads, truncates and flushes of this upload run one at a time (they share the open window). */
  private lock: Promise<void> = Promise.resolve()
  private growTargetGiB: number
  private growing: Promise<void> | undefined
  private failure: CinderfsError | undefined
  private bytesWritten = 0
  private sinceCheckpoint = 0
  private checkpointing: Promise<void> | undefined
  private readonly startedAt = Date.now()
  /** When the bytes last changed (ms, as FUSE passes times); the mtime unless one is set after. */
  private modifiedMs = this.startedAt
  private readonly log: Logger

  constructor(private readonly options: UploadOptions) {
    this.volumeId = options.volumeId
    this.name = options.name
    this.capacity = options.capacityGiB * GiB
    this.growTargetGiB = options.capacityGiB
    this.lease = options.lease
    this.log = options.logger.child({ volumeId: options.volumeId, upload: options.name })
  }

  get isOpen(): boolean {
    return this.state === 'open'
  }

  /** Open or being finalised: what it shows (size, mtime) is still the upload's, not the volume's metadata yet. */
  get isLive(): boolean {
    return this.state === 'open' || this.state === 'finalising'
  }

  /** The mtime it shows and will store: the last write or truncate, unless set since. */
  get mtimeNs(): bigint {
    return this.attrs.mtimeNs ?? BigInt(this.modifiedMs) * 1_000_000n
  }

  /**
   * A finalisation is provisional while a handle that can write is still
   * open: a shell's `cmd > file` closes a dup of the file (flush) before cmd
   * writes. A write then reopens the volume for writing; the next last flush
   * finalises again. Hashes come from reading back unless nothing was written.
   */
  async reopen(): Promise<void> {
    if (this.state !== 'final' || this.sealed) fail('EROFS', `${this.name} is not reopenable`)
    await this.backend(() => this.options.service.updateMetadata(this.volumeId, { [keys.state]: 'uploading', [keys.host]: this.options.host }))
    this.lease = await this.backend(() => this.options.attachments.acquire(this.volumeId, 'rw'))
    this.hasher = new Hasher()
    this.hashInOrder = this.size === 0
    this.hashedUpTo = 0
    this.state = 'open'
    this.log.info({ bytes: this.size }, 'finalised image reopened by a writer that still had it open')
  }

  async write(data: Buffer, length: number, position: number): Promise<number> {
    return this.exclusive(async () => {
      this.checkWritable()
      const end = position + length
      this.size = Math.max(this.size, end)
      this.bytesWritten += length
      this.modified()
      // Start growing now, ahead of the window that will need it.
      if (end > this.capacity) this.grow(ceilGiB(end))
      const windowBytes = this.options.chunks.blockSize
      for (let done = 0; done < length;) {
        const at = position + done
        const start = at - (at % windowBytes)
        if (this.stage !== undefined && this.stage.start !== start) await this.submitStage()
        // An abort (unmount, unlink) may have come while this write waited for room.
        this.checkWritable()
        const stage = this.stage ?? await this.openStage(start)
        const from = at - start
        const n = Math.min(length - done, windowBytes - from)
        data.copy(stage.block, from, done, done + n)
        addRange(stage.ranges, from, from + n)
        done += n
        const [only] = stage.ranges
        if (stage.ranges.length === 1 && only !== undefined && only.from === 0 && only.to === windowBytes) await this.submitStage()
      }
      await this.hasher.ready()
      this.checkpoint(length)
      return length
    })
  }

  /** Reads what was written so far (a writer or another reader may look while it uploads). */
  async read(target: Buffer, length: number, position: number): Promise<number> {
    return this.exclusive(async () => {
      this.throwIfFailed()
      await this.drain()
      return this.readDevice(target, length, position)
    })
  }

  private async readDevice(target: Buffer, length: number, position: number): Promise<number> {
    const end = Math.min(position + length, this.size)
    if (end <= position) return 0
    const n = await this.device().read(target, 0, end - position, position)
    // Past the device's end only holes can lie (the size came from a truncate); they read as zeros.
    if (n < end - position) target.fill(0, n, end - position)
    return end - position
  }

  async truncate(newSize: number): Promise<void> {
    await this.exclusive(async () => {
      this.checkWritable()
      if (!Number.isSafeInteger(newSize) || newSize < 0) fail('EINVAL', `bad size ${newSize}`)
      if (newSize > this.capacity) this.grow(ceilGiB(newSize))
      await this.drain()
      if (newSize < this.size) {
        // Cinder cannot shrink: zero the cut-off bytes so a later grow reads zeros, as POSIX says.
        await this.zero(newSize, Math.min(this.size, this.capacity))
        if (newSize < this.hashedUpTo) this.hashInOrder = false
      }
      this.size = newSize
      this.modified()
    })
  }

  /** A size the writer announced (xattr user.cinderfs.size_hint): grow once, now, to fit it. */
  hintSize(bytes: number): void {
    this.checkWritable()
    if (bytes > this.capacity) this.grow(ceilGiB(bytes))
  }

  async fsync(): Promise<void> {
    await this.exclusive(async () => {
      this.throwIfFailed()
      await this.drain()
      await this.deviceFlush()
    })
  }

  /**
   * Marks the finalised volume read-only once no handle can write any more
   * (release). Not at finalisation: a write after a shell's dup close reopens
   * the volume, and Cinder would then attach it read-only for good, since an
   * attachment-create takes the admin metadata readonly='False' that
   * unsetting the flag leaves as true.
   */
  async seal(): Promise<void> {
    if (this.state !== 'final' || this.sealed) return
    this.sealed = true
    const { service, janitor } = this.options
    // The image is complete either way; a seal Cinder refuses now (the volume still attached, an outage) is retried.
    await janitor.attempt({
      volumeId: this.volumeId,
      call: 'seal',
      run: async () => {
        await service.setReadOnly(this.volumeId, true)
        // The host mark stays until here, so recovery can seal an image whose daemon died before this.
        await service.updateMetadata(this.volumeId, { [keys.host]: null })
      },
    })
  }

  /**
   * Flush, hash, detach, then write the final metadata: the
   * last step clears the uploading mark, so a crash anywhere before it leaves
   * a volume that recovery deletes, never one that looks complete.
   */
  async finalise(): Promise<FinalImage> {
    const finalising = this.exclusive(async () => this.runFinalise())
    this.finalising = finalising
    return finalising
  }

  /** Resolves once a finalisation in progress has ended, either way (metadata changes must come after it). */
  async settled(): Promise<void> {
    await this.finalising?.catch(() => undefined)
  }

  private async runFinalise(): Promise<FinalImage> {
    this.checkWritable()
    this.state = 'finalising'
    try {
      await this.drain()
      await this.checkpointing
      if (this.failure !== undefined) throw this.failure
      await this.deviceFlush()
      const digests = await this.digest()
      if (this.capacity > ceilGiB(this.size) * GiB) {
        this.log.warn({ sizeGiB: this.capacity / GiB, bytes: this.size }, 'volume is larger than the image needs (it was truncated down; Cinder cannot shrink)')
      }
      this.lease.release()
      await this.backend(() => this.options.attachments.detach(this.volumeId))
      const attrs: Required<PendingAttributes> = {
        mtimeNs: this.mtimeNs,
        mode: this.attrs.mode ?? 0o644,
        uid: this.attrs.uid ?? 0,
        gid: this.attrs.gid ?? 0,
      }
      await this.backend(() => this.options.service.updateMetadata(this.volumeId, {
        ...attributeMetadata(attrs),
        [keys.imageSize]: String(this.size),
        [keys.md5]: digests.md5,
        [keys.sha512]: digests.sha512,
        [keys.state]: null,
      }))
      this.state = 'final'
      const seconds = Math.max(0.001, (Date.now() - this.startedAt) / 1000)
      this.log.info({ bytes: this.size, written: this.bytesWritten, seconds, mbPerSecond: Math.round(this.bytesWritten / seconds / 1e5) / 10, md5: digests.md5 }, 'upload finished')
      return { size: this.size, digests, attrs }
    } catch (err) {
      this.state = 'open'
      const failure = asFailure(err, 'finalisation failed')
      this.failure = failure
      this.log.error({ err: failure.message, errno: failure.code, requestId: failure.details.requestId }, 'upload failed at finalisation')
      throw failure
    } finally {
      if (this.state === 'final') await this.hasher.close()
    }
  }

  /** Gives up: detaches and deletes the volume. Never throws; logs what it could not clean. */
  async abort(reason: string): Promise<void> {
    if (this.state === 'aborted' || this.state === 'final') return
    this.state = 'aborted'
    this.failure ??= new CinderfsError('EIO', `upload aborted: ${reason}`)
    // What is still in memory goes nowhere now; what is on its way to the device must land before the detach.
    if (this.stage !== undefined) this.release(this.stage)
    this.stage = undefined
    this.dropQueue()
    await this.growing?.catch(() => undefined)
    await this.settleWrites()
    this.log.warn({ reason }, 'upload aborted; deleting its volume')
    await this.hasher.close()
    this.lease.release()
    // A detach that fails is the janitor's already; the delete then waits behind it there.
    await this.options.attachments.detach(this.volumeId).catch(() => undefined)
    await this.options.janitor.attempt({ volumeId: this.volumeId, call: 'delete volume', run: async () => this.options.service.delete(this.volumeId) })
  }

  /** A backend call the upload cannot do without: it retries through a short outage (--api-retry-window). */
  private async backend<T>(call: () => Promise<T>): Promise<T> {
    return withinRetryWindow(this.options.apiRetryWindowMs, call)
  }

  /** A write or truncate: mtime is now (POSIX), whatever was set before. */
  private modified(): void {
    this.modifiedMs = Date.now()
    delete this.attrs.mtimeNs
  }

  private device() {
    return this.lease.device
  }

  throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure
  }

  private checkWritable(): void {
    this.throwIfFailed()
    if (this.state !== 'open') fail('EROFS', `${this.name} is finalised and read-only`, { volumeId: this.volumeId })
  }

  /** The window's ranges join the hash in place, if they continue the bytes hashed so far. */
  private hashStage(stage: Stage): void {
    for (const range of stage.ranges) {
      if (!this.hashInOrder) return
      const position = stage.start + range.from
      if (position < this.hashedUpTo) {
        this.hashInOrder = false
        this.log.debug({ position, hashedUpTo: this.hashedUpTo }, 'out-of-order write; hashes will be computed by reading back')
        return
      }
      this.hasher.zeros(position - this.hashedUpTo)
      stage.refs++
      this.hasher.updateShared(stage.block.subarray(range.from, range.to), range.to - range.from, () => this.release(stage))
      this.hashedUpTo = stage.start + range.to
    }
  }

  /** A window for the bytes at `start`; one the writer comes back to waits for its earlier bytes to land. */
  private async openStage(start: number): Promise<Stage> {
    if (start < this.stagedUpTo) {
      await this.settleWrites()
      this.checkWritable()
    }
    const stage: Stage = { block: this.options.chunks.take(), start, ranges: [], refs: 1 }
    this.stage = stage
    return stage
  }

  /** Hands the open window to the hashers and the device (or the grow queue); waits only for room. */
  private async submitStage(): Promise<void> {
    const stage = this.stage
    if (stage === undefined) return
    this.stage = undefined
    const last = stage.ranges.at(-1)
    if (last === undefined) {
      this.release(stage)
      return
    }
    this.stagedUpTo = Math.max(this.stagedUpTo, stage.start + this.options.chunks.blockSize)
    this.hashStage(stage)
    const end = stage.start + last.to
    if (this.queue.length > 0 || end > this.capacity) {
      this.grow(ceilGiB(end))
      if (this.queuedBytes + stage.block.length <= this.options.writeBuffer) {
        this.queue.push(stage)
        this.queuedBytes += stage.block.length
        return
      }
      while (this.growing !== undefined) await this.growing
      if (this.failure !== undefined) {
        // This window will not be written: its block goes back (the hashers give theirs back when done).
        this.release(stage)
        throw this.failure
      }
    }
    while (this.writes.size >= maxWritesInFlight) await Promise.race(this.writes)
    const write: Promise<void> = this.writeStage(stage).catch((err: unknown) => {
      this.failure ??= asFailure(err, 'writing to the device failed')
      this.log.error({ err: this.failure.message, errno: this.failure.code, position: stage.start }, 'device write failed; the upload fails')
    }).finally(() => { this.writes.delete(write) })
    this.writes.add(write)
  }

  private async writeStage(stage: Stage): Promise<void> {
    try {
      for (const range of stage.ranges) await this.deviceWrite(stage.block, range.from, range.to - range.from, stage.start + range.from)
    } finally {
      this.release(stage)
    }
  }

  private release(stage: Stage): void {
    if (--stage.refs === 0) this.options.chunks.give(stage.block)
  }

  private dropQueue(): void {
    for (const stage of this.queue) this.release(stage)
    this.queue = []
    this.queuedBytes = 0
  }

  /** Until the grow and every window on its way to the device are done (their errors land in this.failure). */
  private async settleWrites(): Promise<void> {
    while (this.growing !== undefined) await this.growing
    while (this.writes.size > 0) await Promise.all(this.writes)
  }

  /** Runs one data-path call at a time. */
  private async exclusive<T>(work: () => Promise<T>): Promise<T> {
    const previous = this.lock
    let done = (): void => undefined
    this.lock = new Promise<void>(resolve => { done = resolve })
    await previous
    try {
      return await work()
    } finally {
      done()
    }
  }

  private async digest(): Promise<Digests> {
    if (this.hashInOrder) {
      if (this.size < this.hashedUpTo) this.hashInOrder = false
      else {
        this.hasher.zeros(this.size - this.hashedUpTo)
        return this.hasher.digest()
      }
    }
    const hasher = new Hasher()
    try {
      const buffer = Buffer.allocUnsafeSlow(4 * 1024 * 1024)
      for (let position = 0; position < this.size; position += buffer.length) {
        const length = Math.min(buffer.length, this.size - position)
        const n = await this.readDevice(buffer, length, position)
        hasher.update(buffer, n)
        await hasher.ready()
      }
      return await hasher.digest()
    } finally {
      await hasher.close()
    }
  }

  private grow(targetGiB: number): void {
    this.growTargetGiB = Math.max(this.growTargetGiB, targetGiB)
    this.growing ??= this.runGrow().finally(() => { this.growing = undefined })
  }

  private async runGrow(): Promise<void> {
    try {
      while (this.capacity < this.growTargetGiB * GiB) await this.backend(() => this.extendTo(this.growTargetGiB))
      for (let next = this.queue.shift(); next !== undefined; next = this.queue.shift()) {
        this.queuedBytes -= next.block.length
        await this.writeStage(next)
      }
    } catch (err) {
      this.failure = asFailure(err, 'growing the volume failed')
      this.dropQueue()
      this.log.error({ err: this.failure.message, errno: this.failure.code, requestId: this.failure.details.requestId, targetGiB: this.growTargetGiB }, 'grow failed; the upload fails (EIO to the writer; its volume is deleted)')
    }
  }

  private async extendTo(sizeGiB: number): Promise<void> {
    const started = Date.now()
    try {
      await this.options.service.extend(this.volumeId, sizeGiB, true)
    } catch (err) {
      if (errorCode(err) !== 'ENOTSUP') throw err
      // No online extend (Cinder before 3.42): detach, extend, attach again.
      this.lease.release()
      await this.options.attachments.detach(this.volumeId)
      await this.options.service.extend(this.volumeId, sizeGiB, false)
      this.lease = await this.options.attachments.acquire(this.volumeId, 'rw')
    }
    const wanted = sizeGiB * GiB
    while (await this.device().refreshSize() < wanted) {
      if (Date.now() - started > resizeWaitMs) fail('EIO', `device ${this.device().path} did not grow to ${sizeGiB} GiB within ${resizeWaitMs / 1000} s`)
      await sleep(100)
    }
    this.capacity = wanted
    this.log.info({ sizeGiB, ms: Date.now() - started }, 'volume grown')
  }

  /** Sends the open window, then waits for the grow and every write to reach the device. */
  private async drain(): Promise<void> {
    await this.submitStage()
    await this.settleWrites()
    if (this.failure !== undefined) throw this.failure
  }

  private async zero(from: number, to: number): Promise<void> {
    for (let position = from; position < to; position += zeroChunk.length) {
      await this.deviceWrite(zeroChunk, 0, Math.min(zeroChunk.length, to - position), position)
    }
  }

  private async deviceWrite(data: Buffer, offset: number, length: number, position: number): Promise<void> {
    try {
      await this.device().write(data, offset, length, position)
    } catch (err) {
      throw await this.explain(err)
    }
  }

  private async deviceFlush(): Promise<void> {
    try {
      await this.device().flush()
    } catch (err) {
      throw await this.explain(err)
    }
  }

  /** Starts a background flush every checkpointBytes; its failure fails the next write. */
  private checkpoint(length: number): void {
    this.sinceCheckpoint += length
    if (this.sinceCheckpoint < checkpointBytes || this.checkpointing !== undefined) return
    this.sinceCheckpoint = 0
    this.checkpointing = this.deviceFlush().catch((err: unknown) => {
      this.failure ??= asFailure(err, 'flushing the device failed')
      this.log.error({ err: this.failure.message, errno: this.failure.code }, 'device flush failed; the upload fails')
    }).finally(() => { this.checkpointing = undefined })
  }

  /**
   * Block devices report a full thin backend (a loop file on a full disk, a
   * full thin pool) as EIO. When the backend says it is out of space, tell
   * the writer ENOSPC, which is what happened.
   */
  private async explain(err: unknown): Promise<CinderfsError> {
    const failure = asFailure(err, `I/O on ${this.device().path} failed`)
    if (failure.code !== 'EIO') return failure
    const capacity = await this.options.service.capacity().catch(() => undefined)
    if (capacity === undefined || capacity.freeBytes >= lowSpaceBytes) return failure
    return new CinderfsError('ENOSPC', `the backend is out of space (${capacity.freeBytes} bytes free): ${failure.message}`, { volumeId: this.volumeId }, { cause: err })
  }
}

function asFailure(err: unknown, context: string): CinderfsError {
  if (err instanceof CinderfsError) return err
  const code = errorCode(err)
  const known = code === 'ENOSPC' || code === 'EDQUOT' || code === 'EIO' || code === 'EROFS' || code === 'EFBIG' ? code : 'EIO'
  return new CinderfsError(known, `${context}: ${errorMessage(err)}`, {}, { cause: err })
}
