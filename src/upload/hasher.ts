import path from 'node:path'
import { Worker } from 'node:worker_threads'

/** Every request names its stream: one pair of workers hashes every upload of the process. */
export type HashRequest =
  | { type: 'data', stream: number, data: SharedArrayBuffer, offset: number, length: number, chunk: number }
  | { type: 'zeros', stream: number, length: number }
  | { type: 'digest', stream: number }
  | { type: 'drop', stream: number }

export type HashReply =
  | { type: 'ack', stream: number, chunk: number }
  | { type: 'digest', stream: number, hex: string }

/** Glance's `checksum` (md5) and `os_hash_value` (sha512, Glance's default hashing_algorithm). */
export interface Digests {
  md5: string
  sha512: string
}

const algorithms = ['md5', 'sha512'] as const
type Algorithm = typeof algorithms[number]

/** Bytes handed to the workers but not hashed by both yet, above which writers wait. */
const maxPendingBytes = 64 * 1024 * 1024
/** Writes are gathered into chunks of this size before they go to the workers. */
const chunkBytes = 1024 * 1024
/** Hashed chunks kept for reuse. */
const maxSpareChunks = 8

interface Chunk {
  id: number
  /** A view on shared memory: the workers read it in place. */
  view: Buffer
  length: number
  /** Workers that have not hashed it yet. */
  waitingFor: number
  /** Called once both have: the hasher's own chunks go back to its spares, a caller's to the caller. */
  done: () => void
}

interface Stream {
  onReply(algorithm: Algorithm, reply: HashReply): void
  onFailure(err: Error): void
}

/**
 * The two hash workers, md5 and sha512, started on first use and shared by
 * every upload of the process: starting a pair of worker threads per upload
 * cost ~0.3 s of every small image's close on the 2-vCPU VM. They keep the
 * process alive only while a stream is open. A worker that dies fails the
 * streams it had; the next stream starts a new pair.
 */
class HashPool {
  private workers: Record<Algorithm, Worker> | undefined
  private readonly streams = new Map<number, Stream>()
  private nextStream = 0

  open(stream: Stream): number {
    const id = this.nextStream++
    this.streams.set(id, stream)
    this.workers ??= { md5: this.start('md5'), sha512: this.start('sha512') }
    if (this.streams.size === 1) this.forEachWorker(worker => { worker.ref() })
    return id
  }

  post(request: HashRequest): void {
    this.forEachWorker(worker => { worker.postMessage(request) })
  }

  close(stream: number): void {
    if (!this.streams.delete(stream)) return
    this.post({ type: 'drop', stream })
    if (this.streams.size === 0) this.forEachWorker(worker => { worker.unref() })
  }

  private forEachWorker(action: (worker: Worker) => void): void {
    if (this.workers !== undefined) for (const algorithm of algorithms) action(this.workers[algorithm])
  }

  private start(algorithm: Algorithm): Worker {
    const worker = new Worker(path.join(__dirname, 'hash-worker.js'), { workerData: algorithm })
    worker.on('message', (reply: HashReply) => this.streams.get(reply.stream)?.onReply(algorithm, reply))
    worker.on('error', err => {
      this.forEachWorker(other => { void other.terminate() })
      this.workers = undefined
      const streams = [...this.streams.values()]
      this.streams.clear()
      for (const stream of streams) stream.onFailure(err)
    })
    return worker
  }
}

const pool = new HashPool()

/**
 * md5 + sha512 of a byte stream, in the pool's two worker threads so the two
 * run in parallel (one thread did both at ~300 MB/s on the 2-vCPU VM:
 * md5 ~535 and sha512 ~660 MiB/s alone). Both workers read the same shared
 * memory: the upload's own staging chunks (updateShared, no copy at all), or
 * 1 MiB chunks of the hasher's into which update() copies.
 */
export class Hasher {
  private readonly stream: number
  private pendingBytes = 0
  private chunk: Chunk | undefined
  private readonly inFlight = new Map<number, Chunk>()
  private readonly spare: Chunk[] = []
  private nextChunkId = 0
  private waiters: Array<() => void> = []
  private readonly digests: Partial<Digests> = {}
  private onDigest: (() => void) | undefined
  private failure: Error | undefined

