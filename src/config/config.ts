import os from 'node:os'
import path from 'node:path'
import { ConfigError } from '../errors/errors.js'

export type BackendKind = 'local' | 'cinder'
export type FuseBindingName = 'fuse3' | 'fuse-native'

/** Everything the daemon runs with; built by the CLI, validated here. */
export interface Config {
  mountpoint: string
  backend: BackendKind
  /** Embedded local backend: where volumes live as sparse files. */
  localDir: string
  /** LRU block cache budget, bytes. */
  cacheSize: number
  /** Cache block = device read size, bytes. */
  blockSize: number
  /** Largest sequential readahead window, bytes. */
  readahead: number
  /** Detach an image volume after this long without open readers. */
  idleDetachSeconds: number
  /** A finalised image stays writable by this host this long after its last writer closed, then is sealed read-only. */
  sealDelaySeconds: number
  /** Writes held in memory while a volume grows, bytes; the writer waits beyond it. */
  writeBuffer: number
  /** How long a volume listing is trusted before it is fetched again. */
  listTtlSeconds: number
  /** How long each backend call an upload needs retries through an outage; also the janitor's time at stop. */
  apiRetryWindowSeconds: number
  /** cinder backend: how long a create, extend or delete may take (overrides cinder_state_transition_timeout). */
  stateTimeoutSeconds: number | undefined
  allowOther: boolean
  readOnly: boolean
  logLevel: string
  /** Logs go here instead of stderr (a mount helper's daemon has no terminal). */
  logFile: string | undefined
  /** Serve Prometheus metrics here (off when undefined). */
  metricsAddr: { host: string, port: number } | undefined
  /** `image_owner` of new images; undefined: the backend's project (cinder) or `cinderfs` (local). */
  imageOwner: string | undefined
  /** cinder backend: a cloud of clouds.yaml (else OS_CLOUD, else the OS_* variables). */
  osCloud: string | undefined
  /** cinder backend: read Glance's own cinder store account from this glance-api.conf. */
  glanceConfig: string | undefined
  /** cinder backend: volume type of new image volumes (overrides the configuration's). */
  volumeType: string | undefined
  /** cinder backend: never speak a newer Cinder microversion than this (`3.27`). */
  maxMicroversion: string | undefined
  /** rbd connector: where `<cluster>.client.<user>.keyring` files are (Cinder never sends the key). */
  cephKeyringDir: string
  /** FUSE binding: fuse3 (native/fuse3, libfuse3 low-level) or fuse-native (libfuse2). */
  fuseBinding: FuseBindingName
  /** iscsi connector: our initiator IQN; undefined: the host's open-iscsi one, else derived from `host`. */
  iscsiInitiator: string | undefined
  /** Host name this daemon attaches as; recovery cleans up only what this host left. */
  host: string
  /** Owner and group shown for images that carry none. */
  uid: number
  gid: number
  /** mount: register each image in Glance when it is sealed (see src/glance/registration.ts). */
  glanceRegister: boolean
  /** Multi-store id of Glance's cinder store for location URLs (else from --glance-config; else single-store URLs). */
  glanceStore: string | undefined
  /** Glance's URL instead of the catalog's. */
  glanceUrl: string | undefined
  /** cinder backend: spare volumes kept created and attached ahead of need (each holds 1 GiB of quota). */
  createAhead: number
  /** Registration removes the image's other locations once Glance lists the volume (Glance deletes their data). */
  retire: boolean
}

export function defaultLocalDir(): string {
  if (process.getuid?.() === 0) return '/var/lib/cinderfs/volumes'
  return path.join(os.homedir(), '.local', 'share', 'cinderfs', 'volumes')
}

export const defaults = {
  backend: 'local' as BackendKind,
  fuseBinding: 'fuse3' as FuseBindingName,
  cacheSize: 512 * 1024 ** 2,
  blockSize: 1024 ** 2,
  readahead: 16 * 1024 ** 2,
  idleDetachSeconds: 30,
  // qemu-img convert, qemu-img create + qemu-io, truncate + dd conv=notrunc reopen within moments.
  sealDelaySeconds: 10,
  writeBuffer: 256 * 1024 ** 2,
  listTtlSeconds: 5,
  apiRetryWindowSeconds: 60,
  logLevel: 'info',
  localImageOwner: 'cinderfs',
  cephKeyringDir: '/etc/ceph',
}

