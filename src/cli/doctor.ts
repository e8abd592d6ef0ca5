import { execFile } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import { pino } from 'pino'
import { CinderVolumeService } from '../backends/cinder.js'
import type { Config } from '../config/config.js'
import { openStackSettings, type OpenStackSettings } from '../config/openstack.js'
import { errorCode, errorMessage } from '../errors/errors.js'
import { loadFuse } from '../fuse/binding.js'
import { isMounted, probeMountpoint } from '../fuse/mount.js'
import { formatMicroversion } from '../openstack/microversion.js'
import { FEATURES } from '../openstack/cinder.js'
import { readPidFile } from './runtime.js'

const run = promisify(execFile)

type Outcome = { status: 'ok' | 'skip', detail: string } | { status: 'fail', detail: string, fix: string }

const ok = (detail: string): Outcome => ({ status: 'ok', detail })
const skip = (detail: string): Outcome => ({ status: 'skip', detail })
const bad = (detail: string, fix: string): Outcome => ({ status: 'fail', detail, fix })

/** /dev/fuse is character device 10,229. */
const fuseDevice = { major: 10, minor: 229 }
const capSysAdmin = 21n
/** A hung daemon's mount would block stat forever. */
const statTimeoutMs = 5000

/**
 * Checks in one run what the daemon needs, one line each: ok, skipped (not
 * needed with this configuration) or FAIL with how to fix it. Never prints a
 * secret: credentials are named by their source (file, cloud, user), not shown.
 * Returns the exit code: 0 only when nothing failed.
 */
export async function runDoctor(config: Config, mountpoint: string | undefined, out: NodeJS.WritableStream): Promise<number> {
  let failures = 0
  const report = (name: string, outcome: Outcome): void => {
    const tag = { ok: 'ok  ', skip: 'skip', fail: 'FAIL' }[outcome.status]
    out.write(`${tag}  ${name}: ${outcome.detail}\n`)
    if (outcome.status === 'fail') {
      failures++
      out.write(`      fix: ${outcome.fix}\n`)
    }
  }
  report('/dev/fuse', checkFuseDevice())
  report('FUSE library', await checkFuseLibrary())
  report('privileges', checkPrivileges(config))
  if (config.backend === 'local') {
    report('backend', checkLocalDir(config.localDir))
    report('Ceph keyring', skip('the local backend uses no Ceph'))
  } else {
    for (const [name, outcome] of await checkCloud(config)) report(name, outcome)
    report('Ceph keyring', checkKeyring(config.cephKeyringDir))
  }
  report('iSCSI', skip('portals come with each volume\'s connection info at attach; reachability is checked then (libiscsi, no kernel initiator needed)'))
  for (const [name, outcome] of await checkMounts(mountpoint)) report(name, outcome)
  out.write(failures === 0 ? 'all checks passed\n' : `${failures} check${failures === 1 ? '' : 's'} failed\n`)
  return failures === 0 ? 0 : 1
}

function checkFuseDevice(): Outcome {
  const fix = 'load the module (modprobe fuse); in a container, pass the device (docker run --device /dev/fuse)'
  let stat
  try {
    stat = fs.statSync('/dev/fuse')
  } catch (err) {
    return bad(`missing (${errorCode(err) ?? errorMessage(err)})`, fix)
  }
  const major = (stat.rdev >> 8) & 0xfff
  const minor = (stat.rdev & 0xff) | ((stat.rdev >> 12) & 0xfff00)
  if (!stat.isCharacterDevice() || major !== fuseDevice.major || minor !== fuseDevice.minor) {
    return bad(`not the FUSE device (a ${stat.isCharacterDevice() ? `character device ${major},${minor}` : 'file that is no device'})`, `recreate it: rm /dev/fuse && mknod -m 666 /dev/fuse c 10 229; ${fix}`)
  }
  try {
    fs.closeSync(fs.openSync('/dev/fuse', 'r+'))
  } catch (err) {
    return bad(`cannot be opened (${errorCode(err) ?? errorMessage(err)})`, `run as root, or ${fix}`)
  }
  return ok('character device 10,229, opens for reading and writing')
}

