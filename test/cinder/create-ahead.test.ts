import { randomUUID } from 'node:crypto'
import t from 'tap'
import { SPARE_READY } from '../../src/backends/cinder.js'
import { xattrNames } from '../../src/fs/types.js'
import { attachmentsOf, startDaemon, volumes, workspace, type Daemon } from '../helpers/daemon.js'
import { openStackSuite } from '../helpers/openstack.js'
import { needsFuse } from '../helpers/requirements.js'
import { run, sh } from '../helpers/shell.js'

const suite = openStackSuite(t)
const skip = suite.skip === false ? needsFuse() : suite.skip

async function sparesReady(daemon: Daemon, count: number): Promise<void> {
  const ready = (): number => daemon.logs().split(`"msg":"${SPARE_READY}"`).length - 1
  for (let i = 0; i < 1200 && ready() < count; i++) await sh('sleep 0.1')
  if (ready() < count) throw new Error(`only ${ready()} spare volumes became ready`)
}

t.test('--create-ahead: rsync -a of 300 small images through spares; a clean stop and a crash both leave only the images', { skip }, async t => {
  const ws = await workspace(t, 'cinder')
  const source = `${ws.root}/library`
  await sh(`mkdir '${source}'`)
  // A library of many small images (0 B to 30 KB), as a Glance file store holds them.
  const names: string[] = Array.from({ length: 300 }, () => randomUUID())
  await sh(`cd '${source}' && i=0; for name in ${names.join(' ')}; do head -c $((i * 101)) /dev/urandom > $name; i=$((i + 1)); done`)

  const daemon = await startDaemon(ws, ['--create-ahead', '4'])
  const started = Date.now()
  await sh(`rsync -a '${source}/' '${ws.mountpoint}/'`)
  // The figure is for the log; speed is the benchmarks' (scripts/bench-migrate), never asserted.
  t.comment(`rsync -a of ${names.length} small images: ${((Date.now() - started) / 1000 / names.length).toFixed(2)} s per image`)
  // Every image's md5 as recorded while it was written (reading them back would cost an attach each), and a sample of the bytes.
  const recorded = await sh(`cd '${ws.mountpoint}' && for f in *; do echo "$(getfattr --only-values -n ${xattrNames.md5} "$f")  $f"; done`)
  t.equal(recorded, await sh(`cd '${source}' && md5sum *`), 'every image has the md5 of its source')
  t.equal((await run(`for f in ${names.slice(-3).join(' ')} ${names[150]}; do cmp '${source}'/$f '${ws.mountpoint}'/$f || exit 1; done`)).code, 0, 'a sample reads back equal (cmp)')
  t.equal((await run(`rsync -ai --dry-run '${source}/' '${ws.mountpoint}/'`)).stdout.trim(), '', 'a second rsync finds nothing to do: names, sizes and times all kept')
  t.ok(daemon.logs().includes('"msg":"spare volume taken"'), 'images were written into spares')
  t.equal(await daemon.stop(), 0, 'clean stop')
  t.comment(`verified and stopped at ${((Date.now() - started) / 1000).toFixed(0)} s`)
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
