import fs from 'node:fs/promises'
import path from 'node:path'
import t from 'tap'
import { parse as parseYaml, stringify as toYaml } from 'yaml'
import { needsBackend, startDaemon, workspace } from '../helpers/daemon.js'
import { CLOUDS, needsOpenStack, rigRunning, STATE_DIR } from '../helpers/openstack.js'
import { run } from '../helpers/shell.js'

const cli = path.join(__dirname, '..', '..', '..', 'bin', 'cinderfs')

/** The output lines of one check, by its name (`FAIL  /dev/fuse: ...` and its `fix:` line). */
function check(output: string, name: string): string {
  const lines = output.split('\n')
  const at = lines.findIndex(l => l.slice(6).startsWith(`${name}:`))
  if (at < 0) return ''
  return [lines[at], lines[at + 1]?.startsWith('      fix:') === true ? lines[at + 1] : ''].join('\n')
}

t.test('doctor on a healthy host: every check ok or not needed, exit 0', { skip: needsBackend('local') }, async t => {
  const ws = await workspace(t, 'local')
  const healthy = await run(`'${cli}' doctor '${ws.mountpoint}' --local-dir '${ws.localDir}'`)
  t.equal(healthy.code, 0, 'exit 0', { stdout: healthy.stdout })
  t.match(healthy.stdout, /all checks passed\n$/)
  for (const name of ['/dev/fuse', 'FUSE library', 'privileges', 'backend', `mount point ${ws.mountpoint}`]) t.match(check(healthy.stdout, name), /^ok /, `${name} ok`)
  t.notMatch(healthy.stdout, /^FAIL/m)

  await startDaemon(ws)
  t.match(check((await run(`'${cli}' doctor '${ws.mountpoint}' --local-dir '${ws.localDir}'`)).stdout, `mount point ${ws.mountpoint}`), /^ok .*mounted and answering/, 'a live mount is fine')
})

t.test('doctor names what is wrong: /dev/fuse hidden, a stale mount, a missing keyring', { skip: needsBackend('local') }, async t => {
  const ws = await workspace(t, 'local')
  // /dev/fuse hidden by a bind mount of an empty file, in a mount namespace of its own.
  await fs.writeFile(path.join(ws.root, 'not-a-device'), '')
  const hidden = await run(`unshare -m --propagation private sh -c "mount --bind '${ws.root}/not-a-device' /dev/fuse && exec '${process.execPath}' '${cli}' doctor --local-dir '${ws.localDir}' '${ws.mountpoint}'"`)
  t.equal(hidden.code, 1, 'exit 1', { stdout: hidden.stdout, stderr: hidden.stderr })
  t.match(check(hidden.stdout, '/dev/fuse'), /^FAIL  \/dev\/fuse: not the FUSE device.*\n {6}fix: .*mknod -m 666 \/dev\/fuse c 10 229/, '/dev/fuse named, with the fix')
  t.match(hidden.stdout, /1 check failed\n$/)

  // A daemon killed hard leaves its mount stale.
  const daemon = await startDaemon(ws)
  await daemon.kill()
  const stale = await run(`'${cli}' doctor '${ws.mountpoint}' --local-dir '${ws.localDir}'`)
  t.equal(stale.code, 1)
  t.match(check(stale.stdout, `mount point ${ws.mountpoint}`), /^FAIL .*stale.*\n {6}fix: cinderfs unmount /, 'the stale mount named, with the fix')
  await run(`fusermount -u -z '${ws.mountpoint}'`)

  // A Ceph cluster configured without a keyring (Keystone at a closed port: the keyring check still runs).
  const ceph = path.join(ws.root, 'ceph')
  await fs.mkdir(ceph)
  await fs.writeFile(path.join(ceph, 'ceph.conf'), '[global]\nmon_host = 127.0.0.1\n')
  const env = { ...process.env, OS_AUTH_URL: 'http://127.0.0.1:9/v3', OS_USERNAME: 'glance', OS_PASSWORD: 'not-shown-anywhere', OS_PROJECT_NAME: 'service', OS_CLOUD: '' }
  const keyless = await run(`'${cli}' doctor --backend cinder --ceph-keyring-dir '${ceph}' '${ws.mountpoint}'`, { env, timeoutMs: 60_000 })
  t.equal(keyless.code, 1)
  t.match(check(keyless.stdout, 'Ceph keyring'), /^FAIL  Ceph keyring: no readable keyring with a key for cluster ceph in .*\n {6}fix: copy the keyring .*ceph\.client\.USER\.keyring/, 'the missing keyring named, with the fix')
  t.match(check(keyless.stdout, 'Keystone'), /^FAIL  Keystone: http:\/\/127\.0\.0\.1:9\/v3: /, 'an unreachable Keystone named')
  t.notMatch(keyless.stdout, /not-shown-anywhere/, 'the password is never printed')
  await fs.writeFile(path.join(ceph, 'ceph.client.cinder.keyring'), '[client.cinder]\n\tkey = AQBnotarealkey==\n')
  t.match(check((await run(`'${cli}' doctor --backend cinder --ceph-keyring-dir '${ceph}'`, { env, timeoutMs: 60_000 })).stdout, 'Ceph keyring'), /^ok +Ceph keyring: ceph\.client\.cinder\.keyring/, 'with the keyring in place it passes')
})

