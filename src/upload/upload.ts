import { CinderfsError, fail } from '../errors/errors.js'
import type { Logger } from '../log/logger.js'
import type { AlignedBlockPool } from '../memory/aligned-blocks.js'
import { Serial } from '../system/serial.js'
import { asFailure, type GrowableVolume } from './growth.js'
import { Hasher, type Digests } from './hasher.js'
import { StagingWindows, type Window } from './staging.js'

export interface UploadOptions {
  volumeId: string
  /** For logs only: the image's name when the upload started. */
  name: string
  /** The volume, attached read-write. */
  volume: GrowableVolume
  /** Bytes of writes held while the volume grows. */
  writeBuffer: number
  /** Aligned, shared memory for the staging windows (its block size is the window size). */
  chunks: AlignedBlockPool
  logger: Logger
}

/** What an upload produced: its owner records it as the image's metadata. */
export interface UploadResult {
  size: number
  /** The volume's size now (it grew to fit). */
  sizeGiB: number
  digests: Digests
  /** When the bytes last changed: the mtime, unless one was set after. */
  modifiedNs: bigint
}

/**
 * open: accepting writes. finishing: flushing and hashing. finished: complete
 * on the device (reopenable by its owner). closed: attachment let go
 * (sealed, or aborted).
 */
type State = 'open' | 'finishing' | 'finished' | 'closed'

/** Written bytes between background flushes: a full backend then stops the writer early, not at close. */
const checkpointBytes = 256 * 1024 * 1024
/** Size of a staging window: large device writes, few messages to the hash workers. */
export const uploadWindowBytes = 1024 * 1024
const zeroChunk = Buffer.alloc(1024 * 1024)

/**
 * The bytes of one file being written into its volume: staging windows
 * (staging.ts) on a volume that grows (growth.ts), md5 and sha512 of the
 * bytes, and a background flush every checkpointBytes. md5 and sha512 follow
 * in-order writes (holes hash as zeros); anything out of order is hashed by
 * reading the device back at the end. A device error fails the next write,
 * flush or finish. It knows nothing of metadata: finish() returns what it
 * produced and the image's owner records it.
 */
export class Upload {
  readonly volumeId: string
  /** Logical file size. */
  size = 0
  private state: State = 'open'
  private finishing: Promise<UploadResult> | undefined
  private hasher = new Hasher()
  private hashedUpTo = 0
  private hashInOrder = true
  private readonly windows: StagingWindows
  /** Writes, reads, truncates and flushes run one at a time (they share the open window). */
  private readonly lock = new Serial()
  private failure: CinderfsError | undefined
  private bytesWritten = 0
  private sinceCheckpoint = 0
  private checkpointing: Promise<void> | undefined
  private startedAt = Date.now()
  /** When the bytes last changed (ms, as FUSE passes times). */
  private modifiedMs = this.startedAt
  private readonly log: Logger

  constructor(private readonly o: UploadOptions) {
    this.volumeId = o.volumeId
    this.log = o.logger.child({ volumeId: o.volumeId, upload: o.name })
    this.windows = new StagingWindows({
      chunks: o.chunks,
      writeBuffer: o.writeBuffer,
      target: o.volume,
      onSubmit: (window, retain) => { this.hashWindow(window, retain) },
      onFailure: (err, context) => { this.failWith(err, context) },
    })
  }

  get isOpen(): boolean {
    return this.state === 'open'
  }

  get modifiedNs(): bigint {
    return BigInt(this.modifiedMs) * 1_000_000n
  }

