// Recovery at mount on the real Cinder: a leftover it cannot delete is logged and skipped.
import fs from 'node:fs/promises'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { CinderVolumeService } from '../../src/backends/cinder.js'
import { attachJournalFor } from '../../src/cli/runtime.js'
import { openStackSettings } from '../../src/config/openstack.js'
import { AttachJournal } from '../../src/openstack/attach-journal.js'
import { lifecycleMessages } from '../../src/image/lifecycle.js'
import { CLEANUP_DEFERRED_MESSAGE } from '../../src/janitor/janitor.js'
import { startDaemon, volumes, workspace, type Workspace } from '../helpers/daemon.js'
import { capturingLogger, cloudSettings, CLOUDS, openStackSuite, STATE_DIR, testName, testService, type AdminCinder } from '../helpers/openstack.js'
import { sh } from '../helpers/shell.js'

const suite = openStackSuite(t)
const { skip } = suite

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

/** A backend of the workspace's project as the daemon on `host` builds it: the same journal of attaches in flight. */
function daemonsBackend(t: Test, ws: Workspace, host: string, journal: boolean): CinderVolumeService {
  const cloud = ws.cloud
  if (cloud === undefined) throw new Error('not a cinder workspace')
  const service = new CinderVolumeService({
    settings: openStackSettings({ osCloud: cloud.cloud, cwd: cloud.dir, home: '/nonexistent', env: {} }),
    logger: capturingLogger().logger,
    host,
    ...(journal ? { attachJournal: attachJournalFor(ws.mountpoint, host) } : {}),
  })
  t.teardown(() => service.close())
  return service
}

/** Every attachment Cinder has on the volume, completed or not (a volume lists only completed ones). */
async function attachmentsOn(admin: AdminCinder, volumeId: string): Promise<string[]> {
  const reply = await admin.send('GET', `/attachments?all_tenants=1&volume_id=${volumeId}`) as { attachments: { id: string, status: string }[] }
  return reply.attachments.map(a => `${a.id} ${a.status}`)
}

t.test('kill -9 between a read-only attach\'s reservation and its PUT: the next mount deletes the reservation and reads the image', { skip }, async t => {
  const host = testName('host')
  const ws = await workspace(t, 'cinder')
  const first = await startDaemon(ws, ['--host', host, '--seal-delay', '0'])
  await sh(`echo sealed-bytes > '${first.file('img')}'`)
  await first.logged(lifecycleMessages.sealed, { name: 'img' })
  t.equal(await first.stop(), 0, 'the first run stops cleanly')
  const [image] = await volumes(ws)
  if (image === undefined) throw new Error('no image volume')

  // The crash point, exactly: the daemon's first step of a read-only attach, journaled, and no PUT after it.
  const { attachmentId } = await (await daemonsBackend(t, ws, host, true).client()).createAttachment(image.id, 'ro', false)
  t.same(await attachmentsOn(suite.admin(), image.id), [`${attachmentId} reserved`], 'Cinder holds a reservation with no host')

  const daemon = await startDaemon(ws, ['--host', host])
  t.equal(await sh(`cat '${daemon.file('img')}'`), 'sealed-bytes\n', 'the image reads')
  t.equal(await daemon.stop(), 0, 'stop exits 0: no cleanup left over')
  t.same(await attachmentsOn(suite.admin(), image.id), [], 'no attachment is left on the volume')
  await t.rejects(fs.stat(attachJournalFor(ws.mountpoint, host)), { code: 'ENOENT' }, 'nothing left in the journal')
})

t.test('a half-uploaded volume held by a reservation nobody recorded is deleted at the next mount', { skip }, async t => {
  const host = testName('host')
  const ws = await workspace(t, 'cinder')
  const { id } = await ws.service.create({ name: `image-${testName('partial')}`, sizeGiB: 1, metadata: { cinderfs_state: 'uploading', cinderfs_host: host } })
  // A reservation no journal names (a run cut off while Cinder created it): Cinder refuses to delete the volume.
  await (await daemonsBackend(t, ws, host, false).client()).createAttachment(id, 'ro', false)

  const daemon = await startDaemon(ws, ['--host', host])
  await t.rejects(ws.service.get(id), { code: 'ENOENT' }, 'recovery deleted the volume, its reservation first')
  t.equal(await daemon.stop(), 0, 'stop exits 0: the janitor has nothing left')
  t.same(await attachmentsOn(suite.admin(), id), [], 'no attachment is left')
})

/** Cinder through a proxy that, for the requests `cut` picks, lets Cinder do the work and then drops the connection unanswered. */
async function cuttingProxy(t: Test, cut: (req: http.IncomingMessage) => boolean): Promise<string> {
  const server = http.createServer((req, res) => {
    const upstream = http.request({ host: '127.0.0.1', port: 8776, path: req.url, method: req.method, headers: req.headers }, answer => {
      if (cut(req)) {
        answer.resume()
        answer.on('end', () => { req.socket.destroy() })
        return
      }
      res.writeHead(answer.statusCode ?? 502, answer.headers)
      answer.pipe(res)
    })
    req.pipe(upstream)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise(resolve => { server.closeAllConnections(); server.close(resolve) }))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/v3/%(project_id)s`
}

t.test('a run cut off while Cinder created its reservation: recovery leaves it (it may be another host\'s), deleting our volume removes it', { skip }, async t => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cinderfs-journal-'))
  t.teardown(async () => fs.rm(dir, { recursive: true, force: true }))
  const journal = path.join(dir, 'journal.json')
  const backend = (endpointOverride?: string): CinderVolumeService => {
    const service = new CinderVolumeService({
      settings: cloudSettings(CLOUDS.glance, endpointOverride === undefined ? {} : { endpointOverride }),
      logger: capturingLogger().logger,
      host: testName('host'),
      attachJournal: journal,
    })
    t.teardown(() => service.close())
    return service
  }
  const dying = backend(await cuttingProxy(t, req => req.method === 'POST' && req.url?.endsWith('/attachments') === true))
  const { id } = await dying.create({ name: testName('cut'), sizeGiB: 1, metadata: {} })
  t.teardown(async () => dying.delete(id).catch(() => undefined))
  await t.rejects((await dying.client()).createAttachment(id, 'ro', false), 'the POST gets no answer')
  t.same(await attachmentsOn(suite.admin(), id).then(a => a.map(s => s.split(' ')[1])), ['reserved'], 'yet Cinder made the reservation')
  t.same((await new AttachJournal(journal).leftovers()).map(e => [e.volumeId, e.attachmentId]), [[id, undefined]], 'the journal has the volume, not the id')

  const next = backend()
  t.same(await next.listOwnAttachments(), [], 'the next start does not claim a reservation it cannot tell from another host\'s')
  t.equal((await attachmentsOn(suite.admin(), id)).length, 1, 'and leaves it')
  await next.delete(id)
  await t.rejects(next.get(id), { code: 'ENOENT' }, 'deleting our volume removes the reservation first')
  t.same(await next.listOwnAttachments(), [], 'nothing is left to recover')
  await t.rejects(fs.stat(journal), { code: 'ENOENT' }, 'and the journal is empty')
})