t.test('doctor against the real Keystone and Cinder: healthy passes; a wrong password is named', { skip: needsOpenStack() || (rigRunning() ? false : 'the OpenStack rig is not running (scripts/openstack/up)') }, async t => {
  const dir = await fs.mkdtemp('/tmp/cinderfs-doctor-')
  t.teardown(async () => fs.rm(dir, { recursive: true, force: true }))
  const doc = parseYaml(await fs.readFile(path.join(STATE_DIR, 'clouds.yaml'), 'utf8')) as { clouds: Record<string, { auth: { password: string } }> }
  const cloud = doc.clouds[CLOUDS.member]
  if (cloud === undefined) throw new Error(`no ${CLOUDS.member} in the rig's clouds.yaml`)
  const password = cloud.auth.password
  await fs.writeFile(path.join(dir, 'clouds.yaml'), toYaml(doc), { mode: 0o600 })
  const args = `doctor --backend cinder --os-cloud ${CLOUDS.member} --ceph-keyring-dir '${dir}/no-ceph'`
  const healthy = await run(`cd '${dir}' && '${cli}' ${args}`, { timeoutMs: 120_000 })
  t.equal(healthy.code, 0, 'exit 0 with the right credentials', { stdout: healthy.stdout })
  t.match(check(healthy.stdout, 'Cinder'), /^ok +Cinder: reachable, microversion 3\.\d+/, 'Cinder and its microversion')
  t.match(check(healthy.stdout, 'volume type'), /^ok /)

  cloud.auth.password = `${password}-wrong`
  await fs.writeFile(path.join(dir, 'clouds.yaml'), toYaml(doc), { mode: 0o600 })
  const wrong = await run(`cd '${dir}' && '${cli}' ${args} --volume-type no-such-type`, { timeoutMs: 120_000 })
  t.equal(wrong.code, 1, 'exit 1')
  t.match(check(wrong.stdout, 'Keystone'), /^FAIL  Keystone: Keystone refused the credentials.*\n {6}fix: correct the password or application credential in .*clouds\.yaml cloud cinderfs-member/, 'the wrong password named, with where to fix it')
  t.match(check(wrong.stdout, 'Cinder'), /^skip /, 'what needs credentials is skipped, not failed twice')
  t.notOk(wrong.stdout.includes(password), 'the password is never printed')

  cloud.auth.password = password
  await fs.writeFile(path.join(dir, 'clouds.yaml'), toYaml(doc), { mode: 0o600 })
  const badType = await run(`cd '${dir}' && '${cli}' ${args} --volume-type no-such-type`, { timeoutMs: 120_000 })
  t.match(check(badType.stdout, 'volume type'), /^FAIL  volume type: no-such-type is not a volume type this project can use/, 'an unknown volume type named')
})