  async write(data: Buffer, length: number, position: number): Promise<number> {
    return this.exclusive(async () => {
      this.checkWritable()
      const end = position + length
      this.size = Math.max(this.size, end)
      this.bytesWritten += length
      this.modifiedMs = Date.now()
      // Start growing now, ahead of the window that will need it.
      this.windows.reserve(end)
      await this.windows.copyIn(data, length, position, () => { this.checkWritable() })
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

  async truncate(newSize: number): Promise<void> {
    await this.exclusive(async () => {
      this.checkWritable()
      if (!Number.isSafeInteger(newSize) || newSize < 0) fail('EINVAL', `bad size ${newSize}`)
      this.windows.reserve(newSize)
      await this.drain()
      if (newSize < this.size) {
        // Cinder cannot shrink: zero the cut-off bytes so a later grow reads zeros, as POSIX says.
        await this.zero(newSize, Math.min(this.size, this.o.volume.capacity))
        if (newSize < this.hashedUpTo) this.hashInOrder = false
      }
      this.size = newSize
      this.modifiedMs = Date.now()
    })
  }

  /** A size the writer announced (xattr user.cinderfs.size_hint): grow once, now, to fit it. */
  hintSize(bytes: number): void {
    this.checkWritable()
    this.windows.reserve(bytes)
  }

  async fsync(): Promise<void> {
    await this.exclusive(async () => {
      this.throwIfFailed()
      await this.drain()
      await this.o.volume.flush()
    })
  }

  /** Everything written reaches the device, durably, and is hashed. The attachment stays (a reopen may follow). */
  async finish(): Promise<UploadResult> {
    const finishing = this.exclusive(async () => this.runFinish())
    this.finishing = finishing
    return finishing
  }

  /** Resolves once a finish in progress has ended, either way. */
  async settled(): Promise<void> {
    await this.finishing?.catch(() => undefined)
  }

  /** A finished upload takes writes again (a reopen inside the seal delay); hashes are computed anew. */
  reopen(): void {
    if (this.state !== 'finished') fail('EROFS', `upload of ${this.volumeId} cannot be reopened (${this.state})`, { volumeId: this.volumeId })
    this.hasher = new Hasher()
    this.hashInOrder = this.size === 0
    this.hashedUpTo = 0
    this.bytesWritten = 0
    this.startedAt = Date.now()
    this.state = 'open'
  }

  /** Lets go of the attachment once the image is complete (sealed). */
  async close(): Promise<void> {
    if (this.state === 'closed') return
    this.state = 'closed'
    await this.hasher.close()
    this.o.volume.release()
  }

  /** Gives up: what is in memory goes nowhere, what is on its way lands, then the attachment is let go. Never throws. */
  async abort(reason: string): Promise<void> {
    if (this.state === 'closed') return
    this.state = 'closed'
    this.failure ??= new CinderfsError('EIO', `upload aborted: ${reason}`)
    this.windows.drop()
    await this.windows.settle()
    this.log.warn({ reason }, 'upload aborted')
    await this.hasher.close()
    this.o.volume.release()
  }

  throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure
  }

  private async runFinish(): Promise<UploadResult> {
    this.checkWritable()
    this.state = 'finishing'
    try {
      await this.drain()
      await this.checkpointing
      this.throwIfFailed()
      await this.o.volume.flush()
      const digests = await this.digest()
      await this.hasher.close()
      this.state = 'finished'
      const seconds = Math.max(0.001, (Date.now() - this.startedAt) / 1000)
      this.log.info({ bytes: this.size, written: this.bytesWritten, seconds, mbPerSecond: Math.round(this.bytesWritten / seconds / 1e5) / 10, md5: digests.md5 }, 'upload finished')
      return { size: this.size, sizeGiB: this.o.volume.sizeGiB, digests, modifiedNs: this.modifiedNs }
    } catch (err) {
      this.state = 'open'
      this.failWith(err, 'finalisation failed')
      this.log.error({ err: this.failure?.message, errno: this.failure?.code }, 'upload failed at finalisation')
      throw this.failure
    }
  }

  private failWith(err: unknown, context: string): void {
    if (this.failure !== undefined) return
    this.failure = asFailure(err, context)
    this.log.error({ err: this.failure.message, errno: this.failure.code }, `${context}; the upload fails`)
  }

  private checkWritable(): void {
    this.throwIfFailed()
    if (this.state !== 'open') fail('EROFS', `${this.volumeId} is finalised and read-only`, { volumeId: this.volumeId })
  }

  private async drain(): Promise<void> {
    await this.windows.drain()
    this.throwIfFailed()
  }

  private async readDevice(target: Buffer, length: number, position: number): Promise<number> {
    const end = Math.min(position + length, this.size)
    if (end <= position) return 0
    const n = await this.o.volume.read(target, end - position, position)
    // Past the device's end only holes can lie (the size came from a truncate); they read as zeros.
    if (n < end - position) target.fill(0, n, end - position)
    return end - position
  }

  /** The window's ranges join the hash in place, if they continue the bytes hashed so far. */
  private hashWindow(window: Window, retain: () => () => void): void {
    for (const range of window.ranges) {
      if (!this.hashInOrder) return
      const position = window.start + range.from
      if (position < this.hashedUpTo) {
        this.hashInOrder = false
        this.log.debug({ position, hashedUpTo: this.hashedUpTo }, 'out-of-order write; hashes will be computed by reading back')
        return
      }
      this.hasher.zeros(position - this.hashedUpTo)
      this.hasher.updateShared(window.block.subarray(range.from, range.to), range.to - range.from, retain())
      this.hashedUpTo = window.start + range.to
    }
  }

  /** Runs one data-path call at a time. */
  private async exclusive<T>(work: () => Promise<T>): Promise<T> {
    return this.lock.run(work)
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

  private async zero(from: number, to: number): Promise<void> {
    for (let position = from; position < to; position += zeroChunk.length) {
      await this.o.volume.write(zeroChunk, 0, Math.min(zeroChunk.length, to - position), position)
    }
  }

  /** Starts a background flush every checkpointBytes; its failure fails the next write. */
  private checkpoint(length: number): void {
    this.sinceCheckpoint += length
    if (this.sinceCheckpoint < checkpointBytes || this.checkpointing !== undefined) return
    this.sinceCheckpoint = 0
    this.checkpointing = this.o.volume.flush()
      .catch((err: unknown) => { this.failWith(err, 'flushing the device failed') })
      .finally(() => { this.checkpointing = undefined })
  }
}
