import type { Logger } from 'pino'
import { CinderfsError, errorCode, errorMessage } from '../errors/errors.js'
import type { Volume } from '../model/volume.js'
import { decodeImage, isImageVolume, type ImageAttributes } from '../store/metadata.js'
import { fileNameOf, isUuid } from '../store/names.js'
import type { GlanceClient, GlanceImage, GlanceLocation } from './client.js'

/**
 * What registration decided for one image volume:
 * - registered: Glance now lists the volume (or would, in a dry run)
 * - already-there: Glance listed it before
 * - mismatch: size, md5 or sha512 differ from what Glance recorded; nothing changed
 * - not-in-glance: Glance does not know the image id (or it is deleted); left alone
 * - no-hashes: cinderfs has no md5/sha512 for the volume (not written through
 *   cinderfs, or not sealed yet); nothing to compare, left alone
 * - empty: a 0-byte image; Glance takes a location of size 0 as invalid, so it
 *   stays in its old store
 * - failed: Glance refused or could not be reached; see the reason
 */
export type Outcome = 'registered' | 'already-there' | 'mismatch' | 'not-in-glance' | 'no-hashes' | 'empty' | 'failed'

export interface Decision {
  imageId: string
  volumeId: string
  outcome: Outcome
  reason: string
  /** URLs of the other locations removed (or, in a dry run, that would be). */
  retired: string[]
  dryRun: boolean
}

export interface RegistrarOptions {
  glance: GlanceClient
  logger: Logger
  /** Multi-store id of Glance's cinder store (`cinder://<store>/<vol>`); undefined: single-store `cinder://<vol>`. */
  store: string | undefined
  /** Remove the image's other locations once Glance lists ours. Glance deletes their data. */
  retire: boolean
  dryRun: boolean
}

/** Errors that mean Glance (or Keystone) cannot be reached at all, rather than a refusal about one image. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'ETIMEDOUT', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN'])

export function isUnreachable(err: unknown): boolean {
  if (!(err instanceof CinderfsError)) return false
  const code = err.details.code
  return typeof code === 'string' && UNREACHABLE.has(code)
}

/** The location URL glance_store would write for the volume. */
export function locationOf(volumeId: string, store: string | undefined): GlanceLocation {
  // The single-store form carries no store; a multi-store Glance needs it in the metadata too.
  return store === undefined
    ? { url: `cinder://${volumeId}`, metadata: {} }
    : { url: `cinder://${store}/${volumeId}`, metadata: { store } }
}

/** Whether a location URL names the volume, in either form (Glance must never list one volume twice). */
export function namesVolume(url: string, volumeId: string): boolean {
  const match = /^cinder:\/\/(?:[^/]+\/)?([^/]+)$/.exec(url)
  return match?.[1] === volumeId
}

/** Image volumes whose file name is a Glance image id and which are complete (not uploading or deleting). */
export function candidates(volumes: Volume[]): Volume[] {
  return volumes.filter(v => {
    const name = fileNameOf(v.name)
    return name !== undefined && isUuid(name) && isImageVolume(v) && decodeImage(v, { uid: 0, gid: 0 }).state === 'final'
  })
}

/** Why Glance's record and cinderfs's hashes disagree, or undefined when they agree. */
function compare(image: GlanceImage, attrs: ImageAttributes): string | undefined {
  if (image.status === 'queued') return undefined // no data yet: Glance takes ours as validation_data
  const differences: string[] = []
  if (image.size !== attrs.size) differences.push(`size: Glance ${String(image.size)}, volume ${attrs.size}`)
  if (image.checksum !== null && image.checksum !== attrs.md5) differences.push(`md5: Glance ${image.checksum}, volume ${attrs.md5 ?? ''}`)
  if (image.osHashValue !== null) {
    if (image.osHashAlgo !== 'sha512') differences.push(`Glance hashes with ${image.osHashAlgo ?? 'nothing'}, cinderfs with sha512`)
    else if (image.osHashValue !== attrs.sha512) differences.push(`sha512: Glance ${image.osHashValue.slice(0, 16)}…, volume ${(attrs.sha512 ?? '').slice(0, 16)}…`)
  }
  if (image.checksum === null && image.osHashValue === null) differences.push('Glance recorded no checksum to compare with')
  return differences.length === 0 ? undefined : differences.join('; ')
}

