import { nativeAddon } from './native-addon.js'

// Types and loader for native/iscsi, the libiscsi addon (a userspace iSCSI
// initiator on the event loop). I/O is in whole logical blocks into the
// caller's Buffer; rejections are Node system-error shaped (`code`, `errno`),
// which toErrno maps.

/** One way to the LUN: multipath gives several, tried in order on failure. */
export interface IscsiPath {
  /** `host:port` (port 3260 when left out), `[v6addr]:port` for IPv6. */
  portal: string
  /** Target IQN. */
  target: string
  lun: number
}

export interface IscsiConnectOptions {
  paths: IscsiPath[]
  /** Our IQN: the target admits only the initiators Cinder exported the volume to. */
  initiator: string
  /** CHAP (Cinder's auth_username / auth_password). */
  username?: string
  password?: string
  /** Mutual CHAP: what the target must answer with. */
  targetUsername?: string
  targetPassword?: string
  /** Login, each command and each reconnect give up after this long (default 30). */
  timeoutSeconds?: number
  /** Writes and discards fail EROFS without reaching the target. */
  readOnly?: boolean
}

export interface IscsiLun {
  /** Bytes, as of connect or the last refreshSize(). */
  size(): number
  /** Logical block size: positions and lengths of I/O are multiples of it. */
  blockSize(): number
  /** Largest length of one read or write (E2BIG beyond). */
  maxTransfer(): number
  /** The portal in use (changes when a path fails over). */
  portal(): string
  /** Like fs.read for whole blocks: bytes read, short at the end, 0 past it. */
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<number>
  /** Bytes written (all of them); EFBIG, writing nothing, when it would cross the end. */
  write(buffer: Buffer, offset: number, length: number, position: number): Promise<number>
  /** UNMAP; EOPNOTSUPP when the LUN is not thin-provisioned. */
  discard(position: number, length: number): Promise<number>
  /** SYNCHRONIZE CACHE(16). */
  flush(): Promise<void>
  /** READ CAPACITY(16) again; resolves with the size in bytes. */
  refreshSize(): Promise<number>
  /** Waits for in-flight I/O, logs out; later calls fail EBADF. */
  close(): Promise<void>
}

export interface IscsiStats {
  luns: number
  requests: number
}

export interface IscsiBinding {
  connect(options: IscsiConnectOptions): Promise<IscsiLun>
  stats(): IscsiStats
}

const addon = nativeAddon<IscsiBinding>('iscsi', 'cinderfs_iscsi', 'libiscsi-dev')

export const iscsiAddonPath = addon.path

/** The addon, loaded on first use. */
export const loadIscsi: () => IscsiBinding = addon.load
