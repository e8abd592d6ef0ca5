import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { AlignedBlockPool, isDirectIoAligned } from '../../src/memory/aligned-blocks.js'

/** Where this machine's temp directory takes O_DIRECT (tmpfs does not), a file there; else why not. */
function directIoFile(): { file: string, dir: string } | string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cinderfs-aligned-'))
  const file = path.join(dir, 'data')
  fs.writeFileSync(file, '')
  try {
    fs.closeSync(fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_DIRECT))
    return { file, dir }
  } catch {
    fs.rmSync(dir, { recursive: true, force: true })
    return `${os.tmpdir()} does not support O_DIRECT`
  }
}

t.test('blocks are aligned for O_DIRECT, from segments carved in order', async t => {
  const pool = new AlignedBlockPool(1024 * 1024)
  const blocks = Array.from({ length: 70 }, () => pool.take())
  t.ok(blocks.every(block => isDirectIoAligned(block, 0) && block.length === 1024 * 1024), '70 MiB of blocks (two segments), all aligned')
  t.notOk(isDirectIoAligned(Buffer.allocUnsafeSlow(1024 * 1024), 0), 'an ordinary Buffer is not taken for aligned')
  t.notOk(isDirectIoAligned(blocks[0] ?? Buffer.alloc(0), 512), 'nor an offset inside a block that is not 4 KiB aligned')
  const shared = new AlignedBlockPool(1024 * 1024, { shared: true }).take()
  t.ok(shared.buffer instanceof SharedArrayBuffer && isDirectIoAligned(shared, 0), 'shared blocks (the uploads\' windows, read by the hash workers) are aligned too')
})

const target = directIoFile()
t.test('the kernel takes the blocks for O_DIRECT reads', { skip: typeof target === 'string' ? target : false }, async t => {
  if (typeof target === 'string') return
  t.teardown(() => fs.rmSync(target.dir, { recursive: true, force: true }))
  const data = randomBytes(1024 * 1024)
  fs.writeFileSync(target.file, data)
  // O_DIRECT refuses unaligned memory with EINVAL: a read proves the alignment.
  const fd = fs.openSync(target.file, fs.constants.O_RDONLY | fs.constants.O_DIRECT)
  try {
    const block = new AlignedBlockPool(1024 * 1024).take()
    t.equal(fs.readSync(fd, block, 0, block.length, 0), data.length)
    t.ok(block.equals(data), 'an O_DIRECT read into a block gives the bytes')
    t.throws(() => fs.readSync(fd, Buffer.allocUnsafeSlow(1024 * 1024), 0, 1024 * 1024, 0), { code: 'EINVAL' }, 'where an ordinary Buffer is refused')
  } finally {
    fs.closeSync(fd)
  }
})

t.test('blocks given back are reused before new memory, and only once', async t => {
  const pool = new AlignedBlockPool(64 * 1024)
  const a = pool.take()
  const b = pool.take()
  a.fill(7)
  pool.give(a.subarray(0, 100))
  t.equal(pool.reservedBytes, 128 * 1024)
  const again = pool.take()
  t.equal(again.byteOffset, a.byteOffset, 'the freed block comes back first')
  t.equal(again.length, 64 * 1024, 'whole, though a shortened view was given back')
  t.equal(pool.reservedBytes, 128 * 1024, 'no new memory')
  pool.give(b)
  t.throws(() => pool.give(b), /given back twice/, 'a block cannot be freed twice (two owners would mix images)')
  t.throws(() => pool.give(Buffer.alloc(64 * 1024)), /not taken from this pool/)
})
