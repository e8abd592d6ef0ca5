import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { pino } from 'pino'
import t from 'tap'
import { LocalVolumeService } from '../../src/backends/local.js'
import { ImageStore, listingTrustFactor } from '../../src/store/image-store.js'
import { CountingService } from '../helpers/core.js'
import { FakeClock } from '../helpers/fake-clock.js'

t.test('a listing is trusted for --list-ttl, and ten times as long as it took when that is longer', async t => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cinderfs-store-'))
  const logger = pino({ level: 'silent' })
  const local = await LocalVolumeService.open({ dir, host: 'store-test', useLoopDevices: false, logger })
  t.teardown(async () => {
    await local.close()
    await fs.rm(dir, { recursive: true, force: true })
  })
  const clock = new FakeClock()
  const service = new CountingService(local)
  // Each listing takes `listingMs` of the store's clock, as one of thousands of Cinder volumes takes seconds.
  let listingMs = 0
  const list = service.list
  service.list = async options => {
    clock.advance(listingMs)
    return list(options)
  }
  const store = new ImageStore({ service, logger, listTtlMs: 1000, owner: { uid: 0, gid: 0 }, clock })
  const listings = (): number => service.counts().list ?? 0

  await store.lookup('image')
  clock.advance(1001)
  await store.lookup('image')
  t.equal(listings(), 2, 'a quick listing: listed again once --list-ttl is over')

  listingMs = 3000
  clock.advance(1001)
  await store.lookup('image')
  t.equal(listings(), 3, 'listed again (this one takes 3 s)')
  clock.advance(listingTrustFactor * listingMs - listingMs - 1)
  await store.lookup('image')
  t.equal(listings(), 3, 'not again until ten times 3 s from its start, long after --list-ttl')
  clock.advance(1)
  await store.lookup('image')
  t.equal(listings(), 4, 'then listed again')
  store.invalidate()
  await store.lookup('image')
  t.equal(listings(), 5, 'a forced listing still lists at once')
})
