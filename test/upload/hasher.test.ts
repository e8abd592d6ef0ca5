import { createHash, randomBytes } from 'node:crypto'
import t from 'tap'
import { Hasher } from '../../src/upload/hasher.js'

/** What Glance stores as `checksum` and `os_hash_value` for these bytes. */
function expected(bytes: Buffer): { md5: string, sha512: string } {
  return { md5: createHash('md5').update(bytes).digest('hex'), sha512: createHash('sha512').update(bytes).digest('hex') }
}

t.test('md5 and sha512 equal Glance\'s for writes of every size, across chunk edges', async t => {
  const data = randomBytes(5 * 1024 * 1024 + 4097)
  const hasher = new Hasher()
  t.teardown(async () => hasher.close())
  // FUSE-sized writes, then odd ones that straddle the 1 MiB chunks.
  let at = 0
  for (const size of [131072, 131072, 1, 4095, 1048577, 3000000]) {
    hasher.update(data.subarray(at, at + size), size)
    await hasher.ready()
    at += size
  }
  hasher.update(data.subarray(at), data.length - at)
  t.same(await hasher.digest(), expected(data))
})

t.test('holes hash as zeros, in order with the data around them', async t => {
  const head = randomBytes(1000)
  const tail = randomBytes(3 * 1024 * 1024)
  const hasher = new Hasher()
  t.teardown(async () => hasher.close())
  hasher.update(head, head.length)
  hasher.zeros(2.5 * 1024 * 1024)
  hasher.update(tail, tail.length)
  t.same(await hasher.digest(), expected(Buffer.concat([head, Buffer.alloc(2.5 * 1024 * 1024), tail])))
})

t.test('an empty image has the empty digests', async t => {
  const hasher = new Hasher()
  t.teardown(async () => hasher.close())
  t.same(await hasher.digest(), expected(Buffer.alloc(0)))
})

t.test('a writer far ahead of the workers waits, and nothing it wrote is lost', async t => {
  const block = randomBytes(1024 * 1024)
  const hasher = new Hasher()
  t.teardown(async () => hasher.close())
  let waited = 0
  for (let i = 0; i < 200; i++) {
    hasher.update(block, block.length)
    const ready = hasher.ready()
    let settled = false
    void ready.then(() => { settled = true })
    await Promise.resolve()
    if (!settled) waited++
    await ready
  }
  t.ok(waited > 0, 'backpressure held the writer at least once')
  const whole = createHash('md5')
  for (let i = 0; i < 200; i++) whole.update(block)
  t.equal((await hasher.digest()).md5, whole.digest('hex'))
})

t.test('uploads hashed at the same time, interleaved, each get their own digests', async t => {
  const streams = Array.from({ length: 5 }, (_, i) => ({ data: randomBytes(300_000 * (i + 1)), hasher: new Hasher() }))
  t.teardown(async () => { for (const s of streams) await s.hasher.close() })
  for (let at = 0; at < 1_500_000; at += 65536) {
    for (const { data, hasher } of streams) {
      if (at < data.length) hasher.update(data.subarray(at, at + 65536), Math.min(65536, data.length - at))
    }
  }
  const digests = await Promise.all(streams.map(async s => s.hasher.digest()))
  t.same(digests, streams.map(s => expected(s.data)))
})