async function checkFuseLibrary(): Promise<Outcome> {
  try {
    loadFuse()
  } catch (err) {
    return bad(`fuse-native cannot load libfuse.so.2: ${errorMessage(err).split('\n')[0] ?? ''}`, 'apt-get install libfuse2, then run scripts/setup (it builds native/fuse-shim)')
  }
  try {
    await run('fusermount', ['-V'])
  } catch {
    return bad('fusermount is not on PATH (unmounting needs it)', 'apt-get install fuse3')
  }
  return ok('libfuse2 loads; fusermount is on PATH')
}

function checkPrivileges(config: Config): Outcome {
  if (process.geteuid?.() === 0) return ok('running as root')
  const status = fs.readFileSync('/proc/self/status', 'utf8')
  const effective = BigInt(`0x${/^CapEff:\s*([0-9a-f]+)/m.exec(status)?.[1] ?? '0'}`)
  if ((effective >> capSysAdmin) & 1n) return ok('not root, but CAP_SYS_ADMIN is effective')
  if (config.backend === 'local') return ok('not root: the local backend keeps volumes in regular files (no loop devices)')
  return bad('not root: attaching Cinder volumes needs root (block devices, loop devices)', 'run cinderfs as root (the systemd unit in contrib/ does)')
}

function checkLocalDir(dir: string): Outcome {
  let existing = dir
  while (!fs.existsSync(existing) && path.dirname(existing) !== existing) existing = path.dirname(existing)
  try {
    fs.accessSync(existing, fs.constants.W_OK | fs.constants.X_OK)
  } catch {
    return bad(`${existing} is not writable${existing === dir ? '' : ` (needed to create ${dir})`}`, `run as root, or give --local-dir a directory you can write`)
  }
  return ok(existing === dir ? `local volumes in ${dir}` : `${dir} will be created at mount`)
}

/** Credentials, Keystone, Cinder and its microversion, the volume type: each step needs the one before. */
async function checkCloud(config: Config): Promise<Array<[string, Outcome]>> {
  const results: Array<[string, Outcome]> = []
  let settings: OpenStackSettings
  try {
    settings = openStackSettings({
      ...(config.osCloud === undefined ? {} : { osCloud: config.osCloud }),
      ...(config.glanceConfig === undefined ? {} : { glanceConfig: config.glanceConfig }),
      overrides: {
        ...(config.volumeType === undefined ? {} : { volumeType: config.volumeType }),
        ...(config.maxMicroversion === undefined ? {} : { maxMicroversion: config.maxMicroversion }),
      },
    })
  } catch (err) {
    return [['credentials', bad(errorMessage(err), 'give --os-cloud NAME (a clouds.yaml entry), the OS_* variables (e.g. an EnvironmentFile of the systemd unit) or --glance-config FILE')]]
  }
  results.push(['credentials', ok(`from ${settings.source}`)])
  const service = new CinderVolumeService({ settings, logger: pino({ level: 'silent' }), host: config.host })
  const later = (names: string[]): void => { for (const name of names) results.push([name, skip('needs working credentials first')]) }
  try {
    try {
      await service.projectId()
    } catch (err) {
      const detail = errorMessage(err)
      if (errorCode(err) === 'EACCES') results.push(['Keystone', bad(detail, `correct the password or application credential in ${settings.source}`)])
      else if (errorCode(err) === 'ENOENT' || /endpoint/.test(detail)) results.push(['Keystone', bad(detail, 'check the region, interface and service catalog of the cloud (openstack catalog list)')])
      else results.push(['Keystone', bad(`${settings.authUrl}: ${detail}`, `make ${settings.authUrl} reachable from this host (firewall, DNS, TLS: cacert/insecure)`)])
      later(['Cinder', 'volume type'])
      return results
    }
    results.push(['Keystone', ok(`authenticated at ${settings.authUrl}`)])
    const cinder = await service.client()
    const version = formatMicroversion(cinder.microversion)
    const limits = [
      cinder.supports(FEATURES.attachmentMode) ? undefined : `below 3.${FEATURES.attachmentMode}: legacy attach actions`,
      cinder.supports(FEATURES.onlineExtend) ? undefined : `below 3.${FEATURES.onlineExtend}: a volume being written is detached to grow`,
    ].filter(x => x !== undefined)
    results.push(['Cinder', ok(`reachable, microversion ${version}${limits.length === 0 ? '' : ` (${limits.join('; ')})`}`)])
    const types = await cinder.volumeTypeNames()
    const wanted = settings.volumeType
    if (wanted === undefined) results.push(['volume type', ok(`none configured: Cinder's default type (${types.length} visible)`)])
    else if (types.includes(wanted)) results.push(['volume type', ok(wanted)])
    else results.push(['volume type', bad(`${wanted} is not a volume type this project can use (visible: ${types.join(', ') || 'none'})`, 'pick one of the visible types with --volume-type, or ask the cloud admin to make it public')])
  } catch (err) {
    results.push(['Cinder', bad(errorMessage(err), 'check that Cinder (block-storage) is in the catalog and reachable from this host')])
  } finally {
    await service.close()
  }
  return results
}

