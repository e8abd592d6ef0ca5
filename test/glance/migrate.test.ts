import { createHash, randomUUID } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import t, { type Test } from 'tap'
import { listAll } from '../../src/backends/volume-service.js'
import { errorCode } from '../../src/errors/errors.js'
import { EXIT } from '../../src/glance/registration.js'
import { startDaemon, type Workspace } from '../helpers/daemon.js'
import { FROM_IMAGE, GLANCE, GlanceApi } from '../helpers/glance.js'
import { CLOUDS, openStackSuite, projectAttachments, STATE_DIR, testService } from '../helpers/openstack.js'
import { run, sh } from '../helpers/shell.js'
import { lifecycleMessages } from '../../src/image/lifecycle.js'

const suite = openStackSuite(t)
const MiB = 1024 * 1024
const cli = path.join(__dirname, '..', '..', '..', 'bin', 'cinderfs')

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

/** `cinderfs register` as the rig's Glance service account; resolves with its stdout lines and exit code. */
async function register(args: string[]): Promise<{ code: number, lines: string[] }> {
  const ran = await run(`cd '${STATE_DIR}' && '${process.execPath}' '${cli}' register --backend cinder --glance-config '${GLANCE.config}' --log-level warn ${args.join(' ')}`, { timeoutMs: 600_000 })
  return { code: ran.code, lines: ran.stdout.trim().split('\n') }
}

function gone(err: unknown): void {
  if (errorCode(err) !== 'ENOENT') throw err
}

function lineOf(lines: string[], id: string): string {
  return lines.find(l => l.includes(id)) ?? `(no line for ${id})`
}

/**
 * A mount workspace on the rig's own Glance account (project service, as glance_store's
 * cinder store): Glance's cinder store reads the volumes as that account. On teardown
 * the images in `imageIds` are deleted (Glance deletes their locations' volumes), then
 * whatever volume of ours is left.
 */
async function glanceWorkspace(t: Test): Promise<{ glance: GlanceApi, ws: Workspace, imageIds: string[] }> {
  const glance = new GlanceApi()
  t.teardown(() => { glance.close() })
  const { service } = testService(t)
  const root = await fs.mkdtemp('/tmp/cinderfs-test-glance-')
  const mountpoint = path.join(root, 'mnt')
  await fs.mkdir(mountpoint)
  const imageIds: string[] = []
  const projectId = await glance.projectId()
  const ws: Workspace = {
    root, mountpoint, localDir: path.join(root, 'volumes'), imageOwner: projectId, service, volumeIds: new Set(), daemons: [],
    cloud: {
      cloud: CLOUDS.glance, dir: STATE_DIR, projectId, service,
      attachments: async () => await projectAttachments(suite.admin(), projectId),
      remove: async () => {
        for (const id of imageIds) await glance.delete(id)
        const left = (await listAll(service)).filter(v => imageIds.some(id => v.name === `image-${id}`) || v.name === FROM_IMAGE)
        // Glance's deletes of location volumes are still under way: those may vanish meanwhile
        for (const volume of left) await service.delete(volume.id).catch(gone)
        return left.length
      },
    },
  }
  t.teardown(async () => {
    for (const daemon of ws.daemons) await daemon.stop()
    await run(`fusermount -u -z '${mountpoint}' 2>/dev/null; true`)
    await ws.cloud?.remove()
    await fs.rm(root, { recursive: true, force: true })
  })
  return { glance, ws, imageIds }
}

