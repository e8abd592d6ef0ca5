/**
 * The backend contract: what cinderfs needs from a block-storage service.
 * Cinder (src/backends/cinder.ts) and the embedded local backend
 * (src/backends/local.ts) implement it; a new backend is one new file.
 */

export const GiB = 1024 ** 3

export type AttachMode = 'ro' | 'rw'

export interface Volume {
  id: string
  name: string
  /** Whole GiB, as Cinder sizes volumes. */
  sizeGiB: number
  /** Cinder's status string: available, in-use, creating, error, ... */
  status: string
  /** User metadata (string values, as in Cinder). Never includes the `readonly` admin key. */
  metadata: Record<string, string>
  readOnly: boolean
  multiattach: boolean
  createdAt: Date
  updatedAt: Date
}

export interface CreateVolumeRequest {
  name: string
  sizeGiB: number
  metadata: Record<string, string>
}

export interface VolumePage {
  volumes: Volume[]
  /** Pass as `marker` to get the next page; undefined on the last page. */
  next?: string
}

export interface ListOptions {
  marker?: string
  limit?: number
}

/**
 * What a backend returns for an attachment: Cinder's flattened connection_info
 * (driver_volume_type plus the driver's data keys) and the mode Cinder
 * actually granted (a read-only volume always attaches `ro`).
 */
export interface ConnectionInfo {
  driverVolumeType: string
  data: Record<string, unknown>
}

export interface Attachment {
  id: string
  volumeId: string
  mode: AttachMode
  connectionInfo: ConnectionInfo
}

export interface VolumeService {
  /** Short name for logs: `local`, `cinder`. */
  readonly kind: string
  create(request: CreateVolumeRequest): Promise<Volume>
  get(volumeId: string): Promise<Volume>
  list(options?: ListOptions): Promise<VolumePage>
  rename(volumeId: string, name: string): Promise<void>
  /** Merge: keys with a string value are set, keys with `null` are removed. */
  updateMetadata(volumeId: string, changes: Record<string, string | null>): Promise<void>
  setReadOnly(volumeId: string, readOnly: boolean): Promise<void>
  /**
   * Grow to `newSizeGiB` (never shrinks; a smaller size is a no-op). When the
   * volume is attached (`attached`) and the backend cannot extend it online
   * (Cinder before microversion 3.42), throws ENOTSUP: only the holder of the
   * open device can detach, extend and attach again.
   */
  extend(volumeId: string, newSizeGiB: number, attached: boolean): Promise<void>
  delete(volumeId: string): Promise<void>
  attach(volumeId: string, mode: AttachMode): Promise<Attachment>
  detach(attachment: Attachment): Promise<void>
  /** Attachments this host left behind (after a crash); deleted by recovery at start. */
  listOwnAttachments(): Promise<Attachment[]>
  /** Bytes of capacity for statfs, when the backend knows them. */
  capacity(): Promise<{ totalBytes: number, freeBytes: number } | undefined>
  close(): Promise<void>
}

/** Every volume, across pages. */
export async function listAll(service: VolumeService, pageSize = 1000): Promise<Volume[]> {
  const all: Volume[] = []
  let marker: string | undefined
  do {
    const page = await service.list(marker === undefined ? { limit: pageSize } : { limit: pageSize, marker })
    all.push(...page.volumes)
    marker = page.next
  } while (marker !== undefined)
  return all
}
