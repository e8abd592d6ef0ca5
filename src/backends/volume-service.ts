/**
 * The backend contract: what cinderfs needs from a block-storage service.
 * Cinder (src/backends/cinder.ts) and the embedded local backend
 * (src/backends/local.ts) implement it; a new backend is one new file.
 */

import type { Attachment, AttachMode, CreateVolumeRequest, ListOptions, Volume, VolumePage } from '../model/volume.js'

export interface VolumeService {
  /** Short name for logs: `local`, `cinder`. */
  readonly kind: string
  create(request: CreateVolumeRequest): Promise<Volume>
  get(volumeId: string): Promise<Volume>
  list(options?: ListOptions): Promise<VolumePage>
  rename(volumeId: string, name: string): Promise<void>
  /** Sets the name and the whole metadata (keys not named are removed), in one request. */
  replace(volumeId: string, name: string, metadata: Record<string, string>): Promise<void>
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
