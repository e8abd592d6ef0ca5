// Run last by scripts/test, after both passes: what the tests made on the rig is gone.
import t from 'tap'
import { adminCinder, needsOpenStack, rigLoopDevices, rigRunning, TEST_PREFIX } from '../helpers/openstack.js'

const skip = needsOpenStack() || (rigRunning() ? false : 'the OpenStack rig is not running')

t.test('after the suite: no test project, volume, attachment or loop device is left on Cinder', { skip }, async t => {
  const admin = await adminCinder()
  t.teardown(() => { admin.close() })
  // Only what this run made: the rig may be shared with other runs.
  const since = new Date(Number(process.env.CINDERFS_TEST_RUN_START ?? 0) * 1000)
  const left = await admin.leftovers(since)
  t.same(left.volumes, [], `no volume named ${TEST_PREFIX}* made since ${since.toISOString()} in any project`)
  t.same(left.attachments, [], 'no attachment of one')
  t.same(await admin.testProjects(), [], `no project named ${TEST_PREFIX}* (each held one test's image volumes)`)
  t.same(rigLoopDevices().filter(line => line.endsWith('(deleted)')), [], 'no loop device over a deleted volume file')
})
