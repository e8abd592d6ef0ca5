import fs from 'node:fs/promises'
import t, { type Test } from 'tap'
import type { AttachMode } from '../../src/model/volume.js'
import type { CinderClient } from '../../src/openstack/cinder.js'
import { formatMicroversion } from '../../src/openstack/microversion.js'
import { CLOUDS, devicePath, openStackSuite, readAt, rigLoopDevices, testName, testService, writeAt } from '../helpers/openstack.js'

const { skip, admin } = openStackSuite(t)
/** Leftovers are counted from here: the rig may be shared with other runs. */
const started = new Date()

async function cinder(t: Test, options: { cloud?: string, maxMicroversion?: string } = {}): Promise<{ client: CinderClient, lines: string[] }> {
  const { service, lines } = testService(t, options)
  return { client: await service.client(), lines }
}

async function newVolume(t: Test, client: CinderClient, what: string, volumeType?: string): Promise<string> {
  const created = await client.createVolume({ name: testName(what), size: 1, metadata: {}, ...(volumeType === undefined ? {} : { volumeType }) })
  t.teardown(async () => {
    try {
      await client.deleteVolume(created.id)
    } catch (err) {
      if ((err as { code?: string }).code !== 'ENOENT') throw err
    }
  })
  await client.waitForStatus(created.id, ['creating'], 'available')
  return created.id
}

t.test('negotiates the newest common microversion, or stays at a forced maximum', { skip }, async t => {
  const { client, lines } = await cinder(t)
  t.equal(formatMicroversion(client.microversion), '3.54', 'what the client knows, below the server maximum')
  t.ok(lines.some(l => l.includes('"serverMax":"3.70"')), 'the server maximum is logged')
  for (const forced of ['3.0', '3.27', '3.42']) {
    t.equal(formatMicroversion((await cinder(t, { maxMicroversion: forced })).client.microversion), forced, `forced ${forced}`)
  }
})

t.test('an endpoint override with %(project_id)s is used instead of the catalog', { skip }, async t => {
  const { service, lines } = testService(t, { endpointOverride: 'http://127.0.0.1:8776/v3/%(project_id)s/' })
  const client = await service.client()
  t.ok(lines.some(l => /"endpoint":"http:\/\/127\.0\.0\.1:8776\/v3\/[0-9a-f]{32}"/.test(l)), 'filled in, trailing slash dropped')
  t.ok(Array.isArray((await client.listVolumes({ limit: 1 })).volumes), 'and it answers')
})

const flows: [string, string][] = [['3.0', 'legacy actions'], ['3.27', 'legacy actions (3.27 has no attachment mode)'], ['3.54', 'attachments API']]
for (const [microversion, how] of flows) {
  t.test(`at ${microversion}, attach rw, write, detach, then a read-only volume attaches ro, through the ${how}`, { skip }, async t => {
    const { client } = await cinder(t, { maxMicroversion: microversion })
    const volumeId = await newVolume(t, client, `flow-${microversion}`)
    const rw = await client.attach(volumeId, 'rw')
    t.equal(rw.mode, 'rw')
    t.equal(rw.connectionInfo.driverVolumeType, 'local')
    const device = devicePath(rw.connectionInfo)
    t.ok((await fs.stat(device)).isBlockDevice(), `${device} is a block device`)
    t.equal((await client.showVolume(volumeId)).status, 'in-use')
    t.same((await client.ownAttachments()).map(a => a.id), [rw.id], 'listed as this host\'s attachment')
    await writeAt(device, `written at ${microversion}`)
    await client.detach(rw)
    t.equal((await client.showVolume(volumeId)).status, 'available', 'available again after detach')
    t.same(rigLoopDevices(), [], 'the loop device is gone')

    await client.setReadOnlyFlag(volumeId, true)
    const ro = await client.attach(volumeId, 'rw' satisfies AttachMode)
    t.equal(ro.mode, 'ro', 'asked for rw, got ro: the volume is read-only')
    const roDevice = devicePath(ro.connectionInfo)
    t.equal(await readAt(roDevice, `written at ${microversion}`.length), `written at ${microversion}`, 'the bytes are there')
    await t.rejects(writeAt(roDevice, 'overwrite'), { code: 'EPERM' }, 'the device refuses writes')
    await client.detach(ro)
    await client.detach(ro)
    t.pass('a second detach of the same attachment is harmless')
  })
}

