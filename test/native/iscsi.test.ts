import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { loadIscsi, type IscsiConnectOptions, type IscsiLun } from '../../src/connectors/iscsi-binding.js'
import { IscsiConnector } from '../../src/connectors/iscsi.js'
import { needsTgt, Tgt } from '../helpers/tgt.js'

// The addon and the iscsi connector against a real tgtd (the userspace
// target Cinder's TgtAdm drives), started by this test on a free port.

const MiB = 1 << 20
const skip = needsTgt()
const initiator = 'iqn.2026-12.io.cinderfs:test'
const chap = { username: 'cinderfs-user', password: 'cinderfs-chap-secret' }
const iqn = (name: string): string => `iqn.2010-10.org.openstack:${name}`
let tgt: Tgt
let dir: string
let nextTid = 1

if (skip === false) {
  t.before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cinderfs-iscsi-'))
    tgt = await Tgt.start(t)
  })
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
}

/** A sparse file of `mib` MiB exported as LUN 1 of a new target with CHAP. */
async function target(mib: number, options: { readOnly?: boolean, on?: Tgt[] } = {}): Promise<{ iqn: string, file: string }> {
  const tid = nextTid++
  const name = iqn(`volume-${tid}-${crypto.randomBytes(3).toString('hex')}`)
  const file = path.join(dir, name)
  fs.writeFileSync(file, '')
  fs.truncateSync(file, mib * MiB)
  for (const daemon of options.on ?? [tgt]) await daemon.addTarget({ tid, iqn: name, file, chap, ...(options.readOnly === true ? { readOnly: true } : {}) })
  return { iqn: name, file }
}

function connect(name: string, options: Partial<IscsiConnectOptions> = {}): Promise<IscsiLun> {
  return loadIscsi().connect({ paths: [{ portal: tgt.portal, target: name, lun: 1 }], initiator, ...chap, timeoutSeconds: 10, ...options })
}

t.test('random unaligned writes through the connector read back equal, and equal to the backing file', { skip }, async t => {
  const size = 32 * MiB
  const { iqn: name, file } = await target(size / MiB)
  const device = await new IscsiConnector({ initiator }).connect({
    driverVolumeType: 'iscsi',
    data: { target_portal: tgt.portal, target_iqn: name, target_lun: 1, auth_method: 'CHAP', auth_username: chap.username, auth_password: chap.password },
  }, 'rw')
  t.equal(device.size, size)
  const expected = Buffer.alloc(size)
  for (let batch = 0; batch < 30; batch++) {
    // Concurrent writes may share a boundary block (the device orders those), never bytes.
    const ranges: Array<[number, number]> = []
    while (ranges.length < 8) {
      const length = 1 + crypto.randomInt(700 * 1024)
      const position = crypto.randomInt(size - length + 1)
      if (ranges.some(([p, l]) => position < p + l && p < position + length)) continue
      ranges.push([position, length])
    }
    await Promise.all(ranges.map(async ([position, length]) => {
      const data = crypto.randomBytes(length + 100)
      t.equal(await device.write(data, 37, length, position), length)
      data.copy(expected, position, 37, 37 + length)
    }))
  }
  await device.flush()
  const actual = Buffer.alloc(size)
  const chunk = 3 * MiB + 4097
  const reads: Array<Promise<number>> = []
  for (let position = 0; position < size; position += chunk) reads.push(device.read(actual, position, Math.min(chunk, size - position), position))
  t.equal((await Promise.all(reads)).reduce((a, b) => a + b, 0), size)
  t.ok(actual.equals(expected), 'read back through libiscsi')
  t.ok(fs.readFileSync(file).equals(expected), 'the backing file tgtd serves')
  t.equal(await device.read(actual, 0, 100, size - 10), 10, 'a read crossing the end is short')
  await t.rejects(device.write(actual, 0, 20, size - 10), { code: 'EFBIG' })
  await device.close()
  await t.rejects(device.close(), { code: 'EBADF' })
  t.equal(loadIscsi().stats().requests, 0, 'no request left behind')
})

t.test('the addon takes whole blocks within the LUN and the buffer', { skip }, async t => {
  const { iqn: name } = await target(4)
  const lun = await connect(name)
  t.equal(lun.blockSize(), 512)
  t.ok(lun.maxTransfer() >= 512)
  await t.rejects(lun.read(Buffer.alloc(512), 0, 100, 0), { code: 'EINVAL' })
  await t.rejects(lun.write(Buffer.alloc(1024), 0, 512, 3), { code: 'EINVAL' })
  await t.rejects(lun.write(Buffer.alloc(1024), 0, 1024, 4 * MiB - 512), { code: 'EFBIG' })
  t.throws(() => lun.read(Buffer.alloc(512), 1, 512, 0), RangeError)
  t.throws(() => lun.read(Buffer.alloc(512), 0, 512, -512), RangeError)
  t.equal(await lun.read(Buffer.alloc(512), 0, 512, 4 * MiB), 0, 'past the end reads nothing')
  await lun.close()
  await t.rejects(lun.read(Buffer.alloc(512), 0, 512, 0), { code: 'EBADF' })
})

