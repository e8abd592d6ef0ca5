import path from 'node:path'
import { Worker } from 'node:worker_threads'

export type HashRequest =
  | { type: 'data', data: ArrayBuffer }
  | { type: 'zeros', length: number }
  | { type: 'digest' }

export type HashReply =
  | { type: 'ack', bytes: number }
  | { type: 'digest', md5: string, sha512: string }

/** Glance's `checksum` (md5) and `os_hash_value` (sha512, Glance's default hashing_algorithm). */
export interface Digests {
  md5: string
  sha512: string
}

/** Bytes handed to the worker but not hashed yet, above which writers wait. */
const maxPendingBytes = 64 * 1024 * 1024

/** md5 + sha512 of a byte stream, computed in a worker thread; data is copied, never shared. */
export class Hasher {
  private readonly worker: Worker
  private pendingBytes = 0
  private waiters: Array<() => void> = []
  private onDigest: ((digests: Digests) => void) | undefined
  private failure: Error | undefined

  constructor() {
    this.worker = new Worker(path.join(__dirname, 'hash-worker.js'))
    this.worker.on('message', (reply: HashReply) => {
      if (reply.type === 'ack') {
        this.pendingBytes -= reply.bytes
        if (this.pendingBytes <= maxPendingBytes / 2) this.wake()
      } else {
        this.onDigest?.({ md5: reply.md5, sha512: reply.sha512 })
      }
    })
    this.worker.on('error', err => {
      this.failure = err
      this.wake()
    })
  }

  update(data: Buffer, length: number): void {
    const copy = new Uint8Array(length)
    copy.set(data.subarray(0, length))
    this.pendingBytes += length
    this.worker.postMessage({ type: 'data', data: copy.buffer } satisfies HashRequest, [copy.buffer])
  }

  zeros(length: number): void {
    if (length > 0) this.worker.postMessage({ type: 'zeros', length } satisfies HashRequest)
  }

  /** Resolves when the worker has caught up enough for more data (backpressure). */
  async ready(): Promise<void> {
    if (this.failure !== undefined) throw this.failure
    if (this.pendingBytes <= maxPendingBytes) return
    await new Promise<void>(resolve => this.waiters.push(resolve))
    if (this.failure !== undefined) throw this.failure
  }

  async digest(): Promise<Digests> {
    if (this.failure !== undefined) throw this.failure
    const result = new Promise<Digests>(resolve => { this.onDigest = resolve })
    this.worker.postMessage({ type: 'digest' } satisfies HashRequest)
    return result
  }

  async close(): Promise<void> {
    await this.worker.terminate()
  }

  private wake(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const wake of waiters) wake()
  }
}
