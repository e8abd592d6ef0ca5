import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { once } from 'node:events'
import v8 from 'node:v8'
import vm from 'node:vm'
import t from 'tap'
import { loadRbd, rbdAddonPath, type RbdCluster } from '../../src/connectors/rbd-binding.js'
import { needsCeph, sha256Of, startCeph, type CephCluster } from '../helpers/ceph.js'

const MiB = 1 << 20
const skip = needsCeph()
let ceph: CephCluster
let cluster: RbdCluster

if (skip === false) {
  t.before(async () => {
    ceph = await startCeph(t)
    cluster = await connect()
  })
  t.teardown(async () => { await cluster.shutdown() })
}

function connect(): Promise<RbdCluster> {
  return loadRbd().connect({ user: ceph.user, monHost: `${ceph.monHost}:${ceph.port}`, keyring: ceph.keyring })
}

t.test('random unaligned writes read back equal, and equal to rbd export', { skip }, async t => {
  const size = 64 * MiB
  const name = await ceph.createImage(size / MiB)
  const image = await cluster.open(ceph.pool, name)
  const expected = Buffer.alloc(size)
  // Batches of 8 concurrent writes that do not overlap, so the expected bytes do not depend on completion order.
  for (let batch = 0; batch < 40; batch++) {
    const ranges: Array<[number, number]> = []
    while (ranges.length < 8) {
      const length = 1 + crypto.randomInt(768 * 1024)
      const position = crypto.randomInt(size - length + 1)
      if (ranges.some(([p, l]) => position < p + l && p < position + length)) continue
      ranges.push([position, length])
    }
    await Promise.all(ranges.map(async ([position, length]) => {
      // Written from the middle of a larger buffer: offset and length are honoured.
      const data = crypto.randomBytes(length + 100)
      t.equal(await image.write(data, 37, length, position), length)
      data.copy(expected, position, 37, 37 + length)
    }))
  }
  await image.flush()

  const actual = Buffer.alloc(size)
  const chunk = 3 * MiB + 4097 // unaligned reads, the last one short
  const reads: Array<Promise<number>> = []
  for (let position = 0; position < size; position += chunk) {
    reads.push(image.read(actual, position, Math.min(chunk, size - position), position))
  }
  t.equal((await Promise.all(reads)).reduce((a, b) => a + b, 0), size)
  t.equal(sha256Of(actual), sha256Of(expected), 'read back through librbd')
  await image.close()

  const exported = path.join(os.tmpdir(), `cinderfs-${name}`)
  t.teardown(() => fs.rmSync(exported, { force: true }))
  await ceph.rbd('export', '--no-progress', `${ceph.pool}/${name}`, exported)
  t.equal(sha256Of(fs.readFileSync(exported)), sha256Of(expected), 'rbd export')
})

t.test('a read-only open refuses writes and discards with EROFS', { skip }, async t => {
  const name = await ceph.createImage(4)
  const writer = await cluster.open(ceph.pool, name)
  await writer.write(Buffer.alloc(4096, 0xab), 0, 4096, 0)
  await writer.close()
  const image = await cluster.open(ceph.pool, name, { readOnly: true })
  await t.rejects(image.write(Buffer.alloc(512, 1), 0, 512, 0), { code: 'EROFS' })
  await t.rejects(image.discard(0, 4096), { code: 'EROFS' })
  const back = Buffer.alloc(4096)
  t.equal(await image.read(back, 0, 4096, 0), 4096)
  t.ok(back.equals(Buffer.alloc(4096, 0xab)), 'data unchanged')
  await image.close()
})

t.test('a missing image or pool gives ENOENT', { skip }, async t => {
  await t.rejects(cluster.open(ceph.pool, 'volume-no-such-image'), { code: 'ENOENT', errno: -2 })
  await t.rejects(cluster.open('no-such-pool', 'volume-x'), { code: 'ENOENT' })
  await t.rejects(cluster.open(ceph.pool, (await ceph.createImage(1)), { snapshot: 'no-such-snap' }), { code: 'ENOENT' })
})