t.test('a Glance library rsync\'d into cinderfs is served by glance-api from Cinder, verified by checksum, and Cinder clones it', { skip: suite.skip }, async t => {
  const { glance, ws, imageIds } = await glanceWorkspace(t)
  const { root, mountpoint, service } = ws
  // The library: raw images from 0 B to 96 MiB and one qcow2, uploaded through the API into the file store.
  const originals = path.join(root, 'originals')
  await fs.mkdir(originals)
  const sizes = { empty: 0, small: 4097, mid: 3 * MiB + 1, big: 96 * MiB, flipped: MiB, deleted: 65536 }
  for (const [name, size] of Object.entries(sizes)) await sh(`head -c ${size} /dev/urandom > '${originals}/${name}'`)
  await sh(`head -c ${2 * MiB} /dev/urandom > '${root}/q.raw' && qemu-img convert -f raw -O qcow2 '${root}/q.raw' '${originals}/qcow2'`)
  const ids: Record<string, string> = {}
  for (const name of [...Object.keys(sizes), 'qcow2']) {
    ids[name] = await glance.upload(`cinderfs-test-${name}`, `${originals}/${name}`, name === 'qcow2' ? 'qcow2' : 'raw')
    imageIds.push(ids[name] ?? '')
  }
  const id = (name: string): string => ids[name] ?? ''
  const migrated = ['small', 'mid', 'big', 'qcow2']
  for (const name of Object.keys(ids)) t.equal((await glance.image(id(name)))?.locations[0]?.metadata.store, GLANCE.fileStore, `${name} is in the file store`)

  // One byte flipped in Glance's copy before the rsync; an image Glance does not know.
  await sh(`printf '\\x5a' | dd of='${GLANCE.dataDir}/${id('flipped')}' bs=1 seek=1000 conv=notrunc status=none`)
  const unknown = randomUUID()
  imageIds.push(unknown)
  await sh(`head -c 5000 /dev/urandom > '${root}/${unknown}'`)
  const flippedBefore = await glance.image(id('flipped'))

  // sealed at once: register leaves images that are not read-only yet alone
  const daemon = await startDaemon(ws, ['--seal-delay', '0'], { cwd: STATE_DIR })
  await fs.writeFile(path.join(root, 'list'), Object.values(ids).join('\n') + '\n')
  await sh(`rsync -a --files-from='${root}/list' '${GLANCE.dataDir}/' '${mountpoint}/' && rsync -a '${root}/${unknown}' '${mountpoint}/'`)
  // A seal follows the last close of each file: wait for all of them (the images, and the unknown one).
  await daemon.logged(lifecycleMessages.sealed, { times: Object.keys(ids).length + 1 })
  // deleted in Glance after the copy
  await glance.delete(id('deleted'))
  const targets = [...Object.values(ids), unknown]

  const dry = await register(['--dry-run', '--retire', ...targets])
  for (const name of migrated) t.match(lineOf(dry.lines, id(name)), /^would-register .*would retire file:/, `dry run: ${name} would be registered`)
  t.equal((await glance.image(id('big')))?.locations.length, 1, 'dry run changed nothing in Glance')

  const real = await register(['--retire', ...targets])
  t.comment(real.lines.join('\n'))
  for (const name of migrated) t.match(lineOf(real.lines, id(name)), /^registered .*retired file:/, `${name} registered, file location retired`)
  t.match(lineOf(real.lines, id('empty')), /^empty /, 'the 0-byte image is said to stay in its old store')
  t.match(lineOf(real.lines, id('flipped')), /^mismatch .*md5/, 'the flipped image is refused: checksum mismatch')
  t.match(lineOf(real.lines, unknown), /^not-in-glance /, 'the unknown image is left alone')
  t.match(lineOf(real.lines, id('deleted')), /^not-in-glance /, 'the image deleted in Glance meanwhile is left alone')
  t.match(real.lines.at(-1) ?? '', /^summary: 8 images: 4 registered, 0 already there, 1 checksum mismatch, 2 not in Glance, 0 no hashes, 1 empty, 0 failed; 4 old locations retired/)
  t.equal(real.code, EXIT.mismatch, 'the exit code says an image was refused')
  t.same(await glance.image(id('flipped')), flippedBefore, 'Glance is unchanged for the refused image')

  for (const name of migrated) {
    const image = await glance.image(id(name))
    t.match(image?.locations.map(l => l.url), [/^cinder:\/\/cinder1\/[0-9a-f-]{36}$/], `${name}: Glance lists only the cinder location`)
    t.equal(sha256(await glance.download(id(name))), sha256(await fs.readFile(`${originals}/${name}`)), `${name}: glance-api serves the original bytes from Cinder`)
  }
  const left = (await fs.readdir(GLANCE.dataDir)).filter(f => imageIds.includes(f)).sort()
  t.same(left, [id('empty'), id('flipped')].sort(), 'Glance deleted the file store copies of the migrated images; every one still downloads')

  const again = await register([...migrated.map(id)])
  t.equal(again.code, EXIT.ok, 'a second run: exit 0')
  for (const name of migrated) t.match(lineOf(again.lines, id(name)), /^already-there /, `${name}: already there`)

  // Cinder makes a volume from a migrated raw image by cloning its volume.
  const bigVolume = (await glance.image(id('big')))?.locations[0]?.url.split('/').pop() ?? ''
  const fromImage = await glance.volumeFromImage(id('big'))
  const clones = (await fs.readFile(GLANCE.cloneLog, 'utf8')).trim().split('\n').map(l => JSON.parse(l) as { volume: string, source: string })
  t.ok(clones.some(c => c.volume === fromImage && c.source === bigVolume), 'the driver cloned the image volume (no download through Glance)')
  const cloned = await sh(`head -c ${sizes.big} '${STATE_DIR}/volumes/volume-${fromImage}' | sha256sum | cut -d' ' -f1`)
  t.equal(cloned.trim(), sha256(await fs.readFile(`${originals}/big`)), 'the cloned volume holds the image bytes')
  await service.delete(fromImage)

  // Glance down (connection refused): one clear line, exit 1, nothing changed.
  const down = await register(['--glance-url', 'http://127.0.0.1:9', id('flipped')])
  t.match(down.lines[0] ?? '', new RegExp(`^failed +${id('flipped')} .*Glance at http://127.0.0.1:9/v2 is unreachable.*ECONNREFUSED.*nothing changed`), 'Glance down: one clear line')
  t.equal(down.code, EXIT.failed, 'Glance down: exit 1')
})

t.test('--glance-register registers each image as it is sealed', { skip: suite.skip }, async t => {
  const { glance, ws, imageIds } = await glanceWorkspace(t)
  const data = path.join(ws.root, 'image')
  await sh(`head -c ${MiB + 3} /dev/urandom > '${data}'`)
  const imageId = await glance.upload('cinderfs-test-mount-option', data, 'raw')
  imageIds.push(imageId)
  const daemon = await startDaemon(ws, ['--glance-register', '--glance-store', GLANCE.cinderStore, '--retire'], { cwd: STATE_DIR })
  await sh(`rsync -a '${GLANCE.dataDir}/${imageId}' '${ws.mountpoint}/'`)
  // the decision is logged once the queue got to it; the daemon waits for its queue before it stops
  t.equal(await daemon.stop(), 0, 'the daemon stops cleanly after its registrations')
  t.match(daemon.logs(), new RegExp(`"imageId":"${imageId}".*"outcome":"registered"`), 'the decision is logged with the image id and outcome')
  const image = await glance.image(imageId)
  t.match(image?.locations.map(l => l.url), [/^cinder:\/\/cinder1\//], 'Glance serves it from Cinder only')
  t.equal(sha256(await glance.download(imageId)), sha256(await fs.readFile(data)), 'and the bytes are the original')
})
