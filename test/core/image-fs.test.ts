import { createHash, randomBytes } from 'node:crypto'
import { constants } from 'node:fs'
import t from 'tap'
import { listAll } from '../../src/backends/volume-service.js'
import { CinderfsError, errorCode } from '../../src/errors/errors.js'
import type { ImageFs } from '../../src/fs/image-fs.js'
import { xattrNames } from '../../src/fs/types.js'
import { core, sealDelayMs, type Core } from '../helpers/core.js'

const request = 128 * 1024

async function writeAll(fs: ImageFs, fh: number, data: Buffer, from = 0): Promise<void> {
  for (let at = 0; at < data.length; at += request) {
    const chunk = data.subarray(at, at + request)
    await fs.write(fh, chunk, chunk.length, from + at)
  }
}

/** What `cp` does: create, write, close (flush, then release). */
async function copyIn(fs: ImageFs, name: string, data: Buffer): Promise<void> {
  const fh = await fs.create(`/${name}`, 0o644)
  await writeAll(fs, fh, data)
  await fs.flush(fh)
  await fs.release(fh)
}

async function readAll(fs: ImageFs, name: string): Promise<Buffer> {
  const fh = await fs.open(`/${name}`, constants.O_RDONLY)
  const parts: Buffer[] = []
  for (let position = 0; ; position += request) {
    const buffer = Buffer.alloc(request)
    const n = await fs.read(fh, buffer, request, position)
    if (n === 0) break
    parts.push(buffer.subarray(0, n))
  }
  await fs.release(fh)
  return Buffer.concat(parts)
}

async function errno(work: () => unknown): Promise<string | undefined> {
  try {
    await work()
    return undefined
  } catch (err) {
    return errorCode(err)
  }
}

function md5(data: Buffer): string {
  return createHash('md5').update(data).digest('hex')
}

/** Waits for what the fake clock started (seals) to end. */
async function settle(c: Core): Promise<void> {
  await c.fs.settled()
}

async function volumeOf(c: Core, name: string) {
  const volume = (await listAll(c.local)).find(v => v.name === `image-${name}`)
  if (volume === undefined) throw new Error(`no volume for ${name}`)
  return volume
}

t.test('cp: finalised at close, sealed read-only after the seal delay, with the fewest backend calls', async t => {
  const c = await core(t)
  const data = randomBytes(3 * 1024 * 1024 + 5)
  await copyIn(c.fs, 'image', data)
  t.same(c.service.counts(), { attach: 1, create: 1, list: 1, replace: 1 }, 'cp costs the first listing, create, attach and one write of name and metadata')
  t.equal((await c.fs.getattr('/image')).size, data.length, 'the size is final when close returns')
  t.equal((await c.fs.getxattr('/image', xattrNames.md5)).toString(), md5(data), 'md5 recorded at close')
  t.ok((await readAll(c.fs, 'image')).equals(data), 'reads back the bytes inside the seal delay')
  t.notOk((await volumeOf(c, 'image')).readOnly, 'not yet read-only inside the seal delay')
  c.service.reset()
  c.clock.advance(sealDelayMs)
  await settle(c)
  t.same(c.service.counts(), { detach: 1, setReadOnly: 1 }, 'the seal: detach and the read-only flag, nothing else')
  const volume = await volumeOf(c, 'image')
  t.ok(volume.readOnly, 'read-only once the delay is over')
  t.equal(await errno(async () => c.fs.open('/image', constants.O_WRONLY)), 'EROFS', 'writing a sealed image: EROFS')
  t.equal(await errno(async () => c.fs.truncate('/image', 0)), 'EROFS', 'truncating it: EROFS')
  t.ok((await readAll(c.fs, 'image')).equals(data), 'its bytes are unchanged')
})

