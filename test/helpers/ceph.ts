import { execFile } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import { rbdAddonPath } from '../../src/connectors/rbd-binding.js'
import { needsRoot } from './requirements.js'

const run = promisify(execFile)
// dist/test/helpers -> the repository's scripts/ceph
const scripts = path.join(__dirname, '..', '..', '..', 'scripts', 'ceph')

/** The single-node cluster of scripts/ceph/up, as client.cinder sees it. */
export interface CephCluster {
  conf: string
  monHost: string
  port: string
  pool: string
  user: string
  keyringDir: string
  keyring: string
  /** The rbd CLI as client.cinder; resolves to its stdout. */
  rbd(...args: string[]): Promise<string>
  /** A new image of `mib` MiB in the pool, named uniquely; removed when the tests end. */
  createImage(mib: number): Promise<string>
}

/** Why the Ceph tests cannot run here, or false: pass as tap's `skip`. */
export function needsCeph(): string | false {
  if (needsRoot() !== false) return 'needs root (scripts/ceph/up installs packages and runs the Ceph daemons)'
  if (!fs.existsSync(rbdAddonPath)) return `needs the librbd addon ${rbdAddonPath} (install librbd-dev librados-dev, run scripts/setup)`
  return false
}

/**
 * Starts the cluster with scripts/ceph/up (installing Ceph if needed). At
 * `owner`'s teardown the images these tests created are removed, and the
 * cluster is stopped with scripts/ceph/down if this call started it; one that
 * was already running is left running.
 */
export async function startCeph(owner: { teardown(fn: () => Promise<void>): void }): Promise<CephCluster> {
  const { stdout } = await run(path.join(scripts, 'up'), [], { timeout: 600_000 })
  const env = new Map(stdout.split('\n').filter(line => line.includes('=')).map(line => {
    const i = line.indexOf('=')
    return [line.slice(0, i), line.slice(i + 1)] as const
  }))
  const get = (name: string): string => {
    const value = env.get(`CINDERFS_CEPH_${name}`)
    if (value === undefined) throw new Error(`scripts/ceph/up printed no CINDERFS_CEPH_${name}`)
    return value
  }
  const conf = get('CONF')
  const user = get('USER')
  const pool = get('POOL')
  const keyringDir = get('KEYRING_DIR')
  const images: string[] = []
  const rbd = async (...args: string[]): Promise<string> =>
    (await run('rbd', ['-c', conf, '--id', user, ...args], { timeout: 120_000, maxBuffer: 1 << 24 })).stdout
  const started = get('STARTED') === '1'
  owner.teardown(async () => {
    // A memstore OSD's data goes when it stops; anything else keeps the images.
    if (!started || get('STORE') !== 'memstore') {
      for (const image of images) await rbd('rm', '--no-progress', `${pool}/${image}`)
    }
    if (started) await run(path.join(scripts, 'down'), [], { timeout: 120_000 })
  })
  return {
    conf,
    monHost: get('MON_HOST'),
    port: get('PORT'),
    pool,
    user,
    keyringDir,
    keyring: path.join(keyringDir, `ceph.client.${user}.keyring`),
    rbd,
    async createImage(mib: number): Promise<string> {
      const image = `volume-${crypto.randomUUID()}`
      await rbd('create', '--size', `${mib}M`, `${pool}/${image}`)
      images.push(image)
      return image
    },
  }
}

export function sha256Of(data: Buffer): string {
  return crypto.createHash('sha256').update(data).digest('hex')
}
