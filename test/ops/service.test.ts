import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs/promises'
import path from 'node:path'
import t from 'tap'
import { MOUNTED_MESSAGE } from '../../src/cli/daemon.js'
import { needsBackend, randomFile, startDaemon, workspace } from '../helpers/daemon.js'
import { run, sh } from '../helpers/shell.js'

const repo = path.join(__dirname, '..', '..', '..')
const cli = path.join(repo, 'bin', 'cinderfs')

function needsTool(tool: string, why: string): string | false {
  return spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0 ? false : `needs ${tool} (${why})`
}

t.test('systemd-analyze verify accepts the unit in contrib/', { skip: needsTool('systemd-analyze', "Debian's systemd package") }, async t => {
  const dir = await fs.mkdtemp('/tmp/cinderfs-unit-')
  t.teardown(async () => fs.rm(dir, { recursive: true, force: true }))
  // As installed: ExecStart and the EnvironmentFile where this checkout has them.
  const unit = (await fs.readFile(path.join(repo, 'contrib', 'cinderfs.service'), 'utf8'))
    .replace('/usr/local/bin/cinderfs', cli).replace('/etc/cinderfs/cinderfs.env', path.join(repo, 'contrib', 'cinderfs.env'))
  await fs.writeFile(path.join(dir, 'cinderfs.service'), unit)
  const verify = await run(`cd '${dir}' && systemd-analyze verify ./cinderfs.service`)
  t.equal(verify.code, 0, 'systemd-analyze verify exits 0', { stderr: verify.stderr })
  t.notMatch(verify.stderr, /cinderfs\.service:/, 'and says nothing about the unit')
  t.match(unit, /^Type=notify$/m)
  t.match(unit, /^Restart=on-failure$/m)
  t.notMatch(unit, /password|secret/i, 'no credentials in the unit')
})

t.test('Type=notify: READY=1 reaches $NOTIFY_SOCKET once mounted', { skip: needsBackend('local') || needsTool('systemd-notify', "Debian's systemd package") }, async t => {
  const ws = await workspace(t, 'local')
  const socket = path.join(ws.root, 'notify.sock')
  // systemd's side: a datagram socket (python, as Node has no AF_UNIX datagrams).
  const listener = spawn('python3', ['-c', [
    'import socket, sys',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
    `s.bind(${JSON.stringify(socket)})`,
    'print("listening", flush=True)',
    'print(s.recv(4096).decode().replace("\\n", " "), flush=True)',
  ].join('\n')], { stdio: ['ignore', 'pipe', 'inherit'] })
  let heard = ''
  const got = new Promise<void>(resolve => listener.stdout.on('data', (chunk: Buffer) => {
    heard += chunk.toString()
    if (heard.includes('READY=1')) resolve()
  }))
  t.teardown(() => { listener.kill() })
  while (!heard.includes('listening')) await sh('sleep 0.05')
  process.env.NOTIFY_SOCKET = socket
  let daemon
  try {
    daemon = await startDaemon(ws)
  } finally {
    delete process.env.NOTIFY_SOCKET
  }
  await got
  t.match(heard, new RegExp(`READY=1 MAINPID=${daemon.child.pid ?? -1}`), 'READY=1 for the daemon\'s pid')
})

t.test('mount -t fuse.cinderfs with -o options, and an fstab line (mount -T), mount and unmount cleanly', { skip: needsBackend('local') || needsTool('mount.fuse3', 'fuse3') || needsTool('unshare', 'util-linux') }, async t => {
  const ws = await workspace(t, 'local')
  const source = await randomFile(3 * 1024 * 1024 + 17)
  const fstab = path.join(ws.root, 'fstab')
  const logs = [path.join(ws.root, 'helper.log'), path.join(ws.root, 'fstab.log')]
  await fs.writeFile(fstab, `local:${ws.localDir} ${ws.mountpoint} fuse.cinderfs defaults,ro,nofail,_netdev,cache_size=64M,block_size=256K,log_file=${logs[1]} 0 0\n`)
  // mount(8) runs helpers with a fixed PATH: in a mount namespace of its own,
  // this checkout's cinderfs is put where an install would be.
  const script = `
    set -eu
    mount -t tmpfs tmpfs /usr/local/bin
    ln -s '${cli}' /usr/local/bin/cinderfs
    waitgone() { for i in $(seq 300); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; echo "daemon $1 still running"; exit 1; }
    pidof_log() { sed -n 's/.*"pid":\\([0-9]*\\).*"msg":"${MOUNTED_MESSAGE}".*/\\1/p' "$1" | tail -1; }

    if mount -t fuse.cinderfs local:${ws.localDir} ${ws.mountpoint} -o no_such_option=1 2>'${ws.root}/bad.err'; then echo "bad option accepted"; exit 1; fi
    echo "bad option: $(cat '${ws.root}/bad.err')"

    mount -t fuse.cinderfs local:${ws.localDir} ${ws.mountpoint} -o cache_size=64M,allow_other,metrics_addr=127.0.0.1:0,log_file=${logs[0]}
    grep -q " ${ws.mountpoint} fuse.cinderfs " /proc/self/mounts && echo "helper: mounted"
    cp '${source}' ${ws.mountpoint}/disk.raw
    cmp '${source}' ${ws.mountpoint}/disk.raw && echo "helper: copy ok"
    pid=$(pidof_log ${logs[0]})
    umount ${ws.mountpoint}
    waitgone "$pid" && echo "helper: daemon stopped after umount"

    mount -T '${fstab}' ${ws.mountpoint}
    grep -q " ${ws.mountpoint} fuse.cinderfs ro," /proc/self/mounts && echo "fstab: mounted read-only"
    cmp '${source}' ${ws.mountpoint}/disk.raw && echo "fstab: image there"
    if touch ${ws.mountpoint}/new.raw 2>'${ws.root}/ro.err'; then echo "ro ignored"; exit 1; fi
    echo "fstab: write refused: $(cat '${ws.root}/ro.err')"
    pid=$(pidof_log ${logs[1]})
    cinderfs unmount ${ws.mountpoint}
    waitgone "$pid" && echo "fstab: daemon stopped after cinderfs unmount"
    grep -q " ${ws.mountpoint} " /proc/self/mounts && { echo "still mounted"; exit 1; }
    echo done
  `
  await fs.writeFile(path.join(ws.root, 'mount.sh'), script)
  const result = await run(`unshare -m --propagation private bash '${ws.root}/mount.sh'`, { timeoutMs: 120_000 })
  t.equal(result.code, 0, 'the script ran through', { stdout: result.stdout, stderr: result.stderr })
  t.match(result.stdout, /bad option: .*-o no_such_option: not a cinderfs option/, 'a bad -o option fails the mount with a clear line')
  for (const step of ['helper: mounted', 'helper: copy ok', 'helper: daemon stopped after umount', 'fstab: mounted read-only', 'fstab: image there', 'fstab: daemon stopped after cinderfs unmount', 'done']) {
    t.match(result.stdout, step, step)
  }
  t.match(result.stdout, /fstab: write refused: .*Read-only file system/, '-o ro is honoured')
  const helperLog = await fs.readFile(logs[0] ?? '', 'utf8')
  t.match(helperLog, /"cacheSize":"64M"/, 'options reached the daemon (-o cache_size=64M)')
  t.match(helperLog, /"msg":"stopped"/, 'the daemon stopped cleanly')
  t.match(await fs.readFile(logs[1] ?? '', 'utf8'), /"blockSize":"256K"/, 'fstab options reached the daemon')
})
