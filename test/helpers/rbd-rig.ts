import { execFile, spawnSync } from 'node:child_process'
import path from 'node:path'
import { promisify } from 'node:util'
import type { Test } from 'tap'
import { needsCeph, startCeph, type CephCluster } from './ceph.js'
import { startDaemon, workspace, type Daemon, type Workspace } from './daemon.js'
import { CLOUDS, needsOpenStack, STATE_DIR } from './openstack.js'
import { needsFuse } from './requirements.js'

const run = promisify(execFile)
const up = path.resolve(__dirname, '../../../scripts/openstack/up')
const down = path.resolve(__dirname, '../../../scripts/openstack/down')

/** Why the Keystone -> Cinder -> Ceph tests cannot run here, or false. */
export function needsRbdRig(): string | false {
  return needsFuse() || needsCeph() || needsOpenStack()
}

const rbdEnv = (value: '0' | '1'): NodeJS.ProcessEnv => ({ ...process.env, CINDERFS_OS_RBD: value })

/**
 * Ceph (scripts/ceph/up) and the OpenStack rig with its RBD backend and volume
 * type `rbd` (CINDERFS_OS_RBD=1 scripts/openstack/up). At teardown, in this
 * order: the RBD backend is removed again if this added it (the rig is
 * stopped if this started it), then Ceph is stopped if this started it.
 */
export async function useRbdRig(t: Test): Promise<CephCluster> {
  const cephTeardown: Array<() => Promise<void>> = []
  const ceph = await startCeph({ teardown: fn => { cephTeardown.push(fn) } })
  const rigWasUp = spawnSync(up, ['--check'], { stdio: 'ignore' }).status === 0
  const rbdWasUp = spawnSync(up, ['--check'], { stdio: 'ignore', env: rbdEnv('1') }).status === 0
  if (!rbdWasUp) {
    const started = Date.now()
    await run(up, [], { env: rbdEnv('1'), maxBuffer: 16 << 20 })
    t.comment(`RBD backend ${rigWasUp ? 'added' : 'and rig started'} in ${((Date.now() - started) / 1000).toFixed(1)} s`)
  }
  t.teardown(async () => {
    if (!rigWasUp) await run(down, [], { maxBuffer: 16 << 20 })
    else if (!rbdWasUp) await run(up, [], { env: rbdEnv('0'), maxBuffer: 16 << 20 })
    for (const fn of cephTeardown) await fn()
  })
  return ceph
}

/**
 * `cinderfs mount` on the cinder backend, volume type `rbd`, as the glance
 * account. The daemon finds the rig's clouds.yaml in its working directory,
 * which it inherits from this process. The rig's project is shared, so the
 * files a test makes start with `prefix`; those are removed (with their
 * volumes) before the daemon stops.
 */
export async function startRbdDaemon(t: Test, ceph: CephCluster, prefix: string, ws?: Workspace): Promise<{ ws: Workspace, daemon: Daemon }> {
  process.chdir(STATE_DIR)
  const space = ws ?? await workspace(t, 'local')
  const daemon = await startDaemon(space, ['--backend', 'cinder', '--os-cloud', CLOUDS.glance, '--volume-type', 'rbd', '--ceph-keyring-dir', ceph.keyringDir], { cwd: STATE_DIR })
  // Teardowns run last first: this one before the daemon stops.
  t.teardown(async () => { await run('bash', ['-c', `rm -f '${space.mountpoint}/${prefix}'* 2>/dev/null; true`]) })
  return { ws: space, daemon }
}

/** The pool's images (`volume-<id>`), as client.cinder lists them. */
export async function poolImages(ceph: CephCluster): Promise<string[]> {
  return (await ceph.rbd('ls', ceph.pool)).split('\n').filter(name => name !== '').sort()
}
