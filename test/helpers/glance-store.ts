import { execFile, spawnSync } from 'node:child_process'
import path from 'node:path'
import { promisify } from 'node:util'
import { CLOUDS, needsOpenStack, STATE_DIR } from './openstack.js'

const exec = promisify(execFile)

/** Debian bookworm's glance_store 4.1.0: the real peer of the interop tests. */
export const GLANCE_STORE_PACKAGE = 'python3-glance-store'
/** The test-only CLI over glance_store's cinder store (see its header for the root helper recipe). */
export const GLANCE_STORE_DRIVER = path.resolve(__dirname, '../../../test/interop/glance_store_driver.py')

function installed(): boolean {
  return spawnSync('dpkg-query', ['-W', '-f=${Status}', GLANCE_STORE_PACKAGE], { encoding: 'utf8' }).stdout.includes('ok installed')
}

/**
 * Why glance_store's cinder store cannot be driven here, or false. Installs
 * the Debian package when it is missing (as root; apt-get update only if the
 * first try fails), so a fresh machine needs nothing beforehand.
 */
export function needsGlanceStore(): string | false {
  const rig = needsOpenStack()
  if (rig !== false) return rig
  if (installed()) return false
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  const install = (): string => spawnSync('apt-get', ['-o', 'DPkg::Lock::Timeout=600', 'install', '-y', '-qq', '--no-install-recommends', GLANCE_STORE_PACKAGE], { env, encoding: 'utf8' }).stderr
  let err = install()
  if (!installed()) {
    spawnSync('apt-get', ['-o', 'DPkg::Lock::Timeout=600', 'update', '-qq'], { env })
    err = install()
  }
  if (!installed()) return `cannot install ${GLANCE_STORE_PACKAGE} (glance_store 4.1.0, the interop peer): ${err.trim().split('\n').pop() ?? 'apt-get failed'}`
  return false
}

export interface Added {
  location: string
  size: number
  checksum: string
  multihash: string
}

/** glance_store's cinder store as glance-api uses it, with the rig's glance account. */
export const glanceStore = {
  /** `add()`; size 0 means unknown (glance_store then grows the volume 1 GiB at a time). */
  add: async (imageId: string, file: string, size: number): Promise<Added> => JSON.parse(await driver(['add', imageId, file, String(size)])) as Added,
  get: async (location: string, out: string): Promise<void> => { await driver(['get', location, out]) },
  getSize: async (location: string): Promise<number> => Number((await driver(['get-size', location])).trim()),
  delete: async (location: string): Promise<void> => { await driver(['delete', location]) },
}

async function driver(args: string[]): Promise<string> {
  const clouds = path.join(STATE_DIR, 'clouds.yaml')
  try {
    return (await exec('/usr/bin/python3', [GLANCE_STORE_DRIVER, '--clouds', clouds, '--cloud', CLOUDS.glance, ...args], { maxBuffer: 16 << 20, timeout: 1_800_000 })).stdout
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? ''
    throw new Error(`glance_store ${args[0] ?? ''} failed: ${stderr.trim().split('\n').slice(-3).join('\n')}`)
  }
}