t.test('create, close, reopen for writing inside the seal delay (qemu-img convert) continues the same volume', async t => {
  const c = await core(t)
  const fh = await c.fs.create('/disk', 0o644)
  await c.fs.flush(fh)
  await c.fs.release(fh)
  t.equal((await c.fs.getattr('/disk')).size, 0, 'an empty image after the first close')
  const volumeId = (await volumeOf(c, 'disk')).id
  c.clock.advance(sealDelayMs / 2)
  const data = randomBytes(2 * 1024 * 1024)
  const again = await c.fs.open('/disk', constants.O_RDWR)
  await writeAll(c.fs, again, data)
  await c.fs.flush(again)
  await c.fs.release(again)
  t.equal((await volumeOf(c, 'disk')).id, volumeId, 'the same volume')
  t.equal((await c.fs.getattr('/disk')).size, data.length, 'the new size')
  t.equal((await c.fs.getxattr('/disk', xattrNames.md5)).toString(), md5(data), 'hashes redone')
  c.clock.advance(sealDelayMs / 2 + 1)
  await settle(c)
  t.notOk((await volumeOf(c, 'disk')).readOnly, 'the reopen restarted the seal delay')
  c.clock.advance(sealDelayMs)
  await settle(c)
  t.ok((await volumeOf(c, 'disk')).readOnly, 'sealed a delay after the last close')
  t.ok((await readAll(c.fs, 'disk')).equals(data), 'reads back the second write')
})

t.test('a reopen with O_TRUNC starts the image over; a partial rewrite rehashes by reading back', async t => {
  const c = await core(t)
  await copyIn(c.fs, 'a', Buffer.from('first version, longer than the second'))
  const fh = await c.fs.open('/a', constants.O_WRONLY | constants.O_TRUNC)
  await c.fs.write(fh, Buffer.from('second'), 6, 0)
  await c.fs.flush(fh)
  await c.fs.release(fh)
  t.equal((await readAll(c.fs, 'a')).toString(), 'second', 'O_TRUNC: only the new bytes')
  t.equal((await c.fs.getxattr('/a', xattrNames.md5)).toString(), md5(Buffer.from('second')))

  const patch = await c.fs.open('/a', constants.O_WRONLY)
  await c.fs.write(patch, Buffer.from('S'), 1, 0)
  await c.fs.flush(patch)
  await c.fs.release(patch)
  t.equal((await readAll(c.fs, 'a')).toString(), 'Second', 'conv=notrunc: a byte changed in place')
  t.equal((await c.fs.getxattr('/a', xattrNames.md5)).toString(), md5(Buffer.from('Second')), 'hashes of the whole image')
})

t.test('close-to-open: rsync\'s create, write, close, utimens, chmod, rename — then stat and read at once', async t => {
  const c = await core(t)
  const mtimeMs = 1_600_000_000_000
  for (const size of [0, 1, 4095, 1024 * 1024, 1024 * 1024 + 1, 3 * 1024 * 1024]) {
    for (const releaseAfterRename of [false, true]) {
      const data = randomBytes(size)
      const name = `img-${size}-${releaseAfterRename ? 'late' : 'early'}`
      const fh = await c.fs.create(`/.${name}.tmp`, 0o600)
      await writeAll(c.fs, fh, data)
      await c.fs.flush(fh)
      // FUSE sends release after close(2) returned: rsync's next calls may come before or after it.
      const release = releaseAfterRename ? undefined : c.fs.release(fh)
      await c.fs.utimens(`/.${name}.tmp`, mtimeMs)
      await c.fs.chmod(`/.${name}.tmp`, 0o640)
      await c.fs.rename(`/.${name}.tmp`, `/${name}`)
      const stat = await c.fs.getattr(`/${name}`)
      t.equal(stat.size, size, `${name}: size right after the rename`)
      t.equal(stat.mtimeMs, mtimeMs, `${name}: mtime as set`)
      t.equal(stat.mode & 0o7777, 0o640, `${name}: mode as set`)
      t.ok((await readAll(c.fs, name)).equals(data), `${name}: bytes right after the rename`)
      await (release ?? c.fs.release(fh))
      const after = await c.fs.getattr(`/${name}`)
      t.same([after.size, after.mtimeMs, after.mode & 0o7777], [size, mtimeMs, 0o640], `${name}: the same after the release`)
      t.equal(await errno(async () => c.fs.getattr(`/.${name}.tmp`)), 'ENOENT', `${name}: the temporary name is gone`)
    }
  }
  c.clock.advance(sealDelayMs)
  await settle(c)
  for (const volume of await listAll(c.local)) {
    t.ok(volume.readOnly, `${volume.name}: sealed`)
    t.equal(volume.metadata.cinderfs_mode, '640', `${volume.name}: mode recorded`)
    t.equal(volume.metadata.cinderfs_mtime_ns, `${mtimeMs}000000`, `${volume.name}: mtime recorded`)
  }
  t.equal((await c.fs.readdir('/')).length, 2 + 12, 'twelve images, nothing else')
})

