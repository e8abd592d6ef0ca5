import t from 'tap'
import { volumes, randomFile, startDaemon, workspace, needsBackend } from '../helpers/daemon.js'
import { run, sh, sha256, xattr } from '../helpers/shell.js'

const MiB = 1024 * 1024

async function sameAs(t: tap.Test, actual: string, expected: string, what: string): Promise<void> {
  t.equal((await run(`cmp '${expected}' '${actual}'`)).code, 0, `${what}: bytes equal`)
  t.equal(await xattr(actual, 'user.cinderfs.md5'), (await sh(`md5sum '${expected}'`)).split(' ')[0], `${what}: md5 equal`)
  t.equal(await xattr(actual, 'user.cinderfs.sha512'), (await sh(`sha512sum '${expected}'`)).split(' ')[0], `${what}: sha512 equal`)
}

t.test('holes: dd seek=, cp --sparse=always, truncate then write', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws)
  const data = await randomFile(3 * MiB)

  await sh(`dd if='${data}' of='${ws.root}/seek' bs=1M seek=10 status=none`)
  await sh(`dd if='${data}' of='${daemon.file('seek')}' bs=1M seek=10 status=none`)
  await sameAs(t, daemon.file('seek'), `${ws.root}/seek`, 'dd seek=10M')

  // A sparse source: data, a 20 MiB hole, data, and a hole at the end that cp makes with ftruncate.
  await sh(`dd if='${data}' of='${ws.root}/sparse' bs=1M count=1 status=none && dd if='${data}' of='${ws.root}/sparse' bs=1M seek=21 count=2 conv=notrunc status=none && truncate -s 40M '${ws.root}/sparse'`)
  await sh(`cp --sparse=always '${ws.root}/sparse' '${daemon.file('sparse')}'`)
  await sameAs(t, daemon.file('sparse'), `${ws.root}/sparse`, 'cp --sparse=always')

  // One open: ftruncate to the final size first (the size hint), then writes out of order.
  const script = `import os
fd = os.open('${daemon.file('sized')}', os.O_WRONLY | os.O_CREAT, 0o644)
os.ftruncate(fd, 5 * 1024 * 1024 + 3)
data = open('${data}', 'rb').read()
os.pwrite(fd, data[:1024 * 1024], 4 * 1024 * 1024)
os.pwrite(fd, data[:4096], 0)
os.close(fd)`
  await sh(`/usr/bin/python3 -c "${script}"`)
  const expected = `${ws.root}/sized`
  await sh(`truncate -s $((5 * 1024 * 1024 + 3)) '${expected}' && dd if='${data}' of='${expected}' bs=1M count=1 seek=4 conv=notrunc status=none && dd if='${data}' of='${expected}' bs=4096 count=1 conv=notrunc status=none`)
  await sameAs(t, daemon.file('sized'), expected, 'ftruncate, then out-of-order writes (hashed by reading back)')

  // Two opens of a file still being written: truncate(1) on it while another handle writes.
  await sh(`exec 3>'${daemon.file('two-opens')}'; truncate -s 2M '${daemon.file('two-opens')}'; head -c 4096 '${data}' >&3; exec 3>&-`)
  await sh(`truncate -s 2M '${ws.root}/two-opens' && head -c 4096 '${data}' | dd of='${ws.root}/two-opens' conv=notrunc status=none`)
  await sameAs(t, daemon.file('two-opens'), `${ws.root}/two-opens`, 'truncate -s then write, through two opens')

  for (const volume of await volumes(ws)) t.equal(volume.sizeGiB, 1, `${volume.name}: 1 GiB volume`)
})

t.test('the xattr size hint sizes the volume before the data arrives', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws)
  const data = await randomFile(MiB)
  const script = `import os
fd = os.open('${daemon.file('hinted')}', os.O_WRONLY | os.O_CREAT, 0o644)
os.setxattr('${daemon.file('hinted')}', 'user.cinderfs.size_hint', b'3221225472')
os.write(fd, open('${data}', 'rb').read())
os.close(fd)`
  await sh(`/usr/bin/python3 -c "${script}"`)
  t.equal(await sha256(daemon.file('hinted')), await sha256(data), 'data equal')
  const [volume] = await volumes(ws)
  t.equal(volume?.sizeGiB, 3, 'volume grown once to the hinted 3 GiB')
})
