import { GiB, type Volume } from '../model/volume.js'
import { fileNameOf } from './names.js'

/**
 * Volume metadata keys. The first three are glance_store's cinder driver's own,
 * so Glance can serve what we write and we can serve what Glance wrote; the
 * cinderfs_ keys carry what POSIX needs and the upload state.
 */
export const keys = {
  glanceImageId: 'glance_image_id',
  imageSize: 'image_size',
  imageOwner: 'image_owner',
  state: 'cinderfs_state',
  host: 'cinderfs_host',
  mtimeNs: 'cinderfs_mtime_ns',
  mode: 'cinderfs_mode',
  uid: 'cinderfs_uid',
  gid: 'cinderfs_gid',
  md5: 'cinderfs_md5',
  sha512: 'cinderfs_sha512',
  renamedAt: 'cinderfs_renamed_at',
} as const

/** A finalised image has no state key; these mark the two transient states. */
export type ImageState = 'final' | 'uploading' | 'deleting'

export interface ImageAttributes {
  size: number
  mtimeNs: bigint
  mode: number
  uid: number
  gid: number
  md5?: string
  sha512?: string
  state: ImageState
  /** Host that is uploading or deleting it (for recovery). */
  host?: string
  /** Newer wins when two volumes carry the same name (mid-rename, or another host's). */
  generation: number
}

export interface OwnerDefaults {
  uid: number
  gid: number
}

const defaultMode = 0o644
const imageKeys = [keys.glanceImageId, keys.imageSize, keys.imageOwner, keys.state]

/** Only volumes named image-<name> that carry image metadata are images; nothing else is ever shown or touched. */
export function isImageVolume(volume: Volume): boolean {
  return fileNameOf(volume.name) !== undefined && imageKeys.some(key => volume.metadata[key] !== undefined)
}

export function decodeImage(volume: Volume, owner: OwnerDefaults): ImageAttributes {
  const m = volume.metadata
  const capacity = volume.sizeGiB * GiB
  const declared = parseDecimal(m[keys.imageSize])
  // Cinder's own image volumes carry no image_size: the whole volume is the image (as glance_store reads it).
  const size = declared === undefined || declared > capacity ? capacity : declared
  const attrs: ImageAttributes = {
    size,
    mtimeNs: parseBigInt(m[keys.mtimeNs]) ?? BigInt(volume.createdAt.getTime()) * 1_000_000n,
    mode: parseOctal(m[keys.mode]) ?? defaultMode,
    uid: parseDecimal(m[keys.uid]) ?? owner.uid,
    gid: parseDecimal(m[keys.gid]) ?? owner.gid,
    state: glanceStoreUploading(volume) ? 'uploading' : parseState(m[keys.state]),
    generation: parseDecimal(m[keys.renamedAt]) ?? volume.createdAt.getTime(),
  }
  const optional = { md5: m[keys.md5], sha512: m[keys.sha512], host: m[keys.host] }
  for (const [key, value] of Object.entries(optional)) {
    if (value !== undefined) Object.assign(attrs, { [key]: value })
  }
  return attrs
}

/**
 * glance_store's add() creates the volume with its metadata (glance_image_id,
 * image_size "0" when the size is unknown) first and sets the read-only flag
 * as its very last step; cinderfs's own images always carry cinderfs_ keys.
 * A volume with Glance's key, none of ours and no read-only flag is therefore
 * an upload glance-api is still writing (or died writing): its size or bytes
 * are not there yet, and attaching it for a reader would make glance_store's
 * next attach (after each 1 GiB extend) fail. Shown once Glance marks it read-only.
 */
function glanceStoreUploading(volume: Volume): boolean {
  const m = volume.metadata
  return m[keys.glanceImageId] !== undefined && !volume.readOnly && !Object.keys(m).some(key => key.startsWith('cinderfs_'))
}

/** Metadata changes for POSIX attributes (utimens, chmod, chown). */
export function attributeMetadata(changes: { mtimeNs?: bigint, mode?: number, uid?: number, gid?: number }): Record<string, string> {
  const out: Record<string, string> = {}
  if (changes.mtimeNs !== undefined) out[keys.mtimeNs] = changes.mtimeNs.toString()
  if (changes.mode !== undefined) out[keys.mode] = (changes.mode & 0o7777).toString(8)
  if (changes.uid !== undefined) out[keys.uid] = String(changes.uid)
  if (changes.gid !== undefined) out[keys.gid] = String(changes.gid)
  return out
}

function parseState(value: string | undefined): ImageState {
  return value === 'uploading' || value === 'deleting' ? value : 'final'
}

function parseDecimal(value: string | undefined): number | undefined {
  if (value === undefined || !/^\d{1,16}$/.test(value)) return undefined
  return Number(value)
}

function parseBigInt(value: string | undefined): bigint | undefined {
  return value !== undefined && /^\d{1,30}$/.test(value) ? BigInt(value) : undefined
}

function parseOctal(value: string | undefined): number | undefined {
  return value !== undefined && /^[0-7]{1,4}$/.test(value) ? Number.parseInt(value, 8) : undefined
}
