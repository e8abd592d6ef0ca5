import { createHash } from 'node:crypto'
import { parentPort } from 'node:worker_threads'
import type { HashRequest, HashReply } from './hasher.js'

// Runs in a worker thread: md5 and sha512 of an upload cost ~3 CPU-s/GiB,
// which would otherwise stall every FUSE reply on the main thread.
const port = parentPort
if (port === null) throw new Error('hash-worker must run as a worker thread')
const md5 = createHash('md5')
const sha512 = createHash('sha512')
const zeros = Buffer.alloc(1024 * 1024)

port.on('message', (request: HashRequest) => {
  if (request.type === 'data') {
    const data = new Uint8Array(request.data, 0, request.length)
    md5.update(data)
    sha512.update(data)
    // The chunk goes back to the writer's side for reuse.
    port?.postMessage({ type: 'ack', bytes: request.length, data: request.data } satisfies HashReply, [request.data])
  } else if (request.type === 'zeros') {
    for (let left = request.length; left > 0; left -= zeros.length) {
      const chunk = left >= zeros.length ? zeros : zeros.subarray(0, left)
      md5.update(chunk)
      sha512.update(chunk)
    }
    reply({ type: 'ack', bytes: 0 })
  } else {
    reply({ type: 'digest', md5: md5.digest('hex'), sha512: sha512.digest('hex') })
  }
})

function reply(message: HashReply): void {
  port?.postMessage(message)
}
