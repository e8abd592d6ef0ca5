import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { pino } from 'pino'
import t from 'tap'
import { AttachmentManager } from '../../src/attachments/attachment-manager.js'
import { LocalVolumeService } from '../../src/backends/local.js'
import { LocalConnector } from '../../src/connectors/local.js'
import { ConnectorRegistry } from '../../src/connectors/registry.js'
import { Janitor } from '../../src/janitor/janitor.js'

const logger = pino({ level: 'silent' })

async function setup(t: tap.Test, idleDetachMs: number, connectors = [new LocalConnector({ allowRegularFiles: true })]) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cinderfs-attach-'))
  const service = await LocalVolumeService.open({ dir, host: 'h', useLoopDevices: false, logger })
  const manager = new AttachmentManager({ service, connectors: new ConnectorRegistry(connectors), idleDetachMs, logger, janitor: new Janitor({ logger }) })
  t.teardown(async () => {
    await manager.detachAll()
    await service.close()
    await fs.rm(dir, { recursive: true, force: true })
  })
  const volume = await service.create({ name: 'image-a', sizeGiB: 1, metadata: {} })
  return { service, manager, volumeId: volume.id }
}

t.test('one attachment shared by every lease; detached after the idle time', async t => {
  const { service, manager, volumeId } = await setup(t, 100)
  const [a, b] = await Promise.all([manager.acquire(volumeId, 'ro'), manager.acquire(volumeId, 'ro')])
  t.equal(a.attachment.id, b.attachment.id, 'both leases share one attachment')
  t.equal((await service.listOwnAttachments()).length, 1, 'the backend has one attachment')
  a.release()
  b.release()
  t.equal((await service.listOwnAttachments()).length, 1, 'still attached right after the last release')
  await sleep(400)
  t.same(await service.listOwnAttachments(), [], 'detached after the idle time')
})

t.test('a read-write lease shares; a write on a read-only attachment is refused', async t => {
  const { manager, volumeId } = await setup(t, 10_000)
  const rw = await manager.acquire(volumeId, 'rw')
  const ro = await manager.acquire(volumeId, 'ro')
  t.equal(ro.attachment.id, rw.attachment.id, 'a reader uses the writer\'s attachment')
  rw.release()
  ro.release()
  await manager.detach(volumeId)
  const reader = await manager.acquire(volumeId, 'ro')
  await t.rejects(manager.acquire(volumeId, 'rw'), { code: 'EBUSY' }, 'no writer on a read-only attachment')
  reader.release()
})

t.test('a failed connect leaves no attachment behind', async t => {
  const { service, manager, volumeId } = await setup(t, 10_000, [])
  await t.rejects(manager.acquire(volumeId, 'ro'), { code: 'EIO', message: /no connector for driver_volume_type 'local'/ })
  t.same(await service.listOwnAttachments(), [], 'the backend attachment was deleted again')
})

t.test('an acquire during a detach waits for it, then attaches again', async t => {
  const { service, manager, volumeId } = await setup(t, 10_000)
  ;(await manager.acquire(volumeId, 'ro')).release()
  const detaching = manager.detach(volumeId)
  const again = await manager.acquire(volumeId, 'ro')
  await detaching
  t.equal((await service.listOwnAttachments()).length, 1, 'exactly one attachment: the new one')
  t.same((await service.listOwnAttachments()).map(a => a.id), [again.attachment.id])
  again.release()
})