/** Cinder never sends the cephx key: each `<cluster>.conf` needs a `<cluster>.client.<user>.keyring` beside it. */
function checkKeyring(dir: string): Outcome {
  let names: string[]
  try {
    names = fs.readdirSync(dir)
  } catch {
    return skip(`no ${dir}: only volumes Cinder serves from Ceph RBD need one`)
  }
  const clusters = names.filter(n => n.endsWith('.conf')).map(n => n.slice(0, -'.conf'.length))
  if (clusters.length === 0) return skip(`no Ceph cluster configured in ${dir}: only volumes Cinder serves from Ceph RBD need one`)
  const missing: string[] = []
  const found: string[] = []
  for (const cluster of clusters) {
    const usable = names.filter(n => n.startsWith(`${cluster}.client.`) && n.endsWith('.keyring')).filter(n => {
      try {
        return /^\s*key\s*=/m.test(fs.readFileSync(path.join(dir, n), 'utf8'))
      } catch {
        return false
      }
    })
    if (usable.length === 0) missing.push(cluster)
    else found.push(...usable)
  }
  if (missing.length > 0) {
    return bad(`no readable keyring with a key for cluster ${missing.join(', ')} in ${dir}`, `copy the keyring of the Ceph user Cinder's RBD backend uses (rbd_user) to ${dir}/${missing[0] ?? 'ceph'}.client.USER.keyring, mode 0600, or point --ceph-keyring-dir at it`)
  }
  return ok(found.join(', '))
}

/** The mount point if given (else every cinderfs mount): a dead daemon's mount answers ENOTCONN. */
async function checkMounts(mountpoint: string | undefined): Promise<Array<[string, Outcome]>> {
  if (mountpoint === undefined) {
    const mounts = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map(line => line.split(' ')).filter(f => f[2] === 'fuse.cinderfs').map(f => unescapeMount(f[1] ?? ''))
    if (mounts.length === 0) return [['mounts', ok('no cinderfs mount on this host')]]
    return Promise.all(mounts.map(async m => [`mount ${m}`, await checkMount(m)] as [string, Outcome]))
  }
  return [[`mount point ${mountpoint}`, await checkMount(mountpoint)]]
}

async function checkMount(mountpoint: string): Promise<Outcome> {
  const fix = `cinderfs unmount ${mountpoint} (or fusermount -u -z ${mountpoint}), then mount again`
  const probe = await probeMountpoint(mountpoint, statTimeoutMs)
  if (probe === 'timeout') return bad(`does not answer within ${statTimeoutMs / 1000} s (a hung daemon)`, fix)
  if ('error' in probe) {
    const code = errorCode(probe.error)
    if (code === 'ENOTCONN') return bad('stale: the daemon that mounted it is gone (Transport endpoint is not connected)', fix)
    if (code === 'ENOENT') return bad('does not exist', `mkdir -p ${mountpoint}`)
    return bad(errorMessage(probe.error), fix)
  }
  const stat = probe.stat
  if (!stat.isDirectory()) return bad('is not a directory', `use a directory as the mount point`)
  if (!await isMounted(mountpoint)) return ok('a directory, not mounted')
  const pid = await readPidFile(mountpoint)
  return ok(pid === undefined ? 'mounted and answering' : `mounted and answering (daemon pid ${pid})`)
}

function unescapeMount(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)))
}