t.test('rsync\'s utimens, chmod and rename after close cost no request of their own: one write behind them, before the seal', async t => {
  const c = await core(t)
  const data = randomBytes(40_000)
  const fh = await c.fs.create('/.lib.XXXX', 0o600)
  await writeAll(c.fs, fh, data)
  await c.fs.flush(fh)
  await c.fs.release(fh)
  const volumeId = (await volumeOf(c, '.lib.XXXX')).id
  c.service.reset()
  await c.fs.utimens('/.lib.XXXX', 1_600_000_000_000)
  await c.fs.chmod('/.lib.XXXX', 0o644)
  await c.fs.rename('/.lib.XXXX', '/lib')
  const afterSyscalls = c.service.counts()
  c.store.invalidate()
  t.same(await c.fs.readdir('/'), ['.', '..', 'lib'], 'a listing before the write shows the new name only, though the backend still has the old one')
  await c.lifecycle.written(volumeId)
  t.same(afterSyscalls, {}, 'no backend request inside the three calls')
  t.same(c.service.counts(), { list: 1, replace: 1 }, 'then one write of name, mode and mtime')
  const volume = await volumeOf(c, 'lib')
  t.same([volume.id, volume.metadata.cinderfs_mode, volume.metadata.cinderfs_mtime_ns, volume.readOnly], [volumeId, '644', '1600000000000000000', false],
    'the backend has the new name and attributes before the seal')
  c.clock.advance(sealDelayMs)
  await settle(c)
  t.ok((await volumeOf(c, 'lib')).readOnly, 'then sealed under its name')
  t.ok((await readAll(c.fs, 'lib')).equals(data))
})

t.test('another host\'s image takes the name inside the seal delay: ours is still sealed, at once, not retried', async t => {
  const c = await core(t)
  await copyIn(c.fs, 'image', randomBytes(50_000))
  const ours = await volumeOf(c, 'image')
  // the other host's newer image under the same name (its rename generation is later)
  await c.local.create({ name: 'image-image', sizeGiB: 1, metadata: { image_size: '7', image_owner: 'test-owner', cinderfs_renamed_at: String(Date.now() + 1000) } })
  c.store.invalidate()
  t.not((await c.fs.getxattr('/image', xattrNames.volumeId)).toString(), ours.id, 'the name shows the other host\'s image now')
  c.clock.advance(sealDelayMs)
  await settle(c)
  const sealed = (await listAll(c.local)).find(v => v.id === ours.id)
  t.same([sealed?.readOnly, sealed?.name], [true, 'image-image'], 'ours is sealed, its name untouched')
  t.equal(c.janitor.size, 0, 'nothing left for the janitor to retry')
})

t.test('a listing that began before a rename written behind reached the backend does not bring the old name back', async t => {
  const c = await core(t)
  await copyIn(c.fs, '.lib.XXXX', randomBytes(10_000))
  const volumeId = (await volumeOf(c, '.lib.XXXX')).id
  await c.fs.rename('/.lib.XXXX', '/lib')
  // A listing gets the backend's state (the old name), then is held until the write behind is done.
  const list = c.local.list.bind(c.local)
  let release: (() => void) | undefined
  c.local.list = async options => {
    const page = await list(options)
    await new Promise<void>(resolve => { release = resolve })
    return page
  }
  c.store.invalidate()
  const listing = c.fs.readdir('/')
  while (release === undefined) await new Promise(resolve => setImmediate(resolve))
  await c.lifecycle.written(volumeId)
  release()
  t.same(await listing, ['.', '..', 'lib'], 'the listing shows the new name only')
  c.local.list = list
  c.clock.advance(sealDelayMs)
  await settle(c)
  t.same((await listAll(c.local)).map(v => [v.name, v.readOnly]), [['image-lib', true]], 'sealed under the new name in the backend')
})

