import { execFileSync } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { CinderVolumeService } from '../../src/backends/cinder.js'
import { listAll } from '../../src/backends/volume-service.js'
import { GiB, type Attachment } from '../../src/model/volume.js'
import { openStackSettings } from '../../src/config/openstack.js'
import { capturingLogger, cloudSettings, CLOUDS, devicePath, openStackSuite, readAt, rigLoopDevices, STATE_DIR, testName, testService, writeAt } from '../helpers/openstack.js'

const { skip, admin } = openStackSuite(t)
/** Leftovers are counted from here: the rig may be shared with other runs. */
const started = new Date()
const service = (t: Test, options: Parameters<typeof testService>[1] = {}): CinderVolumeService => testService(t, options).service

/** A 1 GiB test volume, deleted when the test ends (detached first if needed). */
async function volume(t: Test, svc: CinderVolumeService, metadata: Record<string, string> = {}): Promise<string> {
  const { id } = await svc.create({ name: testName('vol'), sizeGiB: 1, metadata })
  t.teardown(async () => {
    for (const a of await svc.listOwnAttachments()) if (a.volumeId === id) await svc.detach(a)
    await svc.delete(id).catch((err: unknown) => {
      if ((err as { code?: string }).code !== 'ENOENT') throw err
    })
  })
  return id
}

const device = (attachment: Attachment): string => devicePath(attachment.connectionInfo)

function deviceBytes(path: string): number {
  return Number(execFileSync('blockdev', ['--getsize64', path], { encoding: 'utf8' }).trim())
}

t.test('create, get, list in pages, rename, and metadata merge with deletes', { skip }, async t => {
  const svc = service(t)
  const ids = [
    await volume(t, svc, { image_size: '1', keep: 'me' }),
    await volume(t, svc),
    await volume(t, svc),
  ]
  const got = await svc.get(ids[0] ?? '')
  t.match(got, { id: ids[0], sizeGiB: 1, status: 'available', readOnly: false, multiattach: false })
  t.same(got.metadata, { image_size: '1', keep: 'me' })
  t.ok(Date.now() - got.createdAt.getTime() < 120_000, 'createdAt is now (UTC)')

  let pages = 0
  const first = await svc.list({ limit: 1 })
  t.equal(first.volumes.length, 1, 'a page holds at most limit volumes')
  t.ok(first.next, 'and says where the next one starts')
  for (let marker = first.next; marker !== undefined; marker = (await svc.list({ limit: 1, marker })).next) pages++
  t.ok(pages >= 2, 'several pages')
  const all = (await listAll(svc, 1)).map(v => v.id)
  for (const id of ids) t.ok(all.includes(id), `${id} is listed`)

  const name = testName('renamed')
  await svc.rename(ids[0] ?? '', name)
  t.equal((await svc.get(ids[0] ?? '')).name, name, 'renamed')

  await svc.updateMetadata(ids[0] ?? '', { image_size: '42', glance_image_id: 'abc', keep: null, never_there: null })
  t.same((await svc.get(ids[0] ?? '')).metadata, { image_size: '42', glance_image_id: 'abc' }, 'merged, removed, and a missing key is no error')
  await t.rejects(svc.get('00000000-0000-4000-8000-000000000000'), { code: 'ENOENT' })
})

t.test('read-only: shown as readOnly, not as metadata, and forces ro attachments', { skip }, async t => {
  const svc = service(t)
  const id = await volume(t, svc, { image_size: '5' })
  const rw = await svc.attach(id, 'rw')
  await writeAt(device(rw), 'image bytes')
  await svc.detach(rw)
  await svc.setReadOnly(id, true)
  const v = await svc.get(id)
  t.equal(v.readOnly, true)
  t.same(v.metadata, { image_size: '5' }, 'Cinder\'s readonly key is not user metadata')
  const ro = await svc.attach(id, 'rw')
  t.equal(ro.mode, 'ro', 'a rw request on a read-only volume is granted ro')
  t.equal(await readAt(device(ro), 11), 'image bytes')
  await t.rejects(writeAt(device(ro), 'changed'), { code: 'EPERM' })
  await t.rejects(svc.setReadOnly(id, false), { code: 'EBUSY' }, 'the flag cannot change while attached')
  await svc.detach(ro)
  await svc.setReadOnly(id, false)
  t.equal((await svc.get(id)).readOnly, false, 'and can be cleared again')
})

t.test('extend offline and online: an attached device grows in place; never shrinks', { skip }, async t => {
  const svc = service(t)
  const id = await volume(t, svc)
  await svc.extend(id, 2, false)
  t.equal((await svc.get(id)).sizeGiB, 2, 'offline extend')
  const rw = await svc.attach(id, 'rw')
  await writeAt(device(rw), 'tail', 2 * GiB - 4)
  await svc.extend(id, 3, true)
  t.equal((await svc.get(id)).sizeGiB, 3, 'online extend')
  t.equal((await svc.get(id)).status, 'in-use', 'still attached')
  t.equal(deviceBytes(device(rw)), 3 * GiB, 'the device shows the new size at once')
  t.equal(await readAt(device(rw), 4, 2 * GiB - 4), 'tail', 'data kept')
  await svc.extend(id, 2, true)
  t.equal((await svc.get(id)).sizeGiB, 3, 'a smaller size is a no-op')
  await svc.detach(rw)
})

