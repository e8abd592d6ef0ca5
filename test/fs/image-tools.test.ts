import fs from 'node:fs'
import t from 'tap'
import { lifecycleMessages } from '../../src/image/lifecycle.js'
import { needsBackend, randomFile, startDaemon, volumes, workspace } from '../helpers/daemon.js'
import { run, sh, xattr } from '../helpers/shell.js'

/** Why the image tools cannot run here, or as needsBackend (qemu-img and qemu-io: Debian's qemu-utils, which scripts/test installs). */
function needsQemu(): string | false {
  if (!fs.existsSync('/usr/bin/qemu-img') || !fs.existsSync('/usr/bin/qemu-io')) return 'needs qemu-img and qemu-io (Debian qemu-utils)'
  return needsBackend()
}

/** An operator's qcow2: random data, then zeros (which qcow2 leaves unallocated), converted from raw. */
async function sourceImages(dir: string): Promise<{ raw: string, qcow2: string }> {
  const raw = `${dir}/source.raw`
  const qcow2 = `${dir}/source.qcow2`
  await sh(`cp '${await randomFile(24 * 1024 * 1024)}' '${raw}' && truncate -s 40M '${raw}' && qemu-img convert -f raw -O qcow2 '${raw}' '${qcow2}'`)
  return { raw, qcow2 }
}

t.test('qemu-img convert straight into the mount, both ways; check and compare, also after a remount', { skip: needsQemu() }, async t => {
  const ws = await workspace(t)
  const { raw, qcow2 } = await sourceImages(ws.root)
  // qemu-img creates the file, closes it and opens it again for writing: the seal delay lets it
  // (3 s is plenty for that and keeps the wait for the seals below short).
  const daemon = await startDaemon(ws, ['--seal-delay', '3'])
  const toRaw = await run(`qemu-img convert -f qcow2 -O raw '${qcow2}' '${daemon.file('converted.raw')}'`)
  t.equal(toRaw.code, 0, `qcow2 → raw into the mount works ${toRaw.stderr}`)
  const toQcow2 = await run(`qemu-img convert -f raw -O qcow2 '${raw}' '${daemon.file('converted.qcow2')}'`)
  t.equal(toQcow2.code, 0, `raw → qcow2 into the mount works ${toQcow2.stderr}`)
  const check = async (): Promise<void> => {
    t.equal((await run(`qemu-img check -f qcow2 '${daemon.file('converted.qcow2')}'`)).code, 0, 'qemu-img check finds no errors')
    t.match(await sh(`qemu-img compare -f raw -F raw '${raw}' '${daemon.file('converted.raw')}'`), /Images are identical/, 'the raw copy equals the source')
    t.match(await sh(`qemu-img compare -f raw -F qcow2 '${raw}' '${daemon.file('converted.qcow2')}'`), /Images are identical/, 'the qcow2 copy holds the same disk')
    t.equal(await xattr(daemon.file('converted.raw'), 'user.cinderfs.md5'), (await sh(`md5sum '${raw}'`)).split(' ')[0], 'md5 of the raw image as Glance computes it')
  }
  await check()
  await daemon.logged(lifecycleMessages.sealed, { times: 2 })
  t.ok((await volumes(ws)).every(v => v.readOnly), 'both sealed read-only after the seal delay')
  t.equal(await daemon.stop(), 0)
  await startDaemon(ws, ['--seal-delay', '3'])
  await check()
  // And out of the mount again, as an operator converts back.
  t.equal((await run(`qemu-img convert -f qcow2 -O raw '${daemon.file('converted.qcow2')}' '${ws.root}/back.raw' && cmp '${raw}' '${ws.root}/back.raw'`)).code, 0, 'qcow2 → raw out of the mount equals the source')
})

t.test('qemu-img create, then qemu-io writes into it; truncate -s, then dd conv=notrunc', { skip: needsQemu() }, async t => {
  const ws = await workspace(t)
  // each tool opens the file again within the seal delay
  const daemon = await startDaemon(ws, ['--seal-delay', '3'])
  await sh(`qemu-img create -f qcow2 '${daemon.file('blank.qcow2')}' 64M`)
  await sh(`qemu-io -f qcow2 -c 'write -P 0xab 0 4M' -c 'write -P 0xcd 8M 1M' '${daemon.file('blank.qcow2')}'`)
  t.equal((await run(`qemu-img check -f qcow2 '${daemon.file('blank.qcow2')}'`)).code, 0, 'qemu-img check finds no errors')
  t.equal((await run(`qemu-io -f qcow2 -r -c 'read -P 0xab 0 4M' -c 'read -P 0xcd 8M 1M' -c 'read -P 0 4M 4M' '${daemon.file('blank.qcow2')}'`)).stdout.includes('Pattern verification failed'), false, 'qemu-io reads back what it wrote')

  const source = await randomFile(2 * 1024 * 1024)
  await sh(`truncate -s 5M '${daemon.file('sized')}' && dd if='${source}' of='${daemon.file('sized')}' bs=1M seek=1 conv=notrunc status=none`)
  await sh(`{ head -c 1M /dev/zero; cat '${source}'; head -c 2M /dev/zero; } > '${ws.root}/expected'`)
  t.equal((await run(`cmp '${ws.root}/expected' '${daemon.file('sized')}'`)).code, 0, 'the bytes dd wrote, between zeros, 5 MiB in all')
  t.equal(await xattr(daemon.file('sized'), 'user.cinderfs.md5'), (await sh(`md5sum '${ws.root}/expected'`)).split(' ')[0], 'md5 of the whole image')

  await daemon.logged(lifecycleMessages.sealed, { times: 2 })
  const late = await run(`dd if=/dev/zero of='${daemon.file('sized')}' bs=1 count=1 conv=notrunc status=none`)
  t.match(late.stderr, /Read-only file system/, 'a write after the seal delay: EROFS')
  t.equal((await run(`cmp '${ws.root}/expected' '${daemon.file('sized')}'`)).code, 0, 'and it changed nothing')
})

t.test('rsync of a library, then stat and cmp of every file at once, several times over', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  await startDaemon(ws)
  const sizes = [0, 1, 4095, 4096, 1024 * 1024 - 1, 1024 * 1024, 1024 * 1024 + 1, 3 * 1024 * 1024]
  const rounds = process.env.CINDERFS_TEST_BACKEND === 'cinder' ? 1 : 3
  for (let round = 0; round < rounds; round++) {
    // A library of new names each round, so rsync copies every file (temporary name, write, close, utimens, chmod, rename).
    const library = `${ws.root}/library-${round}`
    await sh(`mkdir '${library}' && ${sizes.map(size => `head -c ${size} /dev/urandom > '${library}/r${round}-${size}'`).join(' && ')}`)
    await sh(`rsync -a '${library}/' '${ws.mountpoint}/'`)
    const checks = await sh(`cd '${library}' && for f in *; do echo "$f $(stat -c %s '${ws.mountpoint}'/"$f") $(cmp -s "$f" '${ws.mountpoint}'/"$f" && echo same || echo differs)"; done`)
    t.same(checks.trim().split('\n').sort(), sizes.map(size => `r${round}-${size} ${size} same`).sort(), `round ${round}: right after rsync returns, every size and every byte is final`)
    const again = await sh(`rsync -a --itemize-changes '${library}/' '${ws.mountpoint}/'`)
    t.equal(again.split('\n').filter(line => line.startsWith('>f')).join('\n'), '', `round ${round}: a second rsync -a transfers nothing`)
  }
})
