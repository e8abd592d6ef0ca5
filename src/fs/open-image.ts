import type { AttachmentManager, Lease } from '../attachments/attachment-manager.js'
import type { BlockSource } from '../cache/block-cache.js'
import type { ImageAttributeChanges } from '../image/lifecycle.js'
import { Serial } from '../system/serial.js'
import type { Upload } from '../upload/upload.js'

/**
 * Where an open image is in its life, as this mount sees it:
 * - writing: an upload takes writes; what it shows (size, mtime) is the upload's.
 * - final: complete and recorded, still attached read-write; a writer may
 *   take it back (a write through a handle still open, or a reopen inside
 *   the seal delay). `cancelSeal` stops the pending seal.
 * - sealing: the seal delay is over; waiting for readers to let go of the
 *   read-write attachment, then marked read-only. No writer may come back.
 * - sealed: read-only; served through the block cache.
 * - gone: deleted, or its upload was dropped.
 */
export type Phase =
  | { kind: 'writing', upload: Upload }
  | { kind: 'final', upload: Upload, cancelSeal?: () => void }
  | { kind: 'sealing' }
  | { kind: 'sealed' }
  | { kind: 'gone' }

/**
 * One image that this mount has open (or holds in its seal delay): the one
 * owner of its handles' counts, its unlink-while-open, its read attachment
 * and block source, and the order of its lifecycle steps.
 */
export class OpenImage {
  // GUARDED_BY(lock) for every change of kind; reads may look at any time.
  phase: Phase
  writers = 0
  readers = 0
  /** Unlinked (or replaced) while open: deleted when its last handle goes. */
  unlinked = false
  /** Bytes of the image as last known here (at open or finalisation): its size after an unlink took the name. */
  knownSize = 0
  /** chmod, chown, utimens while writing: recorded when the upload completes. */
  pending: ImageAttributeChanges = {}
  private lease: Lease | undefined
  private leasing: Promise<Lease> | undefined
  // INVARIANT: source is set only while phase is final, sealing or sealed, and its size is the final size.
  private source: BlockSource | undefined
  private readonly lock = new Serial()

  constructor(readonly volumeId: string, phase: Phase) {
    this.phase = phase
  }

  get handles(): number {
    return this.writers + this.readers
  }

  /** The upload that takes writes now, if any. */
  get upload(): Upload | undefined {
    return this.phase.kind === 'writing' ? this.phase.upload : undefined
  }

  /** Runs lifecycle steps of this image one at a time, in the order they were asked for. */
  async exclusive<T>(work: () => Promise<T>): Promise<T> {
    return this.lock.run(work)
  }

  /** The attached image as a block source for the cache; one attach however many readers ask at once. */
  async readSource(attachments: AttachmentManager, size: number): Promise<BlockSource> {
    if (this.source !== undefined) return this.source
    this.leasing ??= attachments.acquire(this.volumeId, 'ro')
    const leasing = this.leasing
    const lease = await leasing.catch((err: unknown) => {
      // A failed attach is not cached: the next read tries again.
      if (this.leasing === leasing) this.leasing = undefined
      throw err
    })
    this.lease ??= lease
    this.source ??= {
      key: this.volumeId,
      size,
      read: async (buffer, offset, length, position) => lease.device.read(buffer, offset, length, position),
    }
    return this.source
  }

  /** The cached source, when reads can be answered without waiting for an attach. */
  get cachedSource(): BlockSource | undefined {
    return this.source
  }

  /** Its bytes changed (a reopen): the next read builds a source of the new size. */
  forgetSource(): void {
    this.source = undefined
  }

  /** The last reader is gone: the attachment may go idle. */
  releaseRead(): void {
    this.lease?.release()
    this.lease = undefined
    this.leasing = undefined
    this.source = undefined
  }
}
