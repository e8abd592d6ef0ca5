import { createHash } from 'node:crypto'
import { parentPort, workerData } from 'node:worker_threads'
import type { HashReply, HashRequest } from './hasher.js'

// Runs in a worker thread, one per algorithm (workerData): md5 and sha512 of
// an upload cost ~3.5 CPU-s/GiB together, which would otherwise stall every
// FUSE reply on the main thread, and in one thread cap uploads at ~300 MB/s.
const port = parentPort
if (port === null) throw new Error('hash-worker must run as a worker thread')
const algorithm: unknown = workerData
if (algorithm !== 'md5' && algorithm !== 'sha512') throw new Error(`hash-worker: unknown algorithm ${String(algorithm)}`)
const hash = createHash(algorithm)
const zeros = Buffer.alloc(1024 * 1024)

port.on('message', (request: HashRequest) => {
  if (request.type === 'data') {
    // The chunk is shared with the other algorithm's worker; the writer reuses it once both acked.
    hash.update(new Uint8Array(request.data, request.offset, request.length))
    reply({ type: 'ack', chunk: request.chunk })
  } else if (request.type === 'zeros') {
    for (let left = request.length; left > 0; left -= zeros.length) {
      hash.update(left >= zeros.length ? zeros : zeros.subarray(0, left))
    }
  } else {
    reply({ type: 'digest', hex: hash.digest('hex') })
  }
})

function reply(message: HashReply): void {
  port?.postMessage(message)
}
