import { randomUUID } from 'node:crypto'
import t from 'tap'
import { volumes, randomFile, startDaemon, workspace, needsBackend } from '../helpers/daemon.js'
import { run, sh } from '../helpers/shell.js'
import { fsMessages } from '../../src/fs/image-fs.js'
import { lifecycleMessages } from '../../src/image/lifecycle.js'

const MiB = 1024 * 1024
// 20 files from 0 B to 64 MiB, named like Glance image UUIDs (as in /var/lib/glance/images).
const sizes = [0, 1, 511, 4096, 65535, MiB, MiB + 7, 3 * MiB, 5 * MiB, 8 * MiB - 1, 10 * MiB, 12 * MiB, 16 * MiB, 20 * MiB, 24 * MiB, 31 * MiB, 32 * MiB, 40 * MiB, 50 * MiB, 64 * MiB]

async function glanceStore(dir: string): Promise<void> {
  await sh(`mkdir -p '${dir}'`)
  const source = await randomFile(64 * MiB + 80 * 1024)
  for (const [i, size] of sizes.entries()) {
    // Distinct content per file: a slice of one random file at an offset of its own.
    await sh(`tail -c +${i * 4096 + 1} '${source}' | head -c ${size} > '${dir}/${randomUUID()}'`)
  }
}

t.test('rsync -a migrates a Glance filesystem store; a second run transfers nothing', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  await startDaemon(ws)
  const store = `${ws.root}/glance-images`
  await glanceStore(store)
  const count = Number((await sh(`ls '${store}' | wc -l`)).trim())
  t.equal(count, sizes.length, `source has ${count} image files`)

  await sh(`rsync -a '${store}/' '${ws.mountpoint}/'`)
  t.equal((await run(`diff -r '${store}' '${ws.mountpoint}'`)).code, 0, 'every file equal (diff -r)')
  // fuse-native carries times in milliseconds, so compare mtimes to the millisecond.
  const listing = (path: string) => sh(`cd '${path}' && find . -type f -printf '%P %s %T@ %m\\n' | sed -E 's/\\.([0-9]{3})[0-9]* / .\\1 /' | sort`)
  t.equal(await listing(ws.mountpoint), await listing(store), 'names, sizes, mtimes (to the ms) and modes preserved')

  const second = await sh(`rsync -a --stats '${store}/' '${ws.mountpoint}/'`)
  t.match(second, /Number of regular files transferred: 0/, 'second rsync -a transfers 0 files')

  const victim = (await sh(`ls '${store}' | head -1`)).trim()
  await sh(`head -c 123457 /dev/urandom > '${store}/${victim}'`)
  const third = await sh(`rsync -a --stats '${store}/' '${ws.mountpoint}/'`)
  t.match(third, /Number of regular files transferred: 1/, 'a changed source file is transferred again')
  t.equal((await run(`cmp '${store}/${victim}' '${ws.mountpoint}/${victim}'`)).code, 0, 'and replaced')
  t.equal((await volumes(ws)).length, count, 'the replaced image volume was deleted: one volume per file')
  t.equal((await sh(`ls -a '${ws.mountpoint}' | grep -c '^\\.' || true`)).trim(), '2', 'no temporary or hidden files left (only . and ..)')
})

t.test('an interrupted rsync --partial completes when run again', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws)
  const source = await randomFile(64 * MiB)
  await sh(`mkdir '${ws.root}/src' && cp '${source}' '${ws.root}/src/image'`)
  // Slow the transfer down, interrupt it part way; --partial keeps what arrived under the final name.
  const slow = run(`exec rsync -a --partial --bwlimit=8m '${ws.root}/src/' '${ws.mountpoint}/'`)
  // Interrupt it mid-transfer: once its temp file exists (creating a volume takes seconds on Cinder;
  // rsync interrupted inside that create leaves the empty temp file behind, as on any slow file system).
  await daemon.logged(fsMessages.uploadStarted)
  await sh('sleep 2')
  await run(`pkill -INT -f 'rsync -a --partial --bwlimit=8m ${ws.root}'`)
  const interrupted = await slow
  t.not(interrupted.code, 0, 'the first rsync was interrupted')
  await sh(`rsync -a --partial '${ws.root}/src/' '${ws.mountpoint}/'`)
  t.equal((await run(`cmp '${source}' '${daemon.file('image')}'`)).code, 0, 'the rerun completes the file byte for byte')
  t.equal((await volumes(ws)).length, 1, 'one volume left')
})

t.test('rsync --inplace works for new files and, once sealed, fails clearly on existing images', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws, ['--seal-delay', '1'])
  await sh(`mkdir '${ws.root}/src' && head -c 3000000 /dev/urandom > '${ws.root}/src/image'`)
  await sh(`rsync -a --inplace '${ws.root}/src/' '${ws.mountpoint}/'`)
  t.equal((await run(`cmp '${ws.root}/src/image' '${daemon.file('image')}'`)).code, 0, 'a new file arrives with --inplace')
  await daemon.logged(lifecycleMessages.sealed)
  // A new mtime too: in the same second as the first copy, rsync's quick check (size, whole-second mtime) would skip the file.
  await sh(`head -c 1000 /dev/urandom | dd of='${ws.root}/src/image' conv=notrunc status=none && touch -d '2021-01-01 10:00' '${ws.root}/src/image'`)
  const update = await run(`rsync -a --inplace '${ws.root}/src/' '${ws.mountpoint}/'`)
  t.not(update.code, 0, 'updating an existing image in place fails')
  t.match(update.stderr, /Read-only file system/, 'with a clear reason: images are read-only')
})
