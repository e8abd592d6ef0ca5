import path from 'node:path'

/**
 * Reads with O_DIRECT skip the device's page cache (one copy and its memory
 * less per block), but the kernel then wants the target address, the offset
 * and the length aligned to the device's logical block size; 4 KiB covers
 * every device we attach. Node's Buffers carry a 16-byte malloc header, so
 * they never are aligned. The blocks here are carved out of page-aligned
 * mappings: native/memory's (huge pages, which make the first touch of a
 * fresh cache about twice as cheap), or WebAssembly memory where workers
 * must share it (V8 maps that page-aligned too).
 */
export const directIoAlignment = 4096

const wasmPageBytes = 64 * 1024
/** Memory is reserved in segments of this size and touched only when a block is first used. */
const segmentBytes = 64 * 1024 * 1024

/** The part of WebAssembly's API used here (our TypeScript libs do not declare it). */
interface WasmMemoryConstructor { new (descriptor: { initial: number, maximum: number, shared?: boolean }): { readonly buffer: ArrayBuffer | SharedArrayBuffer } }
const WasmMemory = (globalThis as unknown as { WebAssembly: { Memory: WasmMemoryConstructor } }).WebAssembly.Memory

interface NativeMemory { hugePageMemory(bytes: number): ArrayBuffer }
let nativeMemory: NativeMemory | undefined

/** native/memory, built by scripts/setup; loaded on first use. */
function hugePageMemory(bytes: number): ArrayBuffer {
  nativeMemory ??= require(path.join(__dirname, '..', '..', '..', 'native', 'memory', 'build', 'Release', 'cinderfs_memory.node')) as NativeMemory
  return nativeMemory.hugePageMemory(bytes)
}

/** Backing memory of every aligned block, for isDirectIoAligned. */
const alignedMemory = new WeakSet<ArrayBufferLike>()

/** Whether `buffer` from `offset` on starts at an address O_DIRECT accepts. */
export function isDirectIoAligned(buffer: Buffer, offset: number): boolean {
  return alignedMemory.has(buffer.buffer) && (buffer.byteOffset + offset) % directIoAlignment === 0
}

export function roundUpToAlignment(bytes: number): number {
  return Math.ceil(bytes / directIoAlignment) * directIoAlignment
}

/**
 * Fixed-size, 4 KiB-aligned blocks, reused: what is given back is taken
 * again before new memory is touched. The pool does not bound how many are
 * out; its user (the block cache's byte budget, the uploads' queues) does.
 * Memory stays with the pool once touched, as it would stay in a full cache.
 * `shared` blocks live in SharedArrayBuffers, which worker threads can read
 * in place (the upload's hashers).
 */
export class AlignedBlockPool {
  private readonly free: Buffer[] = []
  /** Per segment, the offsets of its blocks that are in `free`. */
  private readonly freeOffsets = new Map<ArrayBufferLike, Set<number>>()
  private segment: ArrayBufferLike | undefined
  private carved = 0
  private total = 0

  constructor(readonly blockSize: number, private readonly options: { shared?: boolean } = {}) {
    if (blockSize % directIoAlignment !== 0) throw new RangeError(`block size ${blockSize} is not a multiple of ${directIoAlignment}`)
  }

  /** Blocks handed out so far, in bytes (what the pool may hold at most). */
  get reservedBytes(): number {
    return this.total * this.blockSize
  }

  take(): Buffer {
    const reused = this.free.pop()
    if (reused !== undefined) {
      this.freeOffsets.get(reused.buffer)?.delete(reused.byteOffset)
      return reused
    }
    let segment = this.segment
    if (segment === undefined || this.carved + this.blockSize > segment.byteLength) {
      const bytes = Math.max(segmentBytes, this.blockSize)
      if (this.options.shared === true) {
        const pages = Math.ceil(bytes / wasmPageBytes)
        segment = new WasmMemory({ initial: pages, maximum: pages, shared: true }).buffer
      } else {
        segment = hugePageMemory(bytes)
      }
      alignedMemory.add(segment)
      this.freeOffsets.set(segment, new Set())
      this.segment = segment
      this.carved = 0
    }
    const block = Buffer.from(segment, this.carved, this.blockSize)
    this.carved += this.blockSize
    this.total++
    return block
  }

  /** Takes back a block this pool gave out (a shortened view of it is fine), once. */
  give(block: Buffer): void {
    const freeHere = this.freeOffsets.get(block.buffer)
    if (freeHere === undefined || block.byteOffset % this.blockSize !== 0) throw new RangeError('block was not taken from this pool')
    // Two owners of one block would serve one image's bytes as another's.
    if (freeHere.has(block.byteOffset)) throw new RangeError(`block at ${block.byteOffset} was given back twice`)
    freeHere.add(block.byteOffset)
    this.free.push(Buffer.from(block.buffer, block.byteOffset, this.blockSize))
  }
}