t.test('a write or discard crossing the end gives EFBIG and changes nothing; reads are short', { skip }, async t => {
  const name = await ceph.createImage(1)
  const size = MiB
  const image = await cluster.open(ceph.pool, name)
  t.equal(image.size(), size)
  await image.write(Buffer.alloc(64, 0x5a), 0, 64, size - 64)
  // librbd alone would write the first 10 bytes and report success.
  await t.rejects(image.write(Buffer.alloc(20, 0xff), 0, 20, size - 10), { code: 'EFBIG' })
  await t.rejects(image.write(Buffer.alloc(20, 0xff), 0, 20, size), { code: 'EFBIG' })
  await t.rejects(image.discard(size - 10, 20), { code: 'EFBIG' })
  t.equal(await image.write(Buffer.alloc(0), 0, 0, size), 0, 'an empty write at the end is fine')
  const tail = Buffer.alloc(100)
  t.equal(await image.read(tail, 0, 100, size - 64), 64, 'a read crossing the end is short')
  t.ok(tail.subarray(0, 64).equals(Buffer.alloc(64, 0x5a)), 'data unchanged')
  t.equal(await image.read(tail, 0, 100, size + 5), 0, 'a read past the end reads nothing')
  t.throws(() => image.read(tail, 50, 51, 0), RangeError, 'the buffer range is checked')
  await image.close()
})

t.test('close waits for in-flight I/O; I/O after close gives EBADF', { skip }, async t => {
  const name = await ceph.createImage(16)
  const image = await cluster.open(ceph.pool, name)
  const data = crypto.randomBytes(4 * MiB)
  const writes = [0, 1, 2, 3].map(i => image.write(data, 0, data.length, i * data.length))
  const closed = image.close()
  t.same(await Promise.all(writes), [data.length, data.length, data.length, data.length])
  await closed
  await t.rejects(image.read(Buffer.alloc(1), 0, 1, 0), { code: 'EBADF' })
  await t.rejects(image.flush(), { code: 'EBADF' })
  await t.rejects(image.close(), { code: 'EBADF' })
  const reader = await cluster.open(ceph.pool, name, { readOnly: true })
  const back = Buffer.alloc(16 * MiB)
  await reader.read(back, 0, back.length, 0)
  t.equal(sha256Of(back), sha256Of(Buffer.concat([data, data, data, data])), 'every write landed before the close')
  await reader.close()
})

t.test('handles collected without close leak nothing', { skip }, async t => {
  v8.setFlagsFromString('--expose-gc')
  const gc: () => void = vm.runInNewContext('gc')
  const name = await ceph.createImage(4)
  const fds = (): number => fs.readdirSync('/proc/self/fd').length
  const threads = (): number => fs.readdirSync('/proc/self/task').length
  const before = { ...loadRbd().stats(), fds: fds(), threads: threads() }

  // A cluster and 40 images (half read-write, with a write each, so they hold
  // the exclusive lock and a header watch), all dropped without close.
  await (async () => {
    const dropped = await connect()
    for (let i = 0; i < 40; i++) {
      const image = await dropped.open(ceph.pool, name, { readOnly: i % 2 === 0 })
      if (i % 2 === 1) await image.write(Buffer.alloc(512, i), 0, 512, 0)
    }
    t.equal(loadRbd().stats().images, before.images + 40)
  })()

  const deadline = Date.now() + 60_000
  let stats = loadRbd().stats()
  while ((stats.images !== before.images || stats.clusters !== before.clusters) && Date.now() < deadline) {
    gc()
    await new Promise(resolve => setTimeout(resolve, 200))
    stats = loadRbd().stats()
  }
  t.same(stats, { clusters: before.clusters, images: before.images, requests: 0 }, 'every native handle released')
  // librados' threads and sockets go with rados_shutdown, on the finalizers' own thread.
  t.ok(fds() <= before.fds + 2, `file descriptors back to ${before.fds} (now ${fds()})`)
  t.ok(threads() <= before.threads + 2, `threads back to ${before.threads} (now ${threads()})`)
  t.match(await ceph.rbd('status', `${ceph.pool}/${name}`), /Watchers: none/, 'no watcher left on the image')
})