t.test('as a plain member, an ro attachment is read-only even where access_mode says rw', { skip }, async t => {
  const { client } = await cinder(t, { cloud: CLOUDS.member })
  const volumeId = await newVolume(t, client, 'member-ro')
  const ro = await client.attach(volumeId, 'ro')
  t.equal(ro.mode, 'ro', 'the attachment says ro')
  t.comment(`connection_info.access_mode: ${String(ro.connectionInfo.data.access_mode)}`)
  await t.rejects(writeAt(devicePath(ro.connectionInfo), 'x'), { code: 'EPERM' }, 'and the device is read-only')
  await client.detach(ro)
})

t.test('a normal volume takes one attachment at a time; a multiattach volume takes two', { skip }, async t => {
  const { client } = await cinder(t)
  const single = await newVolume(t, client, 'single')
  const first = await client.attach(single, 'ro')
  await t.rejects(client.attach(single, 'ro'), { code: 'EBUSY', message: /status must be available/ }, 'second attach: EBUSY')
  await t.rejects(client.setReadOnlyFlag(single, true), { code: 'EBUSY' }, 'the readonly flag cannot change while in use')
  await client.detach(first)
  t.equal((await client.showVolume(single)).status, 'available', 'the refused attach left nothing behind')

  const shared = await newVolume(t, client, 'multi', 'multiattach')
  t.ok((await client.showVolume(shared)).multiattach, 'the multiattach type makes a multiattach volume')
  const a = await client.attach(shared, 'ro')
  const b = await client.attach(shared, 'ro')
  t.equal(devicePath(a.connectionInfo), devicePath(b.connectionInfo), 'both readers share the ro loop device')
  await client.detach(a)
  t.equal((await fs.stat(devicePath(b.connectionInfo))).isBlockDevice(), true, 'still there for the second reader')
  await client.detach(b)
  t.same(rigLoopDevices(), [], 'gone with the last reader')
})

t.test('an error status fails the wait at once, with the status in the message', { skip }, async t => {
  const type = testName('nowhere')
  const created = await admin().send('POST', '/types', { volume_type: { name: type, extra_specs: { volume_backend_name: 'no-such-backend' } } }) as { volume_type: { id: string } }
  t.teardown(() => admin().send('DELETE', `/types/${created.volume_type.id}`))
  const { client } = await cinder(t)
  const volume = await client.createVolume({ name: testName('error'), size: 1, metadata: {}, volumeType: type })
  t.teardown(() => client.deleteVolume(volume.id))
  const started = Date.now()
  await t.rejects(client.waitForStatus(volume.id, ['creating'], 'available'), { code: 'EIO', message: `volume ${volume.id} went to status error` })
  t.ok(Date.now() - started < 30_000, 'without waiting for the timeout')
})

t.test('lists volumes by name, by status and by metadata, as Glance looks images up', { skip }, async t => {
  const { client } = await cinder(t)
  const [a, b] = [await newVolume(t, client, 'filter'), await newVolume(t, client, 'filter')]
  const imageId = `image-${a}`
  await client.mergeMetadata(a, { glance_image_id: imageId })
  const ids = async (filters: Parameters<CinderClient['listVolumes']>[1]): Promise<string[]> => (await client.listVolumes({}, filters)).volumes.map(v => v.id)
  t.same(await ids({ metadata: { glance_image_id: imageId } }), [a], 'by metadata')
  t.same(await ids({ name: (await client.showVolume(b)).name }), [b], 'by exact name')
  const available = await ids({ status: 'available' })
  t.ok(available.includes(a) && available.includes(b), 'by status')
})

t.test('an unknown volume is ENOENT, and the error and its log line carry the request id', { skip }, async t => {
  const { client, lines } = await cinder(t)
  const missing = '00000000-0000-4000-8000-000000000000'
  const err = await client.showVolume(missing).catch((e: unknown) => e) as { code: string, details: { requestId?: string } }
  t.equal(err.code, 'ENOENT')
  t.match(err.details.requestId, /^req-/)
  t.ok(lines.some(l => l.includes(missing) && l.includes(err.details.requestId ?? '?')), 'logged with the request id')
})

t.test('no test volume, attachment or loop device is left', { skip }, async t => {
  t.same(await admin().leftovers(started), { volumes: [], attachments: [] })
  t.same(rigLoopDevices(), [])
})
