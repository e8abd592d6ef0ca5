import { fail } from '../errors/errors.js'

/** glance_store names image volumes `image-<image id>`; so do we. */
export const volumePrefix = 'image-'
/** Cinder's limit on a volume name, in characters. */
const volumeNameLimit = 255
const nameByteLimit = 255
const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** `/name` → `name`. There are no subdirectories, so anything deeper does not exist. */
export function fileNameFromPath(path: string): string {
  const name = path.startsWith('/') ? path.slice(1) : path
  if (name.includes('/')) fail('ENOENT', `${path}: cinderfs has no subdirectories`, { path })
  return name
}

/** Refuses names a volume cannot carry, with the errno a shell user expects. */
export function checkFileName(name: string): void {
  if (name === '' || name === '.' || name === '..') fail('EINVAL', `'${name}' is not a file name`)
  if (Buffer.byteLength(name) > nameByteLimit) fail('ENAMETOOLONG', `name is ${Buffer.byteLength(name)} bytes; the limit is ${nameByteLimit}`, { name })
  if (volumePrefix.length + name.length > volumeNameLimit) {
    fail('ENAMETOOLONG', `volume name '${volumePrefix}${name}' would be ${volumePrefix.length + name.length} characters; Cinder allows ${volumeNameLimit}`, { name })
  }
  // FUSE hands names over as UTF-8; invalid bytes arrive replaced and could not round-trip.
  if (name.includes('\uFFFD')) fail('EINVAL', 'name is not valid UTF-8', { name })
}

export function volumeNameOf(fileName: string): string {
  return `${volumePrefix}${fileName}`
}

export function fileNameOf(volumeName: string): string | undefined {
  if (!volumeName.startsWith(volumePrefix)) return undefined
  const name = volumeName.slice(volumePrefix.length)
  return name === '' || name.includes('/') || name === '.' || name === '..' ? undefined : name
}

export function isUuid(name: string): boolean {
  return uuidPattern.test(name)
}

/** libfuse2 renames an open file to `.fuse_hidden…` instead of unlinking it, and unlinks that on release. */
export function isFuseHiddenName(name: string): boolean {
  return name.startsWith('.fuse_hidden')
}