/**
 * A node process that opens `name` read-write as `image` (through cluster `c`),
 * runs `steps` (JS; `pool`, `name` and `MiB` are in scope too), prints `ready`,
 * then waits to be killed (`hold`) or ends without closing anything (`end`).
 */
function child(name: string, steps: string, then: 'hold' | 'end'): { ready: Promise<boolean>, exit: Promise<number | null>, kill(): void } {
  const proc = spawn(process.execPath, ['-e', `
    const rbd = require(${JSON.stringify(rbdAddonPath)})
    const pool = ${JSON.stringify(ceph.pool)}, name = ${JSON.stringify(name)}, MiB = ${MiB}
    ;(async () => {
      const c = await rbd.connect(${JSON.stringify({ user: ceph.user, monHost: `${ceph.monHost}:${ceph.port}`, keyring: ceph.keyring })})
      const image = await c.open(pool, name)
      ${steps}
      console.log('ready')
      ${then === 'hold' ? 'setInterval(() => {}, 1000)' : ''}
    })()
  `], { stdio: ['ignore', 'pipe', 'inherit'] })
  const exit = once(proc, 'exit').then(([code]: unknown[]) => typeof code === 'number' ? code : null)
  const ready = Promise.race([once(proc.stdout, 'data').then(() => true), exit.then(() => false)])
  return { ready, exit, kill: () => proc.kill('SIGKILL') }
}

t.test('a writer killed with SIGKILL holds up the next writer only briefly', { skip }, async t => {
  const name = await ceph.createImage(4)
  // A write takes the image's exclusive lock.
  const holder = child(name, 'await image.write(Buffer.alloc(512, 1), 0, 512, 0)', 'hold')
  if (!await holder.ready) return t.fail('the lock holder exited before it took the lock')
  holder.kill()
  await holder.exit

  const image = await cluster.open(ceph.pool, name)
  const started = Date.now()
  await image.write(Buffer.alloc(512, 2), 0, 512, 0)
  const seconds = (Date.now() - started) / 1000
  // Ceph's default osd_client_watch_timeout would make this ~30 s; scripts/ceph/up sets 10.
  t.ok(seconds < 20, `the next write waited ${seconds.toFixed(1)} s for the dead owner's lock`)
  await image.close()
})

t.test('a process that ends with images open exits cleanly, and its cached writes land', { skip }, async t => {
  const name = await ceph.createImage(4)
  // After the first flush librbd's cache is writeback: the second write is only in this process's memory.
  const steps = `
    await image.write(Buffer.alloc(MiB, 1), 0, MiB, 0)
    await image.flush()
    await image.write(Buffer.alloc(MiB, 2), 0, MiB, MiB)
    for (let i = 0; i < 4; i++) await c.open(pool, name, { readOnly: true })
  `
  for (let run = 0; run < 3; run++) {
    const ender = child(name, steps, 'end')
    t.ok(await ender.ready, 'the child did its writes')
    t.equal(await ender.exit, 0, `run ${run}: exit code 0 (librbd aborted when exit() ran under a close)`)
  }
  const reader = await cluster.open(ceph.pool, name, { readOnly: true })
  const back = Buffer.alloc(2 * MiB)
  await reader.read(back, 0, back.length, 0)
  await reader.close()
  t.ok(back.equals(Buffer.concat([Buffer.alloc(MiB, 1), Buffer.alloc(MiB, 2)])), 'the unflushed write was flushed by the close at exit')
  t.match(await ceph.rbd('status', `${ceph.pool}/${name}`), /Watchers: none/)
})