t.test('rename onto an image replaces it: the old volume goes only after the new name stands', async t => {
  const c = await core(t)
  await copyIn(c.fs, 'old', Buffer.from('old bytes'))
  await copyIn(c.fs, 'new', Buffer.from('new bytes'))
  c.clock.advance(sealDelayMs)
  await settle(c)
  const oldId = (await volumeOf(c, 'old')).id
  c.service.reset()
  await c.fs.rename('/new', '/old')
  t.same(c.service.counts(), { delete: 1, get: 1, rename: 1, updateMetadata: 1 }, 'rename: metadata and rename, then the replaced volume checked and deleted')
  t.equal((await readAll(c.fs, 'old')).toString(), 'new bytes')
  t.notOk((await listAll(c.local)).some(v => v.id === oldId), 'the replaced volume is deleted')
  t.equal(await errno(async () => c.fs.getattr('/new')), 'ENOENT')
})

t.test('unlink while open: the reader keeps reading; the volume goes at the last close', async t => {
  const c = await core(t)
  const data = randomBytes(2 * 1024 * 1024)
  await copyIn(c.fs, 'image', data)
  c.clock.advance(sealDelayMs)
  await settle(c)
  const fh = await c.fs.open('/image', constants.O_RDONLY)
  const head = Buffer.alloc(4096)
  await c.fs.read(fh, head, 4096, 0)
  await c.fs.unlink('/image')
  t.equal(await errno(async () => c.fs.getattr('/image')), 'ENOENT', 'the name is gone at once')
  t.equal((await listAll(c.local)).length, 1, 'the volume stays while open')
  const rest = Buffer.alloc(data.length)
  let got = 0
  for (let position = 0; position < data.length; position += request) got += await c.fs.read(fh, rest.subarray(position), request, position)
  t.equal(got, data.length)
  t.ok(rest.equals(data), 'the open handle reads the whole image')
  await c.fs.release(fh)
  t.same(await listAll(c.local), [], 'deleted at the last close')
})

t.test('unlink while still being written: nothing is left after the writer closes', async t => {
  const c = await core(t)
  const fh = await c.fs.create('/partial', 0o644)
  await writeAll(c.fs, fh, randomBytes(1024 * 1024))
  await c.fs.unlink('/partial')
  await c.fs.flush(fh)
  await c.fs.release(fh)
  t.same(await listAll(c.local), [], 'no volume')
  t.same(await c.local.listOwnAttachments(), [], 'no attachment')
})

t.test('a failed finalisation: close gets the error, the volume is deleted, the name is gone', async t => {
  const c = await core(t)
  const fh = await c.fs.create('/image', 0o644)
  await writeAll(c.fs, fh, randomBytes(100_000))
  c.service.failNext('replace', new CinderfsError('EIO', 'Cinder answered 500'))
  t.equal(await errno(async () => c.fs.flush(fh)), 'EIO', 'close fails with the error')
  c.service.heal()
  await c.fs.release(fh)
  t.same(await listAll(c.local), [], 'no volume is left')
  t.same(await c.local.listOwnAttachments(), [], 'no attachment is left')
  t.equal(await errno(async () => c.fs.getattr('/image')), 'ENOENT', 'no image is shown')
})

t.test('recovery after a crash: a finalised image in its seal delay is sealed, a partial upload deleted', async t => {
  const first = await core(t, { host: 'crashy' })
  const data = randomBytes(300_000)
  await copyIn(first.fs, 'complete', data)
  const partial = await first.fs.create('/partial', 0o644)
  await writeAll(first.fs, partial, randomBytes(200_000))
  // The daemon dies here: no release, no seal, no detach.
  const again = await core(t, { dir: first.dir, host: 'crashy' })
  await again.fs.recover()
  const volumes = await listAll(again.local)
  t.same(volumes.map(v => v.name), ['image-complete'], 'only the complete image is left')
  t.ok(volumes[0]?.readOnly, 'and it is sealed')
  t.same(await again.local.listOwnAttachments(), [], 'no attachment is left')
  t.ok((await readAll(again.fs, 'complete')).equals(data), 'its bytes are intact')
  t.equal((await again.fs.getxattr('/complete', xattrNames.md5)).toString(), md5(data))
})

t.test('shutdown: an upload being written fails and goes; an image in its seal delay is sealed', async t => {
  const c = await core(t)
  await copyIn(c.fs, 'done', Buffer.from('complete'))
  const fh = await c.fs.create('/writing', 0o644)
  await c.fs.write(fh, Buffer.from('partial'), 7, 0)
  await c.fs.shutdown()
  const volumes = await listAll(c.local)
  t.same(volumes.map(v => [v.name, v.readOnly]), [['image-done', true]])
  t.same(await c.local.listOwnAttachments(), [], 'everything detached')
})
