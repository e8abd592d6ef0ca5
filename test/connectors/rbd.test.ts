import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import type { ConnectionInfo } from '../../src/model/volume.js'
import { keyringKey, parseRbdConnectionInfo, RbdConnector } from '../../src/connectors/rbd.js'
import { loadRbd } from '../../src/connectors/rbd-binding.js'
import { needsCeph, startCeph, type CephCluster } from '../helpers/ceph.js'

const MiB = 1 << 20
const skip = needsCeph()
let ceph: CephCluster
let connector: RbdConnector

if (skip === false) {
  t.before(async () => {
    ceph = await startCeph(t)
    connector = new RbdConnector({ keyringDir: ceph.keyringDir })
  })
}

/** What Cinder's RBD driver returns from initialize_connection, flattened. */
function cinderInfo(image: string, extra: Record<string, unknown> = {}): ConnectionInfo {
  return {
    driverVolumeType: 'rbd',
    data: {
      name: `${ceph.pool}/${image}`,
      hosts: [ceph.monHost],
      ports: [ceph.port],
      cluster_name: 'ceph',
      auth_enabled: true,
      auth_username: ceph.user,
      secret_type: 'ceph',
      secret_uuid: crypto.randomUUID(),
      volume_id: image.replace(/^volume-/, ''),
      discard: true,
      ...extra,
    },
  }
}

t.test('connection info parses as os-brick reads it', async t => {
  t.same(parseRbdConnectionInfo({
    name: 'volumes/volume-1', hosts: ['10.0.0.1', 'fd00::2'], ports: ['6789', 6790], auth_username: 'cinder', cluster_name: 'ceph',
  }), { pool: 'volumes', image: 'volume-1', cluster: 'ceph', user: 'cinder', monHost: '10.0.0.1:6789,[fd00::2]:6790' })
  t.equal(parseRbdConnectionInfo({ name: 'p/i', auth_username: 'u' }).cluster, 'ceph', 'cluster_name defaults to ceph')
  for (const bad of [
    { name: 'volume-1', auth_username: 'cinder' },
    { name: 'volumes/', auth_username: 'cinder' },
    { name: 'volumes/v' },
    { name: 'volumes/v', auth_username: 'cinder', hosts: ['a', 'b'], ports: ['6789'] },
    { name: 'volumes/v', auth_username: 'cinder', hosts: [7], ports: ['6789'] },
  ]) t.throws(() => parseRbdConnectionInfo(bad), { code: 'EINVAL' }, JSON.stringify(bad))
})

t.test('the key comes from the [client.<user>] section of a keyring', async t => {
  const text = '[client.admin]\n\tkey = AAAA==\n[client.cinder]\n\tkey = BBBB==\n\tcaps mon = "profile rbd"\n'
  t.equal(keyringKey(text, 'client.cinder'), 'BBBB==')
  t.equal(keyringKey(text, 'client.glance'), undefined)
})

t.test('keyring lookup: <dir>/<cluster>.client.<user>.keyring, with clear errors', { skip }, async t => {
  const key = await connector.readKey('ceph', ceph.user)
  t.match(fs.readFileSync(ceph.keyring, 'utf8'), key)

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cinderfs-keyrings-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const elsewhere = new RbdConnector({ keyringDir: dir })
  await t.rejects(elsewhere.connect(cinderInfo('volume-x'), 'ro'), { code: 'ENOENT', message: /ceph\.client\.cinder\.keyring/ })
  fs.writeFileSync(path.join(dir, 'ceph.client.cinder.keyring'), `[client.glance]\n\tkey = ${key}\n`)
  await t.rejects(elsewhere.connect(cinderInfo('volume-x'), 'ro'), { code: 'EACCES', message: /no key for client\.cinder/ })
  t.equal(loadRbd().stats().clusters, 0, 'no connection is left behind by failed attaches')
})

t.test('one shared connection per cluster and user, closed with the last device', { skip }, async t => {
  const [a, b] = [await ceph.createImage(1), await ceph.createImage(1)]
  const baseline = loadRbd().stats().clusters
  const [first, second, again] = await Promise.all([
    connector.connect(cinderInfo(a), 'rw'), connector.connect(cinderInfo(b), 'rw'), connector.connect(cinderInfo(a), 'ro'),
  ])
  t.equal(loadRbd().stats().clusters, baseline + 1, 'three attaches, one librados connection')
  t.equal(loadRbd().stats().images, 3)
  await first.close()
  await t.rejects(first.close(), { code: 'EBADF' }, 'closing twice')
  await again.close()
  t.equal(loadRbd().stats().clusters, baseline + 1, 'kept while a device uses it')
  await second.close()
  t.same(loadRbd().stats(), { clusters: baseline, images: 0, requests: 0 }, 'closed with the last device')
  await t.rejects(connector.connect(cinderInfo('volume-missing'), 'rw'), { code: 'ENOENT', message: /volume-missing/ })
  t.equal(loadRbd().stats().clusters, baseline, 'a failed open releases its connection')
})