/**
 * Makes Glance serve images from the volumes cinderfs wrote: adds a volume's
 * location only when the size, md5 and sha512 Glance recorded equal what
 * cinderfs computed while writing (Glance itself checks none of it), and,
 * when asked, retires the image's other locations once Glance lists ours —
 * never ours, never the last one, never after a mismatch. Every decision is
 * logged with the image id, the volume id and the reason.
 */
export class Registrar {
  private readonly o: RegistrarOptions
  private readonly log: Logger

  constructor(options: RegistrarOptions) {
    this.o = options
    this.log = options.logger.child({ component: 'glance-registration' })
  }

  /** Decides for one volume. Throws only when Glance is unreachable (the caller stops there). */
  async register(volume: Volume): Promise<Decision> {
    const imageId = fileNameOf(volume.name) ?? ''
    const decide = (outcome: Outcome, reason: string, retired: string[] = []): Decision => {
      const decision = { imageId, volumeId: volume.id, outcome, reason, retired, dryRun: this.o.dryRun }
      const level = outcome === 'failed' || outcome === 'mismatch' ? 'warn' : 'info'
      this.log[level]({ imageId, volumeId: volume.id, outcome, reason, retired, dryRun: this.o.dryRun }, 'registration decision')
      return decision
    }
    const attrs = decodeImage(volume, { uid: 0, gid: 0 })
    if (attrs.md5 === undefined || attrs.sha512 === undefined) return decide('no-hashes', 'the volume carries no cinderfs_md5/cinderfs_sha512 (not written through cinderfs)')
    if (!volume.readOnly) return decide('no-hashes', 'the volume is not sealed (read-only) yet')
    // Glance's location check wants a size > 0 from the store (a 400 "Invalid location" otherwise)
    if (attrs.size === 0) return decide('empty', 'a 0-byte image: Glance refuses a location of size 0; it stays in its old store')
    try {
      let image: GlanceImage
      try {
        image = await this.o.glance.image(imageId)
      } catch (err) {
        if (errorCode(err) === 'ENOENT') return decide('not-in-glance', 'Glance does not know this image id')
        throw err
      }
      if (image.status === 'deleted' || image.status === 'pending_delete' || image.status === 'killed') return decide('not-in-glance', `the image is ${image.status} in Glance`)
      const mismatch = compare(image, attrs)
      if (mismatch !== undefined) return decide('mismatch', `${mismatch}; Glance left unchanged`)
      const location = locationOf(volume.id, this.o.store)
      let outcome: Outcome = 'already-there'
      let reason = `Glance already lists the volume (size, md5, sha512 match)`
      if (!image.locations.some(l => namesVolume(l.url, volume.id))) {
        if (image.status !== 'queued' && image.status !== 'active') return decide('failed', `the image is ${image.status} in Glance; only queued or active images take a location`)
        outcome = 'registered'
        reason = `${location.url} ${this.o.dryRun ? 'would be ' : ''}added (${image.status === 'queued' ? 'queued image: hashes given as validation_data' : 'size, md5, sha512 match'})`
        if (!this.o.dryRun) {
          // validation_data only for a queued image: Glance refuses it (409) once a checksum is set
          image = await this.o.glance.addLocation(imageId, location, image.status === 'queued' ? { checksum: attrs.md5, osHashAlgo: 'sha512', osHashValue: attrs.sha512 } : undefined)
          if (!image.locations.some(l => namesVolume(l.url, volume.id))) {
            return decide('failed', 'Glance accepted the location but does not list it (show_multiple_locations = False?); nothing retired')
          }
        }
      }
      const retired = this.o.retire ? await this.retire(image, volume.id) : []
      return decide(outcome, retired.length === 0 ? reason : `${reason}; ${this.o.dryRun ? 'would retire' : 'retired'} ${retired.join(', ')}`, retired)
    } catch (err) {
      if (isUnreachable(err)) throw err
      if (errorCode(err) === 'ENOENT') return decide('not-in-glance', `the image was deleted in Glance meanwhile (${errorMessage(err)})`)
      return decide('failed', errorMessage(err))
    }
  }

