import t from 'tap'
import { randomFile, startDaemon, workspace, needsBackend } from '../helpers/daemon.js'
import { sh, xattr } from '../helpers/shell.js'

t.test('unmount and mount again: same bytes, sizes, mtimes, modes and hashes', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const first = await startDaemon(ws)
  for (const [name, size] of [['a', 0], ['b', 777], ['c', 5 * 1024 * 1024]] as const) {
    await sh(`cp '${await randomFile(size)}' '${first.file(name)}'`)
  }
  await sh(`touch -d '2020-02-02 20:20:20.123' '${first.file('b')}' && chmod 600 '${first.file('c')}'`)
  const snapshot = async (): Promise<string> => {
    const stats = await sh(`cd '${ws.mountpoint}' && stat -c '%n %s %Y.%y %a' a b c && sha256sum a b c`)
    const hashes = await Promise.all(['a', 'b', 'c'].map(async n => `${await xattr(`${ws.mountpoint}/${n}`, 'user.cinderfs.md5')} ${await xattr(`${ws.mountpoint}/${n}`, 'user.cinderfs.sha512')}`))
    return `${stats}${hashes.join('\n')}`
  }
  const before = await snapshot()
  t.match(before, /b 777 1580674820\.2020-02-02 20:20:20\.123000000/, 'touch -d stored the mtime (to the ms)')
  t.equal(await first.stop(), 0, 'SIGTERM: clean exit 0')
  t.equal((await sh(`grep -c ' ${ws.mountpoint} ' /proc/mounts || true`)).trim(), '0', 'unmounted')

  await startDaemon(ws)
  t.equal(await snapshot(), before, 'everything the same after mounting again')
})
