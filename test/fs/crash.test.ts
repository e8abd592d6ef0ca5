import t from 'tap'
import { volumes, loopsOf, randomFile, startDaemon, workspace, needsBackend } from '../helpers/daemon.js'
import { run, sh } from '../helpers/shell.js'
import { fsMessages } from '../../src/fs/image-fs.js'

t.test('kill -9 during a 300 MiB upload, then mount again: the partial image is gone, nothing leaks', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws)
  await sh(`echo survivor > '${daemon.file('complete')}'`)
  const source = await randomFile(300 * 1024 * 1024)
  // A writer throttled to ~100 MiB/s, so the kill lands mid-upload.
  const writer = `import time
src = open('${source}', 'rb')
with open('${daemon.file('partial')}', 'wb') as out:
    while chunk := src.read(1 << 20):
        out.write(chunk)
        time.sleep(0.01)`
  const copy = run(`/usr/bin/python3 -c "${writer}"`)
  await daemon.logged(fsMessages.uploadStarted, { name: 'partial' })
  await sh('sleep 0.5')
  await daemon.kill()
  const copied = await copy
  t.not(copied.code, 0, 'the writer sees its copy fail')
  t.match((await run(`stat '${ws.mountpoint}'`)).stderr, /Transport endpoint is not connected/, 'the mount is stale after the crash')
  const leftovers = (await volumes(ws)).filter(v => v.name === 'image-partial')
  t.equal(leftovers[0]?.metadata.cinderfs_state, 'uploading', 'the half-written volume is still marked uploading')

  const again = await startDaemon(ws)
  t.match(again.logs(), /clearing a stale mount/, 'the stale mount was cleared at start')
  t.match(again.logs(), /recovery: delete a volume left uploading by an earlier run/, 'recovery deleted the partial volume')
  t.equal(await sh(`ls '${ws.mountpoint}'`), 'complete\n', 'only the complete image is listed')
  t.equal(await sh(`cat '${again.file('complete')}'`), 'survivor\n', 'and it is intact')
  t.same((await volumes(ws)).map(v => v.name), ['image-complete'], 'no volume left behind')
  await again.stop()
  t.same(await loopsOf(ws), [], 'no loop device left')
})

t.test('mount again at once after a kill -9, while the kernel still has the dead mount\'s root cached: the stale mount is cleared', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws, ['--list-ttl', '60'])
  await sh(`echo survivor > '${daemon.file('complete')}' && stat '${ws.mountpoint}' >/dev/null`)
  await daemon.kill()
  const again = await startDaemon(ws)
  t.match(again.logs(), /clearing a stale mount/, 'the new daemon took the mount for stale, not for another daemon\'s')
  t.equal(await sh(`cat '${again.file('complete')}'`), 'survivor\n', 'and serves the image')
})

t.test('SIGTERM during an upload: the upload fails cleanly, everything is detached, exit 0', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws)
  // The shell holds the upload open; its sleep must not (fd 3, and the output pipes the test waits on), or the test waits it out.
  const writer = run(`exec 3>'${daemon.file('open-upload')}'; echo partial >&3; sleep 30 3>&- >/dev/null 2>&1`)
  await daemon.logged(fsMessages.uploadStarted, { name: 'open-upload' })
  t.equal(await daemon.stop(), 0, 'exit code 0')
  await run(`pkill -f "exec 3>'${daemon.file('open-upload')}'"`)
  await writer
  t.same(await volumes(ws), [], 'the unfinished upload volume was deleted')
  t.same(await loopsOf(ws), [], 'no loop device left')
  t.equal((await sh(`grep -c ' ${ws.mountpoint} ' /proc/mounts || true`)).trim(), '0', 'unmounted')
})
