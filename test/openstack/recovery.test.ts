// Recovery at mount on the real Cinder: a leftover it cannot delete is logged and skipped.
import t from 'tap'
import { CLEANUP_DEFERRED_MESSAGE } from '../../src/janitor/janitor.js'
import { startDaemon, workspace } from '../helpers/daemon.js'
import { CLOUDS, openStackSuite, STATE_DIR, testName, testService } from '../helpers/openstack.js'
import { sh } from '../helpers/shell.js'

const { skip } = openStackSuite(t)

t.test('a half-uploaded volume of this host that another host holds attached does not stop the mount', { skip }, async t => {
  const host = testName('host')
  // Someone else (another host's connector) has the leftover attached, so Cinder refuses to delete it.
  const { service: other } = testService(t, { host: testName('other-host') })
  const name = testName('partial')
  const { id } = await other.create({ name: `image-${name}`, sizeGiB: 1, metadata: { cinderfs_state: 'uploading', cinderfs_host: host } })
  const held = await other.attach(id, 'rw')
  t.teardown(async () => {
    await other.detach(held)
    // the daemon's janitor may delete it first, once it is no longer attached
    await other.delete(id).catch((err: unknown) => { if ((err as { code?: string }).code !== 'ENOENT') throw err })
  })

  const daemon = await startDaemon(await workspace(t, 'local'), ['--backend', 'cinder', '--os-cloud', CLOUDS.glance, '--host', host], { cwd: STATE_DIR })
  const refused = daemon.logs().split('\n').filter(line => line.includes(CLEANUP_DEFERRED_MESSAGE) && line.includes('"call":"recovery: delete a volume left uploading'))
  t.ok(refused.length > 0, 'the refused delete is logged, and kept by the janitor to retry')
  t.notOk((await sh(`ls '${daemon.mountpoint}'`)).split('\n').includes(name), 'the partial upload is not shown')
  t.equal((await other.get(id)).status, 'in-use', 'the holder keeps its volume')
})
