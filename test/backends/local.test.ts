import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { pino } from 'pino'
import t from 'tap'
import { LocalVolumeService } from '../../src/backends/local.js'
import { listAll } from '../../src/backends/volume-service.js'
import { GiB } from '../../src/model/volume.js'
import { needsLoopDevices } from '../helpers/requirements.js'

async function service(t: tap.Test, useLoopDevices: boolean): Promise<LocalVolumeService> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cinderfs-local-'))
  const svc = await LocalVolumeService.open({ dir, host: 'test-host', useLoopDevices, logger: pino({ level: 'silent' }) })
  t.teardown(async () => {
    for (const a of await svc.listOwnAttachments()) await svc.detach(a)
    await svc.close()
    await fs.rm(dir, { recursive: true, force: true })
  })
  return svc
}

t.test('the VolumeService contract on the embedded backend (plain files)', async t => {
  const svc = await service(t, false)
  const a = await svc.create({ name: 'image-a', sizeGiB: 1, metadata: { image_owner: 'p' } })
  t.equal(a.status, 'available')
  t.equal((await fs.stat((await svc.attach(a.id, 'rw')).connectionInfo.data.device_path as string)).size, GiB, 'a sparse file of the volume size')
  for (const attachment of await svc.listOwnAttachments()) await svc.detach(attachment)

  for (let i = 0; i < 4; i++) await svc.create({ name: `image-${i}`, sizeGiB: 1, metadata: {} })
  const page = await svc.list({ limit: 2 })
  t.equal(page.volumes.length, 2)
  t.ok(page.next, 'a marker for the next page')
  t.equal((await listAll(svc, 2)).length, 5, 'paging reaches every volume')

  await svc.rename(a.id, 'image-b')
  await svc.updateMetadata(a.id, { image_size: '10', image_owner: null })
  const renamed = await svc.get(a.id)
  t.equal(renamed.name, 'image-b')
  t.same(renamed.metadata, { image_size: '10' }, 'metadata merged; null removes a key')

  await svc.extend(a.id, 3, false)
  await svc.extend(a.id, 2, false)
  t.equal((await svc.get(a.id)).sizeGiB, 3, 'extend grows; a smaller size is a no-op')

  await svc.setReadOnly(a.id, true)
  const ro = await svc.attach(a.id, 'rw')
  t.equal(ro.mode, 'ro', 'a read-only volume attaches read-only whatever was asked')
  t.equal((await svc.get(a.id)).status, 'in-use')
  await t.rejects(svc.delete(a.id), { code: 'EBUSY' }, 'an attached volume cannot be deleted')
  await t.rejects(svc.setReadOnly(a.id, false), { code: 'EBUSY' }, 'the flag cannot change while attached')
  await svc.detach(ro)
  await svc.delete(a.id)
  await t.rejects(svc.get(a.id), { code: 'ENOENT' })
  await t.rejects(svc.get('../../etc/passwd'), { code: 'ENOENT' }, 'ids are never paths')
  await t.rejects(svc.create({ name: `image-${'x'.repeat(250)}`, sizeGiB: 1, metadata: {} }), { code: 'ENAMETOOLONG' })
})

t.test('one daemon per directory', async t => {
  const svc = await service(t, false)
  const dir = path.dirname((await svc.attach((await svc.create({ name: 'image-x', sizeGiB: 1, metadata: {} })).id, 'ro')).connectionInfo.data.device_path as string)
  const child = await import('node:child_process')
  const holder = child.spawn('sleep', ['30'])
  t.teardown(() => { holder.kill() })
  await fs.writeFile(path.join(dir, 'cinderfs.pid'), `${holder.pid}\n`)
  await t.rejects(LocalVolumeService.open({ dir, host: 'h', useLoopDevices: false, logger: pino({ level: 'silent' }) }), { code: 'EBUSY', message: /in use by cinderfs pid/ })
})

t.test('as root, attachments are loop devices (read-only for ro) and recovery finds leftovers', { skip: needsLoopDevices() }, async t => {
  const svc = await service(t, true)
  const v = await svc.create({ name: 'image-l', sizeGiB: 1, metadata: {} })
  const rw = await svc.attach(v.id, 'rw')
  t.match(rw.connectionInfo.data.device_path, /^\/dev\/loop\d+$/)
  const ro = await svc.attach(v.id, 'ro')
  const roDevice = ro.connectionInfo.data.device_path as string
  t.equal((await fs.readFile(`/sys/block/${path.basename(roDevice)}/ro`, 'utf8')).trim(), '1', 'the ro attachment is a read-only loop device')
  t.same((await svc.listOwnAttachments()).map(a => a.id).sort(), [rw.id, ro.id].sort(), 'both attachments are listed as ours')
})