const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

/** Cross-field checks; each failure is one line for the operator. */
export function validateConfig(config: Config): Config {
  const { blockSize, cacheSize, readahead } = config
  if (blockSize < 4096 || blockSize > 64 * 1024 ** 2 || (blockSize & (blockSize - 1)) !== 0) {
    throw new ConfigError(`--block-size: ${blockSize} must be a power of two from 4K to 64M`)
  }
  if (cacheSize < 4 * blockSize) throw new ConfigError(`--cache-size: must be at least 4 blocks (${4 * blockSize} bytes with --block-size ${blockSize})`)
  if (readahead > cacheSize / 2) throw new ConfigError(`--readahead: must be at most half of --cache-size so readahead cannot evict what is being read`)
  if (config.writeBuffer < 1024 ** 2) throw new ConfigError('--write-buffer: must be at least 1M')
  if (!Number.isFinite(config.idleDetachSeconds) || config.idleDetachSeconds < 0) throw new ConfigError('--idle-detach: must be a number of seconds, 0 or more')
  if (!Number.isFinite(config.sealDelaySeconds) || config.sealDelaySeconds < 0 || config.sealDelaySeconds > 86_400) throw new ConfigError('--seal-delay: must be a number of seconds from 0 to 86400')
  if (!Number.isFinite(config.listTtlSeconds) || config.listTtlSeconds < 0) throw new ConfigError('--list-ttl: must be a number of seconds, 0 or more')
  if (!Number.isFinite(config.apiRetryWindowSeconds) || config.apiRetryWindowSeconds < 0) throw new ConfigError('--api-retry-window: must be a number of seconds, 0 or more')
  if (config.stateTimeoutSeconds !== undefined && !(config.stateTimeoutSeconds >= 1)) throw new ConfigError('--cinder-state-timeout: must be at least 1 second')
  if (!logLevels.includes(config.logLevel)) throw new ConfigError(`--log-level: '${config.logLevel}' is not one of ${logLevels.join(', ')}`)
  if (config.imageOwner !== undefined && (config.imageOwner === '' || config.imageOwner.length > 255)) throw new ConfigError('--image-owner: must be 1 to 255 characters')
  if (config.host === '') throw new ConfigError('--host: must not be empty')
  if (config.backend === 'local' && (config.osCloud ?? config.glanceConfig ?? config.volumeType ?? config.maxMicroversion ?? config.stateTimeoutSeconds) !== undefined) {
    throw new ConfigError('--os-cloud, --glance-config, --volume-type, --os-max-microversion and --cinder-state-timeout need --backend cinder')
  }
  if (config.backend === 'local' && (config.glanceRegister || config.glanceStore !== undefined || config.glanceUrl !== undefined || config.retire)) {
    throw new ConfigError('--glance-register, --glance-store, --glance-url and --retire need --backend cinder (Glance serves images from Cinder)')
  }
  if (config.retire && !config.glanceRegister && config.mountpoint !== '') throw new ConfigError('--retire needs --glance-register')
  if (config.glanceStore !== undefined && !/^[A-Za-z0-9_.-]{1,255}$/.test(config.glanceStore)) throw new ConfigError(`--glance-store: '${config.glanceStore}' is not a Glance store id`)
  if (!Number.isInteger(config.createAhead) || config.createAhead < 0 || config.createAhead > 16) throw new ConfigError('--create-ahead: must be a whole number from 0 to 16')
  if (config.backend === 'local' && config.createAhead > 0) throw new ConfigError('--create-ahead needs --backend cinder')
  if (config.maxMicroversion !== undefined && !/^3\.\d{1,3}$/.test(config.maxMicroversion)) {
    throw new ConfigError(`--os-max-microversion: '${config.maxMicroversion}' is not a Cinder v3 microversion such as 3.27`)
  }
  return config
}
