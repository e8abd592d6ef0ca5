import { nativeAddon } from './native-addon.js'

// Types and loader for native/rbd, the librbd addon. Every I/O method takes the
// caller's Buffer (no copy) and never blocks the event loop. Rejections are
// Node system-error shaped (`code` 'ENOENT', `errno` -2), which toErrno maps.

export interface RbdConnectOptions {
  /** Ceph user without `client.`, as Cinder's auth_username. */
  user: string
  /** The cluster name ($cluster in conf files); librados defaults to `ceph`. */
  cluster?: string
  /** A ceph.conf to read first; the fields below override it. */
  conf?: string
  /** Monitors, `host:port,host:port` or `[v2:ip:3300,v1:ip:6789]`. */
  monHost?: string
  /** The cephx secret (base64), or else a keyring file's path. */
  key?: string
  keyring?: string
  /** More librados settings, applied last: client_mount_timeout, rbd_cache, ... */
  options?: Record<string, string>
}

export interface RbdOpenOptions {
  /** Opens without the header watch and exclusive lock; writes and discards fail EROFS. */
  readOnly?: boolean
  /** Opens this snapshot (read-only). */
  snapshot?: string
}

export interface RbdCluster {
  open(pool: string, image: string, options?: RbdOpenOptions): Promise<RbdImage>
  /** Drops this handle; librados disconnects once the last image opened through it is closed. */
  shutdown(): Promise<void>
}

export interface RbdImage {
  /** Bytes, as of open or the last refreshSize(). */
  size(): number
  /** Re-reads the size (librbd refreshes its header if its watch saw a change; read-only handles have no watch). */
  refreshSize(): Promise<number>
  /** Like fs.read: bytes read, short at the end of the image, 0 past it. */
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<number>
  /** Bytes written (all of them). A write that would cross the end fails EFBIG and writes nothing. */
  write(buffer: Buffer, offset: number, length: number, position: number): Promise<number>
  /** Frees the range; EFBIG past the end, like write. */
  discard(position: number, length: number): Promise<number>
  /** Makes completed writes durable (librbd's cache is writeback after the first flush). */
  flush(): Promise<void>
  /** Waits for in-flight I/O, then closes; later calls fail EBADF. */
  close(): Promise<void>
}

/** Native handles alive in this process. */
export interface RbdStats {
  clusters: number
  images: number
  requests: number
}

export interface RbdBinding {
  connect(options: RbdConnectOptions): Promise<RbdCluster>
  stats(): RbdStats
}

const addon = nativeAddon<RbdBinding>('rbd', 'cinderfs_rbd', 'librbd-dev and librados-dev')

export const rbdAddonPath = addon.path

/** The addon, loaded on first use. */
export const loadRbd: () => RbdBinding = addon.load
