import { randomUUID } from 'node:crypto'
import t from 'tap'
import { SPARE_READY } from '../../src/backends/cinder.js'
import { startDaemon, volumes, workspace, type Daemon, type Workspace } from '../helpers/daemon.js'
import { openStackSuite } from '../helpers/openstack.js'
import { needsFuse } from '../helpers/requirements.js'
import { run, sh } from '../helpers/shell.js'

const suite = openStackSuite(t)
const skip = suite.skip === false ? needsFuse() : suite.skip

async function attachmentsOf(ws: Workspace): Promise<string[]> {
  const cinder = await ws.cloud?.service.client()
  if (cinder === undefined) throw new Error('not a cinder workspace')
  const out: string[] = []
  for (const volume of await volumes(ws)) out.push(...(await cinder.showVolume(volume.id)).attachments.map(a => `${volume.name}: ${a.id}`))
  return out
}

async function sparesReady(daemon: Daemon, count: number): Promise<void> {
  const ready = (): number => daemon.logs().split(`"msg":"${SPARE_READY}"`).length - 1
  for (let i = 0; i < 1200 && ready() < count; i++) await sh('sleep 0.1')
  if (ready() < count) throw new Error(`only ${ready()} spare volumes became ready`)
}

t.test('--create-ahead: rsync of small images through spares; a clean stop and a crash both leave only the images', { skip }, async t => {
  const ws = await workspace(t, 'cinder')
  const source = `${ws.root}/library`
  await sh(`mkdir '${source}'`)
  const names: string[] = Array.from({ length: 12 }, () => randomUUID())
  for (const [i, name] of names.entries()) await sh(`head -c ${i * 3001} /dev/urandom > '${source}/${name}'`)

  const daemon = await startDaemon(ws, ['--create-ahead', '2'])
  const started = Date.now()
  await sh(`rsync -a '${source}/' '${ws.mountpoint}/'`)
  t.comment(`rsync -a of ${names.length} small images: ${((Date.now() - started) / 1000 / names.length).toFixed(2)} s per image`)
  t.equal((await run(`diff -r '${source}' '${ws.mountpoint}'`)).code, 0, 'every image equal (diff -r)')
  t.ok(daemon.logs().includes('"msg":"spare volume taken"'), 'images were written into spares')
  t.equal(await daemon.stop(), 0, 'clean stop')
  t.same((await volumes(ws)).map(v => v.name).sort(), names.map(n => `image-${n}`).sort(), 'a clean stop deletes the spares: only the images are left')
  t.same(await attachmentsOf(ws), [], 'and no attachment')

  const crashing = await startDaemon(ws, ['--create-ahead', '2', '--host', 'crash-ahead'])
  await sh(`echo survivor > '${crashing.file('complete')}'`)
  await sparesReady(crashing, 2)
  await crashing.kill()
  t.equal((await volumes(ws)).filter(v => v.name.includes('.cinderfs-spare-')).length, 2, 'kill -9 leaves the two spares')
  t.ok((await attachmentsOf(ws)).length >= 2, 'attached')

  const again = await startDaemon(ws, ['--host', 'crash-ahead'])
  t.same((await volumes(ws)).filter(v => !names.includes(v.name.slice('image-'.length))).map(v => v.name), ['image-complete'], 'recovery at the next mount deletes the spares')
  t.same(await attachmentsOf(ws), [], 'and their attachments')
  t.equal(await sh(`cat '${again.file('complete')}'`), 'survivor\n', 'the image written before the crash is intact')
})
