import t from 'tap'
import { volumes, randomFile, startDaemon, workspace, needsBackend } from '../helpers/daemon.js'
import { run, sh, sha256, xattr } from '../helpers/shell.js'
import { lifecycleMessages } from '../../src/image/lifecycle.js'

const MiB = 1024 * 1024

async function finalised(file: string): Promise<void> {
  for (let i = 0; i < 100 && (await run(`/usr/bin/python3 -c 'import os,sys; os.getxattr(sys.argv[1], "user.cinderfs.md5")' '${file}'`)).code !== 0; i++) await sh('sleep 0.1')
}
const sizes = [0, 1, 4095, MiB + 1, 300 * MiB]

t.test('cp in and cat out: every size comes back byte for byte, with exact sizes and hashes', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws, ['--seal-delay', '2'])
  for (const size of sizes) {
    const source = await randomFile(size)
    const name = `image-of-${size}-bytes`
    await sh(`cp '${source}' '${daemon.file(name)}'`)
    const listed = await sh(`ls -l '${daemon.file(name)}'`)
    t.match(listed, new RegExp(`^-rw-r--r-- 1 \\S+ \\S+ ${size} `), `ls -l shows ${size} bytes`)
    const copy = `${ws.root}/back-${size}`
    await sh(`cat '${daemon.file(name)}' > '${copy}'`)
    t.equal((await run(`cmp '${source}' '${copy}'`)).code, 0, `${size} bytes: cmp equal`)
    t.equal(await sha256(daemon.file(name)), await sha256(source), `${size} bytes: sha256 equal`)
    const md5 = (await sh(`md5sum '${source}'`)).split(' ')[0]
    const sha512 = (await sh(`sha512sum '${source}'`)).split(' ')[0]
    // A file nobody wrote (0 B) is finalised at release, which FUSE sends just after close returns.
    await finalised(daemon.file(name))
    t.equal(await xattr(daemon.file(name), 'user.cinderfs.md5'), md5, 'md5 stored as Glance computes checksum')
    t.equal(await xattr(daemon.file(name), 'user.cinderfs.sha512'), sha512, 'sha512 stored as Glance computes os_hash_value')
  }
  // The read-only flag is set when the seal delay after the last close ends.
  await daemon.logged(lifecycleMessages.sealed, { times: sizes.length })
  const made = await volumes(ws)
  t.equal(made.length, sizes.length, 'one volume per file')
  for (const volume of made) {
    const size = Number(volume.metadata.image_size)
    t.equal(volume.sizeGiB, Math.max(1, Math.ceil(size / 1024 ** 3)), `${volume.name}: volume is ceil(bytes/GiB) GiB`)
    t.ok(volume.readOnly, `${volume.name}: marked read-only`)
    t.equal(volume.metadata.cinderfs_state, undefined, `${volume.name}: no upload mark left`)
    t.equal(volume.metadata.image_owner, ws.imageOwner, `${volume.name}: image_owner set`)
  }
})

t.test('a write past the first GiB grows the volume to exactly the GiB it needs', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws)
  // 2 MiB of data at 1023 MiB: the write crosses the 1 GiB end of the new volume; the rest is a hole.
  const chunk = await randomFile(2 * MiB)
  await sh(`dd if='${chunk}' of='${daemon.file('big')}' bs=1M seek=1023 status=none`)
  await sh(`dd if='${chunk}' of='${ws.root}/expected' bs=1M seek=1023 status=none`)
  t.equal(await sha256(daemon.file('big')), await sha256(`${ws.root}/expected`), 'sha256 equal, hole reads as zeros')
  t.equal(await xattr(daemon.file('big'), 'user.cinderfs.md5'), (await sh(`md5sum '${ws.root}/expected'`)).split(' ')[0], 'md5 counts the hole as zeros')
  const [volume] = await volumes(ws)
  t.equal(volume?.sizeGiB, 2, 'volume grew from 1 to exactly 2 GiB')
  t.equal(volume?.metadata.image_size, String(1025 * MiB), 'image_size in bytes')
  t.match(daemon.logs(), /"sizeGiB":2.*"msg":"volume grown"/, 'the grow is logged')
})

t.test('a Glance UUID name becomes glance_image_id; other names do not', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws)
  const uuid = '8a1f3c1e-0b7e-4a4c-9d7d-3f1c2b6a9e10'
  await sh(`echo hello > '${daemon.file(uuid)}' && echo plain > '${daemon.file('notes.txt')}'`)
  const byName = Object.fromEntries((await volumes(ws)).map(v => [v.name, v]))
  t.equal(byName[`image-${uuid}`]?.metadata.glance_image_id, uuid, 'volume image-<uuid> carries glance_image_id')
  t.equal(byName['image-notes.txt']?.metadata.glance_image_id, undefined, 'a non-UUID name has no glance_image_id')
  t.equal(byName['image-notes.txt']?.metadata.image_size, '6', 'image_size is the byte count as a string')
  t.equal(await sh(`cat '${daemon.file('notes.txt')}'`), 'plain\n', 'shell redirection (open, dup2, close, write) works')
})
