import t from 'tap'
import type { CephCluster } from '../helpers/ceph.js'
import { randomFile } from '../helpers/daemon.js'
import { needsRbdRig, poolImages, startRbdDaemon, useRbdRig } from '../helpers/rbd-rig.js'
import { run, sh, sha256, xattr } from '../helpers/shell.js'
import { lifecycleMessages } from '../../src/image/lifecycle.js'

// The file-system behaviours a Glance host relies on, on the `rbd` volume type:
// Keystone -> Cinder (its in-tree RBD driver) -> Ceph -> cinderfs through librbd.
const MiB = 1024 * 1024
const skip = needsRbdRig()
let cluster: CephCluster | undefined
if (skip === false) t.before(async () => { cluster = await useRbdRig(t) })
const ceph = (): CephCluster => {
  if (cluster === undefined) throw new Error('Ceph is not up')
  return cluster
}

/** The rbd image behind a file of the mount: `volume-<its volume id>`. */
async function imageOf(file: string): Promise<string> {
  return `volume-${await xattr(file, 'user.cinderfs.volume_id')}`
}

async function imageBytes(image: string): Promise<number> {
  return (JSON.parse(await ceph().rbd('info', '--format', 'json', `${ceph().pool}/${image}`)) as { size: number }).size
}

// The rig's project is shared with other suites: this file's names start with P.
const P = `rbd-${Math.random().toString(36).slice(2, 8)}-`
const mine = async (dir: string): Promise<string> => (await sh(`ls '${dir}'`)).split('\n').filter(name => name.startsWith(P)).map(name => `${name}\n`).join('')

t.test('cp in and read back 0 B, 1 B, 1 MiB+1 and 100 MiB: same sha256, each in an rbd image; rm removes it', { skip }, async t => {
  const { daemon } = await startRbdDaemon(t, ceph(), P)
  const images: string[] = []
  for (const size of [0, 1, MiB + 1, 100 * MiB]) {
    const source = await randomFile(size)
    const file = daemon.file(`${P}size-${size}`)
    await sh(`cp '${source}' '${file}'`)
    t.equal(await sh(`stat -c %s '${file}'`), `${size}\n`, `${size} B: size as written`)
    t.equal(await sha256(file), await sha256(source), `${size} B: sha256 equal`)
    images.push(await imageOf(file))
  }
  const inPool = await poolImages(ceph())
  for (const image of images) t.ok(inPool.includes(image), `${image} is an image in pool ${ceph().pool}`)

  await sh(`rm '${daemon.file(`${P}size-${100 * MiB}`)}'`)
  t.notOk((await mine(daemon.mountpoint)).includes(`size-${100 * MiB}`), 'rm: the file is gone')
  t.notOk((await poolImages(ceph())).includes(images[3] ?? ''), 'and so is its rbd image')
})

t.test('rsync -a of a small tree; a second run transfers nothing', { skip }, async t => {
  const { ws, daemon } = await startRbdDaemon(t, ceph(), P)
  const tree = `${ws.root}/images`
  const source = await randomFile(3 * MiB + 7)
  await sh(`mkdir '${tree}'`)
  for (const [i, size] of [0, 1, 4096, MiB + 7, 3 * MiB].entries()) {
    await sh(`tail -c +${i * 4096 + 1} '${source}' | head -c ${size} > '${tree}/${P}${i}'`)
  }
  await sh(`rsync -a '${tree}/' '${daemon.mountpoint}/'`)
  for (const name of (await mine(tree)).trim().split('\n')) t.equal(await sha256(daemon.file(name)), await sha256(`${tree}/${name}`), `${name} equal`)
  const second = await sh(`rsync -a --stats '${tree}/' '${daemon.mountpoint}/'`)
  t.match(second, /Number of regular files transferred: 0/, 'second rsync -a transfers 0 files')
})

t.test('a write past 1 GiB grows the volume and its rbd image while the file is open', { skip }, async t => {
  const { ws, daemon } = await startRbdDaemon(t, ceph(), P)
  const chunk = await randomFile(2 * MiB)
  // 2 MiB at 1023 MiB crosses the end of the new 1 GiB volume; the rest is a hole.
  await sh(`dd if='${chunk}' of='${daemon.file(`${P}big`)}' bs=1M seek=1023 status=none`)
  await sh(`dd if='${chunk}' of='${ws.root}/expected' bs=1M seek=1023 status=none`)
  t.equal(await sha256(daemon.file(`${P}big`)), await sha256(`${ws.root}/expected`), 'sha256 equal, the hole reads as zeros')
  t.equal(await imageBytes(await imageOf(daemon.file(`${P}big`))), 2 * 1024 * MiB, 'the rbd image is 2 GiB now')
})

t.test('rename onto an existing image replaces it; the old rbd image is deleted', { skip }, async t => {
  const { daemon } = await startRbdDaemon(t, ceph(), P)
  await sh(`echo old > '${daemon.file(`${P}image`)}' && echo new > '${daemon.file(`${P}incoming`)}'`)
  const old = await imageOf(daemon.file(`${P}image`))
  const incoming = await imageOf(daemon.file(`${P}incoming`))
  await sh(`mv '${daemon.file(`${P}incoming`)}' '${daemon.file(`${P}image`)}'`)
  t.equal(await mine(daemon.mountpoint), `${P}image\n`, 'one name left')
  t.equal(await sh(`cat '${daemon.file(`${P}image`)}'`), 'new\n', 'it has the new bytes')
  const inPool = await poolImages(ceph())
  t.ok(inPool.includes(incoming), 'the new bytes stay in their rbd image')
  t.notOk(inPool.includes(old), 'the replaced rbd image is gone')
})

t.test('kill -9 mid-upload, mount again: no complete image shown, its rbd image removed, the next writer goes through', { skip }, async t => {
  const { ws, daemon } = await startRbdDaemon(t, ceph(), P)
  await sh(`echo survivor > '${daemon.file(`${P}complete`)}'`)
  const before = await poolImages(ceph())
  const source = await randomFile(200 * MiB)
  // A writer throttled to ~100 MiB/s, so the kill lands mid-upload.
  const writer = `import time
src = open('${source}', 'rb')
with open('${daemon.file(`${P}partial`)}', 'wb') as out:
    while chunk := src.read(1 << 20):
        out.write(chunk)
        time.sleep(0.01)`
  const copy = run(`/usr/bin/python3 -c "${writer}"`)
  await daemon.logged(lifecycleMessages.begun, { name: `${P}partial` })
  await sh('sleep 0.5')
  const during = await poolImages(ceph())
  await daemon.kill()
  t.not((await copy).code, 0, 'the writer sees its copy fail')
  t.equal(during.length, before.length + 1, 'the upload had an rbd image of its own')

  const again = (await startRbdDaemon(t, ceph(), P, ws)).daemon
  t.equal(await mine(ws.mountpoint), `${P}complete\n`, 'only the complete image is listed')
  t.equal(await sh(`cat '${again.file(`${P}complete`)}'`), 'survivor\n', 'and it is intact')
  t.same(await poolImages(ceph()), before, 'the half-written rbd image is gone')

  const started = Date.now()
  await sh(`cp '${source}' '${again.file(`${P}partial`)}'`)
  t.comment(`the next 200 MiB upload took ${((Date.now() - started) / 1000).toFixed(1)} s`)
  t.equal(await sha256(again.file(`${P}partial`)), await sha256(source), 'the next writer\'s upload is complete and equal')
})
