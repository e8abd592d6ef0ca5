import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { pino } from 'pino'
import t from 'tap'
import { LocalVolumeService } from '../../src/backends/local.js'
import { LocalConnector } from '../../src/connectors/local.js'
import { AlignedBlockPool } from '../../src/memory/aligned-blocks.js'
import { needsLoopDevices } from '../helpers/requirements.js'

t.test('a read-only loop attachment serves aligned and unaligned reads with the same bytes', { skip: needsLoopDevices() }, async t => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cinderfs-connector-'))
  const svc = await LocalVolumeService.open({ dir, host: 'test-host', useLoopDevices: true, logger: pino({ level: 'silent' }) })
  t.teardown(async () => {
    for (const a of await svc.listOwnAttachments()) await svc.detach(a)
    await svc.close()
    await fs.rm(dir, { recursive: true, force: true })
  })
  const volume = await svc.create({ name: 'image-direct', sizeGiB: 1, metadata: {} })
  // An image whose end is not 4 KiB aligned, written through a rw attachment.
  const data = randomBytes(3 * 1024 * 1024 + 1234)
  const rw = await svc.attach(volume.id, 'rw')
  const writer = await new LocalConnector({ allowRegularFiles: false }).connect(rw.connectionInfo, 'rw')
  await writer.write(data, 0, data.length, 0)
  await writer.flush()
  await writer.close()
  await svc.detach(rw)

  const ro = await svc.attach(volume.id, 'ro')
  const device = await new LocalConnector({ allowRegularFiles: false }).connect(ro.connectionInfo, 'ro')
  t.teardown(async () => device.close())
  const pool = new AlignedBlockPool(1024 * 1024)
  for (const position of [0, 1024 * 1024, 3 * 1024 * 1024]) {
    const block = pool.take()
    const length = Math.min(block.length, data.length - position)
    t.equal(await device.read(block, 0, length, position), length, `aligned block read at ${position}`)
    t.ok(block.subarray(0, length).equals(data.subarray(position, position + length)), 'same bytes')
  }
  const odd = Buffer.alloc(5000)
  t.equal(await device.read(odd, 0, odd.length, 4097), odd.length, 'unaligned read through the page cache')
  t.ok(odd.equals(data.subarray(4097, 4097 + 5000)), 'same bytes')
  await t.rejects(device.write(data, 0, 10, 0), { code: 'EROFS' }, 'a read-only attachment refuses writes')
})
