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
  /** `background`: called as a mount helper (mount -t fuse.cinderfs): return once mounted, the daemon goes on alone. */
  | { kind: 'mount', config: Config, background: boolean }
  | { kind: 'unmount', mountpoint: string }
  /** `imageIds` empty: every image volume named by an image id. */
  | { kind: 'register', config: Config, dryRun: boolean, imageIds: string[] }
  | { kind: 'status', mountpoint: string, json: boolean }
  /** `mountpoint` is checked for a stale mount when given. */
  | { kind: 'doctor', config: Config, mountpoint: string | undefined }

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
  'log-file': { type: 'string' },
  'metrics-addr': { type: 'string' },
  foreground: { type: 'boolean', short: 'f' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
} as const

type OptionName = keyof typeof options

/**
 * Generic mount options mount(8) and fstab lines carry that mean nothing to
 * cinderfs (or that the kernel and mount.fuse3 handle): accepted, ignored.
 */
const ignoredMountOptions = new Set([
  'rw', 'defaults', 'dev', 'nodev', 'suid', 'nosuid', 'exec', 'noexec', 'atime', 'noatime', 'relatime', 'nodiratime',
  'strictatime', 'lazytime', 'async', 'sync', 'auto', 'noauto', 'user', 'nouser', 'users', 'nofail', '_netdev',
  'default_permissions', 'fsname', 'subtype',
])
/** Mount options with FUSE's own names for our flags. */
const mountOptionAliases: Record<string, OptionName> = { ro: 'read-only', allow_other: 'allow-other' }

const commands = ['mount', 'unmount', 'status', 'doctor']

/** argv (without node and the script) → what to do. Every mistake is a ConfigError of one line. */
export function parseCommand(argv: string[]): Command {
  let parsed
  try {
    parsed = parseArgs({ args: expandMountOptions(argv), options, allowPositionals: true, strict: true })
  } catch (err) {
    if (err instanceof ConfigError) throw err
    // node's own messages can run to three lines; the first says what is wrong.
    throw new ConfigError(errorMessage(err).split('\n')[0] ?? 'bad arguments')
  }
  const { values, positionals } = parsed
  if (values.help === true) return { kind: 'help' }
  if (values.version === true) return { kind: 'version' }
  const [verb, target, ...extra] = positionals
  if (verb === undefined) throw new ConfigError('missing command: mount, unmount, register, status or doctor (see cinderfs --help)')
  if (verb === 'register') {
    const imageIds = positionals.slice(1)
    const bad = imageIds.find(id => !isUuid(id))
    if (bad !== undefined) throw new ConfigError(`register: '${bad}' is not a Glance image id (it takes image ids and the backend's flags, not a mount point)`)
    if (values['glance-register'] === true) throw new ConfigError('--glance-register is a mount option; register registers every image anyway')
    const config = buildConfig('', values)
    if (config.backend !== 'cinder') throw new ConfigError('register: Glance serves images from Cinder only: give --backend cinder')
    return { kind: 'register', config, dryRun: values['dry-run'] ?? false, imageIds }
  }
  if (values['dry-run'] === true) throw new ConfigError('--dry-run is an option of register')
  if (!commands.includes(verb)) {
    // mount(8) through mount.fuse3 calls `cinderfs SOURCE MOUNTPOINT -o opt,opt`.
    if (target !== undefined && extra.length === 0) return helperMount(verb, target, values)
    throw new ConfigError(`unknown command '${verb}': use mount, unmount, register, status or doctor (see cinderfs --help)`)
  }
  if (extra.length > 0) throw new ConfigError(`${verb}: unexpected argument '${extra[0]}'`)
  if (verb === 'doctor') return { kind: 'doctor', config: buildConfig(target === undefined ? '' : path.resolve(target), values), mountpoint: target === undefined ? undefined : path.resolve(target) }
  if (target === undefined) throw new ConfigError(`${verb}: missing MOUNTPOINT`)
  const mountpoint = path.resolve(target)
  if (verb === 'unmount') return { kind: 'unmount', mountpoint }
  if (verb === 'status') return { kind: 'status', mountpoint, json: values.json ?? false }
  return { kind: 'mount', config: buildConfig(mountpoint, values), background: false }
}

type Values = ReturnType<typeof parseArgs<{ args: string[], options: typeof options, allowPositionals: true, strict: true }>>['values']

/** SOURCE: `local`, `local:DIR`, `cinder`, `cinder:CLOUD`, or `cinderfs` (the options say everything). */
function helperMount(source: string, target: string, values: Values): Command {
  const [kind, ...rest] = source.split(':')
  const detail = rest.join(':')
  const fromSource: Values = {}
  if (kind === 'local' || kind === 'cinder') fromSource.backend = kind
  else if (source !== 'cinderfs') throw new ConfigError(`unknown command '${source}': use mount, unmount, status or doctor; as a mount helper, SOURCE is local, local:DIR, cinder, cinder:CLOUD or cinderfs`)
  if (detail !== '') fromSource[kind === 'local' ? 'local-dir' : 'os-cloud'] = detail
  const config = buildConfig(path.resolve(target), { ...fromSource, ...values })
  return { kind: 'mount', config, background: values.foreground !== true }
}

/** `-o a,b=c` → `--a --b c`, so every flag is also a mount option (with `_` or `-`). */
function expandMountOptions(argv: string[]): string[] {
  const out: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? ''
    let list: string | undefined
    if (arg === '-o') list = argv[++i] ?? ''
    else if (arg.startsWith('-o') && !arg.startsWith('--')) list = arg.slice(2)
    if (list === undefined) {
      out.push(arg)
      continue
    }
    for (const item of list.split(',')) {
      if (item === '') continue
      const eq = item.indexOf('=')
      const key = eq < 0 ? item : item.slice(0, eq)
      const value = eq < 0 ? undefined : item.slice(eq + 1)
      if (ignoredMountOptions.has(key) || key.startsWith('x-') || key === 'comment') continue
      const name = mountOptionAliases[key] ?? key.replace(/_/g, '-')
      const option = (options as Record<string, { type: string } | undefined>)[name]
      if (option === undefined || name === 'help' || name === 'version') throw new ConfigError(`-o ${key}: not a cinderfs option (see cinderfs --help)`)
      if (option.type === 'boolean') {
        if (value !== undefined) throw new ConfigError(`-o ${key}: takes no value`)
        out.push(`--${name}`)
      } else {
        if (value === undefined || value === '') throw new ConfigError(`-o ${key}: needs a value (${key}=...)`)
        out.push(`--${name}=${value}`)
      }
    }
  }
  return out
}

function buildConfig(mountpoint: string, values: Values): Config {
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
    logFile: values['log-file'] === undefined ? undefined : path.resolve(values['log-file']),
    metricsAddr: values['metrics-addr'] === undefined ? undefined : listenAddress('--metrics-addr', values['metrics-addr']),
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

/** `HOST:PORT`, `[IPv6]:PORT`, `:PORT` or `PORT`; without a host, 127.0.0.1 (metrics are not for the world by default). */
export function listenAddress(flag: string, text: string): { host: string, port: number } {
  const m = /^(?:(\[[0-9a-fA-F:.]+\]|[^:[\]]*):)?(\d{1,5})$/.exec(text.trim())
  const port = Number(m?.[2])
  if (m === null || port > 65535) throw new ConfigError(`${flag}: '${text}' is not HOST:PORT, :PORT or PORT`)
  const host = (m[1] ?? '').replace(/^\[(.*)\]$/, '$1')
  return { host: host === '' ? '127.0.0.1' : host, port }
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