t.test('wrong or missing CHAP credentials give EACCES; a missing target ENOENT; a missing LUN ENXIO', { skip }, async t => {
  const { iqn: name } = await target(1)
  const denied = connect(name, { password: 'not-the-chap-secret' })
  await t.rejects(denied, { code: 'EACCES' })
  t.notMatch(String(await denied.catch((err: unknown) => err)), /not-the-chap-secret/, 'the secret is not in the message')
  await t.rejects(loadIscsi().connect({ paths: [{ portal: tgt.portal, target: name, lun: 1 }], initiator }), { code: 'EACCES' })
  await t.rejects(connect(iqn('volume-no-such-target')), { code: 'ENOENT' })
  await t.rejects(loadIscsi().connect({ paths: [{ portal: tgt.portal, target: name, lun: 7 }], initiator, ...chap }), { code: 'ENXIO' })
  t.equal(loadIscsi().stats().requests, 0)
})

t.test('read-only: an ro attachment and a write-protected LUN refuse writes with EROFS', { skip }, async t => {
  const { iqn: name } = await target(1)
  const lun = await connect(name, { readOnly: true })
  await t.rejects(lun.write(Buffer.alloc(512), 0, 512, 0), { code: 'EROFS' })
  t.equal(await lun.read(Buffer.alloc(512), 0, 512, 0), 512)
  await lun.close()
  const { iqn: protectedName } = await target(1, { readOnly: true })
  const prot = await connect(protectedName)
  await t.rejects(prot.write(Buffer.alloc(512), 0, 512, 0), { code: 'EROFS' }, 'the target says DATA PROTECT')
  await prot.close()
})

t.test('tgtd killed during reads and started again: the reads complete after the reconnect, with the right bytes', { skip }, async t => {
  const { iqn: name, file } = await target(16)
  const data = crypto.randomBytes(16 * MiB)
  fs.writeFileSync(file, data)
  const lun = await connect(name, { timeoutSeconds: 20 })
  const buffers = Array.from({ length: 16 }, () => Buffer.alloc(MiB))
  // Stopped first, so not one of the reads can be served before the kill.
  tgt.signal('SIGSTOP')
  const reads = buffers.map((buffer, i) => lun.read(buffer, 0, MiB, i * MiB))
  await tgt.kill()
  await tgt.start()
  t.same(await Promise.all(reads), buffers.map(() => MiB))
  buffers.forEach((buffer, i) => { t.ok(buffer.equals(data.subarray(i * MiB, (i + 1) * MiB)), `MiB ${i}`) })
  // and the session keeps working
  const again = Buffer.alloc(MiB)
  await lun.read(again, 0, MiB, 3 * MiB)
  t.ok(again.equals(data.subarray(3 * MiB, 4 * MiB)))
  await lun.close()
})

t.test('a target that stops answering: the read fails EIO after the timeout, never hangs', { skip }, async t => {
  const { iqn: name } = await target(4)
  const lun = await connect(name, { timeoutSeconds: 2 })
  tgt.signal('SIGSTOP')
  const started = Date.now()
  try {
    await t.rejects(lun.read(Buffer.alloc(MiB), 0, MiB, 0), { code: 'EIO' })
  } finally {
    tgt.signal('SIGCONT')
  }
  const took = Date.now() - started
  t.ok(took >= 1500 && took < 10_000, `failed after ${took} ms (timeout 2 s)`)
  // the target answers again: the same handle reconnects
  t.equal(await lun.read(Buffer.alloc(MiB), 0, MiB, 0), MiB)
  await lun.close()
})

t.test('the second portal takes over when the first one is gone', { skip }, async t => {
  const second = await Tgt.start(t)
  const { iqn: name, file } = await target(4, { on: [tgt, second] })
  const data = crypto.randomBytes(4 * MiB)
  fs.writeFileSync(file, data)
  const lun = await connect(name, { paths: [{ portal: tgt.portal, target: name, lun: 1 }, { portal: second.portal, target: name, lun: 1 }] })
  t.equal(lun.portal(), tgt.portal)
  await tgt.kill()
  const back = Buffer.alloc(4 * MiB)
  t.equal(await lun.read(back, 0, back.length, 0), back.length)
  t.ok(back.equals(data))
  t.equal(lun.portal(), second.portal, 'now on the second portal')
  await lun.write(data, 0, MiB, MiB)
  await lun.flush()
  await lun.close()
  await tgt.start()
})