  /**
   * Removes the other locations one PATCH at a time. A remove names an index,
   * and Glance reads the list back from its database for every request in no
   * fixed order (PostgreSQL moves rows it updates; adding a location updates
   * them), so the index is taken from a GET just before each remove, never
   * from an earlier reply: a stale index could remove ours, and Glance
   * deletes the data behind a removed location. Assumes Glance's default
   * location_strategy (location_order), which shows the list as stored.
   */
  private async retire(image: GlanceImage, volumeId: string): Promise<string[]> {
    const others = (i: GlanceImage): Array<{ url: string, index: number }> =>
      i.locations.map((l, index) => ({ url: l.url, index })).filter(l => !namesVolume(l.url, volumeId))
    if (this.o.dryRun) return others(image).map(l => l.url)
    const retired: string[] = []
    for (;;) {
      const current = await this.o.glance.image(image.id)
      // Ours stays listed throughout, so the one removed is never the last.
      if (!current.locations.some(l => namesVolume(l.url, volumeId))) break
      const next = others(current)[0]
      if (next === undefined) break
      const after = await this.o.glance.removeLocation(current.id, next.index)
      if (after.locations.some(l => l.url === next.url) || !after.locations.some(l => namesVolume(l.url, volumeId))) {
        throw new CinderfsError('EIO', `Glance removed another location than ${next.url} (index ${next.index}); stopped retiring`, { imageId: image.id, volumeId })
      }
      retired.push(next.url)
      this.log.info({ imageId: current.id, volumeId, url: next.url }, 'old location retired (Glance deleted its data)')
    }
    return retired
  }
}

/** One line per decision, for people and scripts: outcome first, then ids, then why. */
export function formatDecision(d: Decision): string {
  const outcome = d.dryRun && d.outcome === 'registered' ? 'would-register' : d.outcome
  return `${outcome.padEnd(14)} ${d.imageId} volume ${d.volumeId}: ${d.reason}`
}

export function summarize(decisions: Decision[]): string {
  const count = (o: Outcome): number => decisions.filter(d => d.outcome === o).length
  const retired = decisions.reduce((n, d) => n + d.retired.length, 0)
  const dry = decisions[0]?.dryRun === true ? ' (dry run: nothing changed)' : ''
  return `summary: ${decisions.length} images: ${count('registered')} registered, ${count('already-there')} already there, ` +
    `${count('mismatch')} checksum mismatch, ${count('not-in-glance')} not in Glance, ${count('no-hashes')} no hashes, ${count('empty')} empty, ` +
    `${count('failed')} failed; ${retired} old locations retired${dry}`
}

/** Exit codes scripts can use. */
export const EXIT = {
  /** every image is served from Cinder by Glance (or would be) */
  ok: 0,
  /** at least one image failed, or Glance could not be reached */
  failed: 1,
  /** bad flags or configuration */
  usage: 2,
  /** at least one image refused: its bytes are not the ones Glance recorded */
  mismatch: 3,
  /** some images were left alone (not in Glance, no hashes, empty); none failed or mismatched */
  skipped: 4,
} as const

export function exitCodeOf(decisions: Decision[]): number {
  if (decisions.some(d => d.outcome === 'failed')) return EXIT.failed
  if (decisions.some(d => d.outcome === 'mismatch')) return EXIT.mismatch
  if (decisions.some(d => d.outcome === 'not-in-glance' || d.outcome === 'no-hashes' || d.outcome === 'empty')) return EXIT.skipped
  return EXIT.ok
}
