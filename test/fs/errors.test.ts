import t from 'tap'
import { volumes, loopsOf, randomFile, startDaemon, workspace, needsBackend, localOnly } from '../helpers/daemon.js'
import { run, sh, sha256 } from '../helpers/shell.js'
import { lifecycleMessages } from '../../src/image/lifecycle.js'

t.test('refusals: each gets its errno and changes nothing', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  // sealed before the refusals: a short seal delay, not the default 10 s of waiting
  const daemon = await startDaemon(ws, ['--seal-delay', '1'])
  await sh(`echo original > '${daemon.file('image')}'`)
  await daemon.logged(lifecycleMessages.sealed)

  const overwrite = await run(`echo changed > '${daemon.file('image')}'`)
  t.match(overwrite.stderr, /Read-only file system/, 'writing a finalised image: EROFS')
  const append = await run(`echo more >> '${daemon.file('image')}'`)
  t.match(append.stderr, /Read-only file system/, 'appending to it: EROFS')
  const truncated = await run(`truncate -s 0 '${daemon.file('image')}'`)
  t.match(truncated.stderr, /Read-only file system/, 'truncating it: EROFS')
  t.equal(await sh(`cat '${daemon.file('image')}'`), 'original\n', 'its bytes are unchanged')

  t.match((await run(`rm '${daemon.file('missing')}'`)).stderr, /No such file or directory/, 'rm of a missing file: ENOENT')
  t.match((await run(`mkdir '${daemon.file('dir')}'`)).stderr, /Operation not permitted/, 'mkdir: EPERM')
  t.match((await run(`ln -s image '${daemon.file('link')}'`)).stderr, /Operation not permitted/, 'symlink: EPERM')
  t.match((await run(`ln '${daemon.file('image')}' '${daemon.file('hard')}'`)).stderr, /Operation not permitted/, 'hard link: EPERM')
  t.match((await run(`mkfifo '${daemon.file('fifo')}'`)).stderr, /Operation not permitted/, 'mkfifo: EPERM')
  const long = 'x'.repeat(256)
  t.match((await run(`touch '${daemon.file(long)}'`)).stderr, /File name too long/, 'a 256-byte name: ENAMETOOLONG')
  const tooLongForCinder = 'y'.repeat(250)
  t.match((await run(`touch '${daemon.file(tooLongForCinder)}'`)).stderr, /File name too long/, 'a name that makes image-<name> longer than 255: ENAMETOOLONG')
  t.equal((await run(`touch '${daemon.file('z'.repeat(249))}'`)).code, 0, 'the longest name that fits works')
  t.match(daemon.logs(), /"operation":"mkdir".*refused/, 'refusals are logged')
  t.equal((await volumes(ws)).length, 2, 'no volume was made by a refused operation')
})

t.test('rm of an open file: its reader keeps reading; the volume goes at the last close', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws)
  const source = await randomFile(3 * 1024 * 1024)
  await sh(`cp '${source}' '${daemon.file('image')}'`)
  const script = `import os, hashlib, subprocess
fd = os.open('${daemon.file('image')}', os.O_RDONLY)
head = os.read(fd, 4096)
subprocess.run(['rm', '${daemon.file('image')}'], check=True)
print(os.path.exists('${daemon.file('image')}'), len(os.listdir('${ws.mountpoint}')))
rest = b''
while chunk := os.read(fd, 1 << 20):
    rest += chunk
os.close(fd)
print(hashlib.sha256(head + rest).hexdigest())`
  const out = (await sh(`/usr/bin/python3 -c "${script}"`)).trim().split('\n')
  t.equal(out[0], 'False 0', 'the name is gone at once')
  t.equal(out[1], await sha256(source), 'the open handle read the whole image')
  // Cinder's list drops the volume while the daemon still waits for the delete to finish: wait for both.
  await daemon.logged(lifecycleMessages.deleted)
  t.same(await volumes(ws), [], 'the volume was deleted after the last close')
  t.match(daemon.logs(), /"msg":"image deleted"/, 'the delete is logged')
})

t.test('rename onto an existing image replaces it; the old volume is deleted after', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws)
  await sh(`echo old > '${daemon.file('image')}' && echo new > '${daemon.file('incoming')}'`)
  await sh(`mv '${daemon.file('incoming')}' '${daemon.file('image')}'`)
  t.equal(await sh(`ls '${ws.mountpoint}'`), 'image\n', 'one name left')
  t.equal(await sh(`cat '${daemon.file('image')}'`), 'new\n', 'it has the new bytes')
  const left = await volumes(ws)
  t.same(left.map(v => v.name), ['image-image'], 'the replaced volume is gone')
  const uuid = '3c7a1d2e-5b6f-4a8b-9c0d-1e2f3a4b5c6d'
  await sh(`mv '${daemon.file('image')}' '${daemon.file(uuid)}'`)
  // inside the seal delay the new name reaches the backend just behind the rename
  await daemon.logged(lifecycleMessages.writtenBehind, { name: uuid })
  t.equal((await volumes(ws))[0]?.metadata.glance_image_id, uuid, 'renaming to a UUID sets glance_image_id')
})

t.test('a full disk under --local-dir: ENOSPC to the writer, no image and nothing else left', { skip: localOnly('a tmpfs under --local-dir fills up; the cinder quota test covers ENOSPC/EDQUOT there') }, async t => {
  const ws = await workspace(t)
  await sh(`mkdir -p '${ws.localDir}' && mount -t tmpfs -o size=100m cinderfs-test '${ws.localDir}'`)
  const daemon = await startDaemon(ws)
  const copy = await run(`cp '${await randomFile(300 * 1024 * 1024)}' '${daemon.file('big')}'`)
  t.not(copy.code, 0, 'cp fails')
  t.match(copy.stderr, /No space left on device/, 'with ENOSPC')
  t.equal(await sh(`ls '${ws.mountpoint}'`), '', 'no image is shown')
  t.same(await volumes(ws), [], 'no volume is left')
  t.same(await loopsOf(ws), [], 'no loop device is left')
  t.match(daemon.logs(), /"errno":"ENOSPC"/, 'the failure is logged with its errno')
  await daemon.stop()
  await sh(`umount '${ws.localDir}'`)
})

t.test('a read-only mount refuses every change with EROFS and still serves reads', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const writer = await startDaemon(ws)
  await sh(`echo data > '${writer.file('image')}'`)
  await writer.stop()
  const reader = await startDaemon(ws, ['--read-only'])
  t.equal(await sh(`cat '${reader.file('image')}'`), 'data\n', 'reads work')
  for (const [what, command] of [['create', `touch '${reader.file('new')}'`], ['rm', `rm '${reader.file('image')}'`], ['mv', `mv '${reader.file('image')}' '${reader.file('other')}'`], ['chmod', `chmod 600 '${reader.file('image')}'`]]) {
    t.match((await run(command ?? '')).stderr, /Read-only file system/, `${what}: EROFS`)
  }
})
