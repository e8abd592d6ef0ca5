import { randomBytes } from 'node:crypto'
import t from 'tap'
import { AlignedBlockPool } from '../../src/memory/aligned-blocks.js'
import { StagingWindows, type StagingTarget } from '../../src/upload/staging.js'

const window = 64 * 1024

/** A volume in memory that grows by `step` bytes when asked, after `growGate` resolves. */
class MemoryTarget implements StagingTarget {
  bytes: Buffer
  writes: Array<{ position: number, length: number }> = []
  grows = 0
  growGate: Promise<void> = Promise.resolve()
  failGrow = false

  constructor(size: number) {
    this.bytes = Buffer.alloc(size)
  }

  get capacity(): number {
    return this.bytes.length
  }

  async ensure(bytes: number): Promise<void> {
    await this.growGate
    if (this.failGrow) throw new Error('extend refused')
    this.grows++
    if (bytes > this.bytes.length) this.bytes = Buffer.concat([this.bytes, Buffer.alloc(bytes - this.bytes.length)])
  }

  async write(data: Buffer, offset: number, length: number, position: number): Promise<void> {
    if (position + length > this.bytes.length) throw new Error(`write past the end: ${position + length} > ${this.bytes.length}`)
    this.writes.push({ position, length })
    data.copy(this.bytes, position, offset, offset + length)
  }
}

function staging(target: MemoryTarget, writeBuffer = 4 * window) {
  const chunks = new AlignedBlockPool(window, { shared: true })
  const failures: string[] = []
  const hashed: number[] = []
  const windows = new StagingWindows({
    chunks, writeBuffer, target,
    onSubmit: (w, retain) => { hashed.push(w.start); retain()() },
    onFailure: (err, context) => { failures.push(`${context}: ${String(err)}`) },
  })
  return { windows, chunks, failures, hashed }
}

t.test('writes are gathered into whole windows; every byte lands where it was written', async t => {
  const target = new MemoryTarget(1024 * 1024)
  const { windows, failures } = staging(target)
  const data = randomBytes(5 * window + 100)
  // In 4 KiB pieces, as a writer sends them.
  for (let at = 0; at < data.length; at += 4096) await windows.copyIn(data.subarray(at, at + 4096), Math.min(4096, data.length - at), at, () => undefined)
  await windows.drain()
  t.same(failures, [])
  t.ok(target.bytes.subarray(0, data.length).equals(data), 'the device holds the bytes')
  t.same(target.writes.map(w => w.length), [window, window, window, window, window, 100], 'one device write per window, and the tail')
})

t.test('a window past the end waits for the grow while the writer goes on, within the write buffer', async t => {
  const target = new MemoryTarget(window)
  let open = (): void => undefined
  target.growGate = new Promise(resolve => { open = resolve })
  const { windows, failures } = staging(target, 8 * window)
  const data = randomBytes(4 * window)
  await windows.copyIn(data, data.length, 0, () => undefined)
  t.equal(target.grows, 0, 'the grow has not finished')
  t.same(target.writes.map(w => w.position), [0], 'only the window inside the volume went to the device')
  open()
  await windows.drain()
  t.same(failures, [])
  t.ok(target.bytes.subarray(0, data.length).equals(data), 'the queued windows landed after the grow')
})

t.test('a failed grow fails the upload and gives every block back', async t => {
  const target = new MemoryTarget(window)
  target.failGrow = true
  const { windows, failures, chunks } = staging(target, 2 * window)
  const data = randomBytes(6 * window)
  await windows.copyIn(data, data.length, 0, () => undefined)
  await windows.drain()
  t.ok(failures.length > 0, 'the failure is reported (the upload keeps the first)')
  t.ok(failures.every(f => /growing the volume failed: Error: extend refused/.test(f)), 'as a failed grow')
  // Every block taken was given back: taking as many again reuses them without reserving more.
  const reserved = chunks.reservedBytes
  const taken = Array.from({ length: reserved / window }, () => chunks.take())
  t.equal(chunks.reservedBytes, reserved, 'no block was lost')
  for (const block of taken) chunks.give(block)
})
