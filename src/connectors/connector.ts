import type { AttachMode, ConnectionInfo } from '../model/volume.js'

/**
 * An attached volume as the data path sees it. Offsets and lengths are bytes.
 * Reads past the end return short counts; writes past the end fail (EFBIG),
 * because a block device silently clipping a write would lose data.
 */
export interface BlockDevice {
  readonly path: string
  readonly writable: boolean
  /** Bytes, as of the last open or refreshSize(). */
  readonly size: number
  refreshSize(): Promise<number>
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<number>
  write(buffer: Buffer, offset: number, length: number, position: number): Promise<number>
  /** Make written data durable (fdatasync, or the protocol's flush). */
  flush(): Promise<void>
  close(): Promise<void>
}

/** Turns a backend's connection info into a BlockDevice; one per driver_volume_type. */
export interface Connector {
  readonly protocol: string
  connect(info: ConnectionInfo, mode: AttachMode): Promise<BlockDevice>
}
