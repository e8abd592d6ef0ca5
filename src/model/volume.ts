/**
 * The shared model every layer speaks: volumes, attachments, connection info
 * and size units. It sits at the bottom and imports nothing of cinderfs.
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
  /**
   * The name and metadata may reach the backend only with the caller's next
   * `replace` (a volume made ahead of need then costs no request now). Only
   * for a caller whose crash before that `replace` leaves nothing to keep.
   */
  provisional?: boolean
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