t.test('before 3.42 an attached volume cannot be extended in place: ENOTSUP, then detach, extend, reattach', { skip }, async t => {
  const svc = service(t, { maxMicroversion: '3.27' })
  const id = await volume(t, svc)
  const attachment = await svc.attach(id, 'rw')
  await writeAt(device(attachment), 'kept across the reattach')
  await t.rejects(svc.extend(id, 2, true), { code: 'ENOTSUP' }, 'the holder of the device is told to do it')
  await svc.detach(attachment)
  await svc.extend(id, 2, false)
  const again = await svc.attach(id, 'rw')
  t.equal(deviceBytes(device(again)), 2 * GiB, 'the new device has the new size')
  t.equal(await readAt(device(again), 24), 'kept across the reattach')
  await svc.detach(again)
  t.equal((await svc.get(id)).status, 'available')
})

t.test('listOwnAttachments shows this host\'s attachments only', { skip }, async t => {
  const mine = service(t, { host: 'cinderfs-test-a' })
  const theirs = service(t, { host: 'cinderfs-test-b' })
  const id = await volume(t, mine)
  const attachment = await mine.attach(id, 'rw')
  const own = await mine.listOwnAttachments()
  t.same(own.map(a => ({ id: a.id, volumeId: a.volumeId, mode: a.mode, type: a.connectionInfo.driverVolumeType })),
    [{ id: attachment.id, volumeId: id, mode: 'rw', type: 'local' }])
  t.same(await theirs.listOwnAttachments(), [], 'another host sees none of them')
  await t.rejects(theirs.attach(id, 'ro'), { code: 'EBUSY', message: `volume ${id} is attached to cinderfs-test-a and is not multiattach: readers on several hosts need a multiattach volume type` },
    'and cannot attach a normal volume in use: the error names the holder and the fix')
  await t.rejects(mine.delete(id), { code: 'EBUSY' }, 'an attached volume cannot be deleted')
  await mine.detach(attachment)
  t.same(await mine.listOwnAttachments(), [], 'gone after detach')
  await mine.delete(id)
  await t.rejects(mine.get(id), { code: 'ENOENT' }, 'deleted volumes are gone at once')
})

t.test('eight volumes at once: create, attach, write, read back ro, detach, delete', { skip }, async t => {
  const svc = service(t)
  const cycle = async (i: number): Promise<string> => {
    const id = await volume(t, svc, { image_size: String(i) })
    const rw = await svc.attach(id, 'rw')
    await writeAt(device(rw), `volume number ${i}`)
    await svc.detach(rw)
    await svc.setReadOnly(id, true)
    const ro = await svc.attach(id, 'ro')
    const text = await readAt(device(ro), `volume number ${i}`.length)
    await svc.detach(ro)
    await svc.delete(id)
    return text
  }
  const texts = await Promise.all(Array.from({ length: 8 }, (_, i) => cycle(i)))
  t.same(texts, Array.from({ length: 8 }, (_, i) => `volume number ${i}`), 'each reader saw its own volume\'s bytes')
  t.same(await svc.listOwnAttachments(), [], 'no attachment left')
})

t.test('a tiny quota: create fails with EDQUOT and leaves no volume', { skip }, async t => {
  const project = await admin().projectId(CLOUDS.member)
  await admin().send('PUT', `/os-quota-sets/${project}`, { quota_set: { gigabytes: 1 } })
  t.teardown(() => admin().send('DELETE', `/os-quota-sets/${project}`))
  const svc = service(t, { cloud: CLOUDS.member })
  t.same(await svc.capacity(), { totalBytes: GiB, freeBytes: GiB }, 'statfs sees the quota')
  const name = testName('quota')
  await t.rejects(svc.create({ name, sizeGiB: 2, metadata: {} }), { code: 'EDQUOT', message: /exceeded|quota/i })
  const left = await admin().send('GET', `/volumes?all_tenants=1&name=${name}`) as { volumes: unknown[] }
  t.same(left.volumes, [], 'no volume was made')
})

t.test('configured from glance-api.conf or the OS_* variables, it acts as Glance\'s account', { skip }, async t => {
  const glance = cloudSettings(CLOUDS.glance)
  if (glance.credentials.method !== 'password') throw new Error('the glance cloud uses a password')
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cinderfs-glance-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const conf = path.join(dir, 'glance-api.conf')
  await fs.writeFile(conf, [
    '[glance_store]',
    'stores = cinder',
    `cinder_store_auth_address = ${glance.authUrl}`,
    'cinder_store_user_name = glance',
    `cinder_store_password = ${glance.credentials.password}`,
    'cinder_store_project_name = service',
    'cinder_catalog_info = volumev3::publicURL',
    'cinder_os_region_name = RegionOne',
    'cinder_volume_type = multiattach',
    'cinder_state_transition_timeout = 60',
    '',
  ].join('\n'))
  const fromGlance = new CinderVolumeService({ settings: openStackSettings({ glanceConfig: conf }), logger: capturingLogger().logger, host: 'cinderfs-test-host' })
  t.teardown(() => fromGlance.close())
  const id = await volume(t, fromGlance)
  t.equal((await fromGlance.get(id)).multiattach, true, 'cinder_volume_type is used for new volumes')

  // the rig's openstack.env, as an operator would source it
  const env: Record<string, string> = {}
  for (const line of (await fs.readFile(path.join(STATE_DIR, 'openstack.env'), 'utf8')).split('\n')) {
    const m = /^export (\w+)=(.*)$/.exec(line)
    if (m !== null) env[m[1] ?? ''] = m[2] ?? ''
  }
  const fromEnv = new CinderVolumeService({ settings: openStackSettings({ env }), logger: capturingLogger().logger })
  t.teardown(() => fromEnv.close())
  t.equal((await fromEnv.get(id)).id, id, 'the same project sees the same volume')
})

t.test('after the suite no test volume, attachment or loop device is left', { skip }, async t => {
  t.same(await admin().leftovers(started), { volumes: [], attachments: [] })
  t.same(rigLoopDevices(), [])
})