t.test('rw devices write and flush; ro devices read them and refuse writes with EROFS', { skip }, async t => {
  const image = await ceph.createImage(8)
  const rw = await connector.connect(cinderInfo(image), 'rw')
  t.equal(rw.writable, true)
  t.equal(rw.path, `rbd:${ceph.pool}/${image}`)
  t.equal(rw.size, 8 * MiB)
  const data = crypto.randomBytes(MiB + 3)
  t.equal(await rw.write(data, 0, data.length, 12345), data.length)
  await rw.flush()

  const ro = await connector.connect(cinderInfo(image, { access_mode: 'ro' }), 'ro')
  t.equal(ro.writable, false)
  const back = Buffer.alloc(data.length)
  t.equal(await ro.read(back, 0, back.length, 12345), data.length)
  t.ok(back.equals(data), 'the read-only device sees the flushed data')
  await t.rejects(ro.write(data, 0, 10, 0), { code: 'EROFS' })
  await ro.flush() // what fsync on a read-only file does
  await ro.close()
  await rw.close()
})

t.test('a write past the end gives EFBIG and leaves the data alone', { skip }, async t => {
  const image = await ceph.createImage(1)
  const device = await connector.connect(cinderInfo(image), 'rw')
  await device.write(Buffer.alloc(100, 7), 0, 100, MiB - 100)
  await t.rejects(device.write(Buffer.alloc(200, 9), 0, 200, MiB - 100), { code: 'EFBIG' })
  const back = Buffer.alloc(100)
  await device.read(back, 0, 100, MiB - 100)
  t.ok(back.equals(Buffer.alloc(100, 7)))
  await device.close()
})

t.test('refreshSize sees an extend, on rw and ro devices', { skip }, async t => {
  const image = await ceph.createImage(4)
  const rw = await connector.connect(cinderInfo(image), 'rw')
  const ro = await connector.connect(cinderInfo(image), 'ro')
  await rw.write(Buffer.alloc(10, 3), 0, 10, 4 * MiB - 10)
  await ceph.rbd('resize', '--no-progress', '--size', '12M', `${ceph.pool}/${image}`)
  t.equal(await rw.refreshSize(), 12 * MiB)
  t.equal(rw.size, 12 * MiB)
  t.equal(await ro.refreshSize(), 12 * MiB)
  t.equal(ro.size, 12 * MiB)
  t.equal(await rw.write(Buffer.alloc(10, 4), 0, 10, 12 * MiB - 10), 10, 'the new space is writable')
  await rw.flush()
  const back = Buffer.alloc(20)
  t.equal(await ro.read(back, 0, 20, 12 * MiB - 20), 20)
  t.ok(back.equals(Buffer.concat([Buffer.alloc(10), Buffer.alloc(10, 4)])), 'the ro device reads the new end')
  t.equal(loadRbd().stats().images, 2, 'the ro device swapped its handle, it did not add one')
  await ro.close()
  await rw.close()
})

t.test('with no monitors in the connection info, a configured ceph.conf names them', { skip }, async t => {
  const info = cinderInfo(await ceph.createImage(1), { hosts: [], ports: [] })
  await t.rejects(connector.connect(info, 'ro'), { code: 'EINVAL', message: /no monitors/ })
  const device = await new RbdConnector({ keyringDir: ceph.keyringDir, conf: ceph.conf }).connect(info, 'ro')
  t.equal(device.size, MiB)
  await device.close()
})

t.test('an unreachable monitor fails with ETIMEDOUT, not a hang, and leaves no connection', { skip }, async t => {
  const impatient = new RbdConnector({ keyringDir: ceph.keyringDir, radosOptions: { client_mount_timeout: '2' } })
  const started = Date.now()
  await t.rejects(impatient.connect(cinderInfo(await ceph.createImage(1), { ports: ['1'] }), 'ro'), { code: 'ETIMEDOUT', message: /127\.0\.0\.1:1/ })
  t.ok(Date.now() - started < 15_000, 'within client_mount_timeout')
  t.equal(loadRbd().stats().clusters, 0)
})

t.test('connection info of another type is refused', async t => {
  await t.rejects(new RbdConnector().connect({ driverVolumeType: 'iscsi', data: {} }, 'rw'), { code: 'EINVAL' })
})