  constructor() {
    this.stream = pool.open({
      onReply: (algorithm, reply) => { this.onReply(algorithm, reply) },
      onFailure: err => {
        this.failure = err
        this.wake()
        this.onDigest?.()
      },
    })
  }

  update(data: Buffer, length: number): void {
    for (let offset = 0; offset < length;) {
      const chunk = this.chunk ??= this.spare.pop() ?? this.newChunk()
      const n = data.copy(chunk.view, chunk.length, offset, length)
      offset += n
      chunk.length += n
      if (chunk.length === chunkBytes) this.send()
    }
  }

  /**
   * Hashes `length` bytes of `block` (a view on a SharedArrayBuffer) in place;
   * `done` is called when both workers are through with them, so the caller
   * must not change them before.
   */
  updateShared(block: Buffer, length: number, done: () => void): void {
    if (!(block.buffer instanceof SharedArrayBuffer)) throw new TypeError('updateShared needs shared memory')
    this.send()
    this.dispatch({ id: this.nextChunkId++, view: block, length, waitingFor: 0, done })
  }

  zeros(length: number): void {
    if (length <= 0) return
    this.send()
    this.post({ type: 'zeros', stream: this.stream, length })
  }

  /** Resolves when the workers have caught up enough for more data (backpressure). */
  async ready(): Promise<void> {
    if (this.failure !== undefined) throw this.failure
    if (this.pendingBytes <= maxPendingBytes) return
    await new Promise<void>(resolve => this.waiters.push(resolve))
    if (this.failure !== undefined) throw this.failure
  }

  async digest(): Promise<Digests> {
    if (this.failure !== undefined) throw this.failure
    this.send()
    const done = new Promise<void>(resolve => { this.onDigest = resolve })
    this.post({ type: 'digest', stream: this.stream })
    await done
    const { md5, sha512 } = this.digests
    if (this.failure !== undefined) throw this.failure
    if (md5 === undefined || sha512 === undefined) throw new Error('hash workers gave no digest')
    return { md5, sha512 }
  }

  /**
   * Ends the stream; chunks not hashed yet go back to their owners at once
   * (only an aborted upload has any, and its digest is never asked for).
   */
  async close(): Promise<void> {
    pool.close(this.stream)
    for (const chunk of this.inFlight.values()) chunk.done()
    this.inFlight.clear()
  }

  private onReply(algorithm: Algorithm, reply: HashReply): void {
    if (reply.type === 'digest') {
      this.digests[algorithm] = reply.hex
      if (this.digests.md5 !== undefined && this.digests.sha512 !== undefined) this.onDigest?.()
      return
    }
    const chunk = this.inFlight.get(reply.chunk)
    if (chunk === undefined || --chunk.waitingFor > 0) return
    this.inFlight.delete(chunk.id)
    this.pendingBytes -= chunk.length
    chunk.done()
    if (this.pendingBytes <= maxPendingBytes / 2) this.wake()
  }

  /** Hands the gathered chunk to both workers (before anything that must come after it). */
  private send(): void {
    const chunk = this.chunk
    if (chunk === undefined || chunk.length === 0) return
    this.chunk = undefined
    this.dispatch(chunk)
  }

  private dispatch(chunk: Chunk): void {
    this.pendingBytes += chunk.length
    chunk.waitingFor = algorithms.length
    this.inFlight.set(chunk.id, chunk)
    const memory = chunk.view.buffer as SharedArrayBuffer
    this.post({ type: 'data', stream: this.stream, data: memory, offset: chunk.view.byteOffset, length: chunk.length, chunk: chunk.id })
  }

  private post(request: HashRequest): void {
    pool.post(request)
  }

  private newChunk(): Chunk {
    const chunk: Chunk = {
      id: this.nextChunkId++, view: Buffer.from(new SharedArrayBuffer(chunkBytes)), length: 0, waitingFor: 0,
      done: () => {
        chunk.length = 0
        if (this.spare.length < maxSpareChunks) this.spare.push(chunk)
      },
    }
    return chunk
  }

  private wake(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const wake of waiters) wake()
  }
}
