import t from 'tap'
import { BlockCache, newReadStream, type BlockSource } from '../../src/cache/block-cache.js'

const KiB = 1024

/** An in-memory image that counts device reads and can hold them back. */
function image(size: number, options: { gate?: Promise<void> } = {}): BlockSource & { reads: number[], bytes: Buffer } {
  const bytes = Buffer.alloc(size)
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + 7) & 0xff
  const reads: number[] = []
  return {
    key: `image-${size}-${Math.random()}`,
    size,
    bytes,
    reads,
    read: async (buffer, offset, length, position) => {
      reads.push(position)
      await options.gate
      return bytes.copy(buffer, offset, position, Math.min(size, position + length))
    },
  }
}

async function readAll(cache: BlockCache, source: BlockSource, at: number, length: number): Promise<Buffer> {
  const target = Buffer.alloc(length)
  const n = await cache.read(source, target, length, at)
  return target.subarray(0, n)
}

t.test('reads come back byte for byte, across block edges and at the end', async t => {
  const cache = new BlockCache({ budgetBytes: 64 * KiB, blockSize: 4 * KiB, readaheadBytes: 8 * KiB })
  const src = image(10 * KiB + 123)
  for (const [at, length] of [[0, 100], [4090, 20], [8 * KiB, 4 * KiB], [10 * KiB, 1000], [10 * KiB + 100, 50]] as const) {
    const got = await readAll(cache, src, at, length)
    t.same(got, src.bytes.subarray(at, Math.min(src.size, at + length)), `read of ${length} at ${at}`)
  }
  t.equal((await readAll(cache, src, src.size, 10)).length, 0, 'a read at the end returns nothing')
})

t.test('a cached read is answered in the same tick', async t => {
  const cache = new BlockCache({ budgetBytes: 64 * KiB, blockSize: 4 * KiB, readaheadBytes: 8 * KiB })
  const src = image(16 * KiB)
  await readAll(cache, src, 0, 8 * KiB)
  const result = cache.read(src, Buffer.alloc(4 * KiB), 4 * KiB, 1024)
  t.type(result, 'number', 'a number, not a promise')
  t.equal(cache.stats.hits, 1)
})

t.test('single flight: many readers of one block cause one device read', async t => {
  const cache = new BlockCache({ budgetBytes: 64 * KiB, blockSize: 4 * KiB, readaheadBytes: 4 * KiB })
  let open = (): void => {}
  const src = image(16 * KiB, { gate: new Promise<void>(resolve => { open = resolve }) })
  const readers = Array.from({ length: 8 }, async (_, i) => readAll(cache, src, 100 + i, 200))
  open()
  const results = await Promise.all(readers)
  results.forEach((got, i) => t.same(got, src.bytes.subarray(100 + i, 300 + i), `reader ${i} got its bytes`))
  t.same(src.reads, [0], 'block 0 was read from the device once')
})

t.test('the cache stays within its byte budget', async t => {
  const blockSize = 4 * KiB
  const cache = new BlockCache({ budgetBytes: 8 * blockSize, blockSize, readaheadBytes: 2 * blockSize })
  const src = image(64 * blockSize)
  for (let at = 0; at < src.size; at += blockSize) await readAll(cache, src, at, blockSize)
  t.ok(cache.stats.cachedBytes <= 8 * blockSize, `cached ${cache.stats.cachedBytes} bytes of a ${8 * blockSize} byte budget`)
  t.same(await readAll(cache, src, 0, 100), src.bytes.subarray(0, 100), 'an evicted block is read again correctly')
})

t.test('sequential reads trigger readahead; random reads do not', async t => {
  const blockSize = 4 * KiB
  const cache = new BlockCache({ budgetBytes: 64 * blockSize, blockSize, readaheadBytes: 8 * blockSize })
  const src = image(32 * blockSize)
  const stream = newReadStream()
  for (let at = 0; at < 4 * blockSize; at += blockSize) {
    const target = Buffer.alloc(blockSize)
    await cache.read(src, target, blockSize, at, stream)
  }
  t.ok(cache.stats.prefetches >= 4, `sequential reader: ${cache.stats.prefetches} blocks prefetched`)
  const hitsBefore = cache.stats.hits
  await cache.read(src, Buffer.alloc(blockSize), blockSize, 4 * blockSize, stream)
  t.equal(cache.stats.hits, hitsBefore + 1, 'the next sequential block was already there')

  const other = image(32 * blockSize)
  const random = newReadStream()
  for (const block of [20, 3, 11, 27]) await cache.read(other, Buffer.alloc(100), 100, block * blockSize, random)
  t.equal(other.reads.length, 4, 'random reads fetch only what they ask for')
})

t.test('a device error fails the readers of that block, and a retry can succeed', async t => {
  const cache = new BlockCache({ budgetBytes: 64 * KiB, blockSize: 4 * KiB, readaheadBytes: 4 * KiB })
  const src = image(8 * KiB)
  let fail = true
  const flaky: BlockSource = {
    key: src.key, size: src.size,
    read: async (buffer, offset, length, position) => {
      if (fail) throw Object.assign(new Error('device gone'), { code: 'EIO' })
      return src.read(buffer, offset, length, position)
    },
  }
  await t.rejects(readAll(cache, flaky, 0, 10), { code: 'EIO' }, 'the error reaches the reader')
  fail = false
  t.same(await readAll(cache, flaky, 0, 10), src.bytes.subarray(0, 10), 'the next read works')
})

t.test('blocks live in aligned, reused memory: a long read touches no more than the budget', async t => {
  const blockSize = 64 * KiB
  const cache = new BlockCache({ budgetBytes: 8 * blockSize, blockSize, readaheadBytes: 2 * blockSize })
  const source = image(64 * blockSize)
  const seen = new Set<ArrayBufferLike>()
  const offsets = new Set<number>()
  const aligned = { ...source, read: async (buffer: Buffer, offset: number, length: number, position: number) => {
    seen.add(buffer.buffer)
    offsets.add(buffer.byteOffset + offset)
    return source.read(buffer, offset, length, position)
  } }
  const stream = newReadStream()
  for (let at = 0; at < source.size; at += 32 * KiB) {
    const target = Buffer.alloc(32 * KiB)
    await cache.read(aligned, target, target.length, at, stream)
    t.ok(target.equals(source.bytes.subarray(at, at + target.length)), `bytes at ${at}`) || t.fail('stop')
  }
  t.equal(seen.size, 1, 'every block comes from one aligned segment')
  t.ok([...offsets].every(o => o % 4096 === 0), 'every device read lands 4 KiB aligned')
  t.ok(offsets.size <= 8 + 8, `blocks are reused: ${offsets.size} distinct blocks for a 64-block image with an 8-block budget`)
})
