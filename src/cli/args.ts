import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { defaultLocalDir, defaults, validateConfig, type BackendKind, type Config, type FuseBindingName } from '../config/config.js'
import { parseSize } from '../config/sizes.js'
import { ConfigError, errorMessage } from '../errors/errors.js'
import { isUuid } from '../store/names.js'

export type Command =
  | { kind: 'help' }
  | { kind: 'version' }
  | { kind: 'mount', config: Config }
  | { kind: 'unmount', mountpoint: string }
  /** `imageIds` empty: every image volume named by an image id. */
  | { kind: 'register', config: Config, dryRun: boolean, imageIds: string[] }

const options = {
  backend: { type: 'string' },
  'local-dir': { type: 'string' },
  'cache-size': { type: 'string' },
  'block-size': { type: 'string' },
  readahead: { type: 'string' },
  'idle-detach': { type: 'string' },
  'seal-delay': { type: 'string' },
  'write-buffer': { type: 'string' },
  'list-ttl': { type: 'string' },
  'api-retry-window': { type: 'string' },
  'cinder-state-timeout': { type: 'string' },
  'image-owner': { type: 'string' },
  'os-cloud': { type: 'string' },
  'glance-config': { type: 'string' },
  'volume-type': { type: 'string' },
  'os-max-microversion': { type: 'string' },
  'ceph-keyring-dir': { type: 'string' },
  'iscsi-initiator': { type: 'string' },
  host: { type: 'string' },
  'fuse-binding': { type: 'string' },
  'allow-other': { type: 'boolean' },
  'read-only': { type: 'boolean' },
  'log-level': { type: 'string' },
  'glance-register': { type: 'boolean' },
  'glance-store': { type: 'string' },
  'glance-url': { type: 'string' },
  retire: { type: 'boolean' },
  'dry-run': { type: 'boolean' },
  'create-ahead': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
} as const

/** argv (without node and the script) → what to do. Every mistake is a ConfigError of one line. */
export function parseCommand(argv: string[]): Command {
  let parsed
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true })
  } catch (err) {
    // node's own messages can run to three lines; the first says what is wrong.
    throw new ConfigError(errorMessage(err).split('\n')[0] ?? 'bad arguments')
  }
  const { values, positionals } = parsed
  if (values.help === true) return { kind: 'help' }
  if (values.version === true) return { kind: 'version' }
  const [verb, mountpoint, ...extra] = positionals
  if (verb === undefined) throw new ConfigError('missing command: mount, unmount or register (see cinderfs --help)')
  if (verb !== 'mount' && verb !== 'unmount' && verb !== 'register') throw new ConfigError(`unknown command '${verb}': use mount, unmount or register (see cinderfs --help)`)
  if (verb === 'register') {
    const imageIds = positionals.slice(1)
    const bad = imageIds.find(id => !isUuid(id))
    if (bad !== undefined) throw new ConfigError(`register: '${bad}' is not a Glance image id (it takes image ids and the backend's flags, not a mount point)`)
    if (values['glance-register'] === true) throw new ConfigError('--glance-register is a mount option; register registers every image anyway')
    const config = configOf(values, '')
    if (config.backend !== 'cinder') throw new ConfigError('register: Glance serves images from Cinder only: give --backend cinder')
    return { kind: 'register', config, dryRun: values['dry-run'] ?? false, imageIds }
  }
  if (mountpoint === undefined) throw new ConfigError(`${verb}: missing MOUNTPOINT`)
  if (extra.length > 0) throw new ConfigError(`${verb}: unexpected argument '${extra[0]}'`)
  const resolved = path.resolve(mountpoint)
  if (verb === 'unmount') return { kind: 'unmount', mountpoint: resolved }
  if (values['dry-run'] === true) throw new ConfigError('--dry-run is an option of register')
  return { kind: 'mount', config: configOf(values, resolved) }
}

type Values = ReturnType<typeof parseArgs<{ args: string[], options: typeof options, allowPositionals: true, strict: true }>>['values']

function configOf(values: Values, mountpoint: string): Config {

  const backend = values.backend ?? defaults.backend
  if (backend !== 'local' && backend !== 'cinder') throw new ConfigError(`--backend: '${backend}' is not local or cinder`)
  const fuseBinding = values['fuse-binding'] ?? defaults.fuseBinding
  if (fuseBinding !== 'fuse3' && fuseBinding !== 'fuse-native') throw new ConfigError(`--fuse-binding: '${fuseBinding}' is not fuse3 or fuse-native`)
  const config: Config = {
    mountpoint,
    backend: backend satisfies BackendKind,
    localDir: path.resolve(values['local-dir'] ?? defaultLocalDir()),
    cacheSize: sizeOf('--cache-size', values['cache-size'], defaults.cacheSize),
    blockSize: sizeOf('--block-size', values['block-size'], defaults.blockSize),
    readahead: sizeOf('--readahead', values.readahead, defaults.readahead),
    idleDetachSeconds: secondsOf('--idle-detach', values['idle-detach'], defaults.idleDetachSeconds),
    sealDelaySeconds: secondsOf('--seal-delay', values['seal-delay'], defaults.sealDelaySeconds),
    writeBuffer: sizeOf('--write-buffer', values['write-buffer'], defaults.writeBuffer),
    listTtlSeconds: secondsOf('--list-ttl', values['list-ttl'], defaults.listTtlSeconds),
    apiRetryWindowSeconds: secondsOf('--api-retry-window', values['api-retry-window'], defaults.apiRetryWindowSeconds),
    stateTimeoutSeconds: values['cinder-state-timeout'] === undefined ? undefined : secondsOf('--cinder-state-timeout', values['cinder-state-timeout'], 0),
    allowOther: values['allow-other'] ?? false,
    readOnly: values['read-only'] ?? false,
    logLevel: values['log-level'] ?? defaults.logLevel,
    imageOwner: values['image-owner'],
    osCloud: values['os-cloud'],
    glanceConfig: values['glance-config'] === undefined ? undefined : path.resolve(values['glance-config']),
    volumeType: values['volume-type'],
    maxMicroversion: values['os-max-microversion'],
    cephKeyringDir: path.resolve(values['ceph-keyring-dir'] ?? defaults.cephKeyringDir),
    iscsiInitiator: values['iscsi-initiator'],
    host: values.host ?? os.hostname(),
    fuseBinding: fuseBinding satisfies FuseBindingName,
    uid: process.getuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
    glanceRegister: values['glance-register'] ?? false,
    glanceStore: values['glance-store'],
    glanceUrl: values['glance-url'],
    retire: values.retire ?? false,
    createAhead: values['create-ahead'] === undefined ? 0 : Number(values['create-ahead']),
  }
  return validateConfig(config)
}

function sizeOf(flag: string, text: string | undefined, fallback: number): number {
  return text === undefined ? fallback : parseSize(flag, text)
}

function secondsOf(flag: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback
  const value = Number(text)
  if (text.trim() === '' || !Number.isFinite(value) || value < 0) throw new ConfigError(`${flag}: '${text}' is not a number of seconds`)
  return value
}
