import { createHash, type Hash } from 'node:crypto'
import { parentPort, workerData } from 'node:worker_threads'
import type { HashReply, HashRequest } from './hasher.js'

// Runs in a worker thread, one per algorithm (workerData), shared by every
// upload (one hash state per stream): md5 and sha512 of an upload cost
// ~3.5 CPU-s/GiB together, which would otherwise stall every FUSE reply on the
// main thread, and in one thread cap uploads at ~300 MB/s.
const port = parentPort
if (port === null) throw new Error('hash-worker must run as a worker thread')
const requested: unknown = workerData
if (requested !== 'md5' && requested !== 'sha512') throw new Error(`hash-worker: unknown algorithm ${String(requested)}`)
const algorithm: 'md5' | 'sha512' = requested
const hashes = new Map<number, Hash>()
const zeros = Buffer.alloc(1024 * 1024)

function hashOf(stream: number): Hash {
  let hash = hashes.get(stream)
  if (hash === undefined) {
    hash = createHash(algorithm)
    hashes.set(stream, hash)
  }
  return hash
}

port.on('message', (request: HashRequest) => {
  if (request.type === 'data') {
    // The chunk is shared with the other algorithm's worker; the writer reuses it once both acked.
    hashOf(request.stream).update(new Uint8Array(request.data, request.offset, request.length))
    reply({ type: 'ack', stream: request.stream, chunk: request.chunk })
  } else if (request.type === 'zeros') {
    const hash = hashOf(request.stream)
    for (let left = request.length; left > 0; left -= zeros.length) {
      hash.update(left >= zeros.length ? zeros : zeros.subarray(0, left))
    }
  } else if (request.type === 'digest') {
    reply({ type: 'digest', stream: request.stream, hex: hashOf(request.stream).digest('hex') })
    hashes.delete(request.stream)
  } else {
    hashes.delete(request.stream)
  }
})

function reply(message: HashReply): void {
  port?.postMessage(message)
}
