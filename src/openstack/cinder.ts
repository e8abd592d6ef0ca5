import os from 'node:os'
import type { Logger } from 'pino'
import type { Attachment, AttachMode, ConnectionInfo } from '../model/volume.js'
import { CinderfsError, errorCode, fail } from '../errors/errors.js'
import type { AttachJournal } from './attach-journal.js'
import { HttpClient, httpStatus, type HttpResponse } from './http.js'
import { array, member, number, object, optionalString, string, stringMap, type Json } from './json.js'
import type { EndpointFilter, KeystoneClient } from './keystone.js'
import { compareMicroversions, formatMicroversion, negotiate, parseMicroversion, type Microversion } from './microversion.js'

/** Logged (warn) when the attach journal names an attachment an earlier run left. */
export const JOURNALED_ATTACHMENT_FOUND = 'attachment left by an earlier run'
/** Logged (warn) when a reservation with no host is deleted so that our image volume can go. */
export const RESERVATION_REMOVED = 'deleted a reservation with no host'

/** The newest microversion this client knows: attachment `mode` (3.54). */
const CLIENT_MAX_MICROVERSION = '3.54'
/** Cinder features and the microversion that brought them. */
export const FEATURES = { attachments: 27, onlineExtend: 42, attachmentComplete: 44, attachmentMode: 54 } as const

/** The service types Cinder is listed under: the official one, then aliases. */
export const BLOCK_STORAGE_TYPES = ['block-storage', 'volumev3', 'volume']

export interface CinderOptions {
  keystone: KeystoneClient
  http: HttpClient
  logger: Logger
  endpoint: EndpointFilter
  /** Use this URL instead of the catalog's; `%(project_id)s` and `%(tenant)s` are filled in. */
  endpointOverride?: string
  /** Never speak a newer microversion than this (to test or to work around a cloud). */
  maxMicroversion?: string
  /** How long create, extend, delete may take (glance_store's cinder_state_transition_timeout). */
  stateTransitionTimeoutSeconds?: number
  /** The connector's `host`: whose attachments are ours. */
  host: string
  /** The connector's `ip`. */
  ip: string
  /** The connector's `initiator` (our iSCSI IQN), which iSCSI targets admit. */
  initiator?: string
  /** Our attachments on disk, so recovery finds those a crash left, even before they had a host (see AttachJournal). */
  journal?: AttachJournal
}

export interface CinderVolume {
  id: string
  name: string
  size: number
  status: string
  /** As Cinder shows it, including the admin keys `readonly` and `attached_mode`. */
  metadata: Record<string, string>
  multiattach: boolean
  volumeType: string | undefined
  createdAt: Date
  updatedAt: Date
  attachments: { id: string, hostName: string | undefined }[]
}

export interface VolumeSpec {
  name: string
  size: number
  metadata: Record<string, string>
  volumeType?: string
  availabilityZone?: string
}

export interface VolumeFilters {
  name?: string
  status?: string
  metadata?: Record<string, string>
}

/** Keys Cinder copies from admin metadata into `metadata` for display. */
export const ADMIN_METADATA_KEYS = ['readonly', 'attached_mode']

export function isReadOnly(volume: CinderVolume): boolean {
  return volume.metadata.readonly === 'True'
}

/**
 * Cinder v3: version discovery and microversion negotiation, volumes,
 * status polling, and attaching through the attachments API (≥ 3.54) or
 * the legacy volume actions (older clouds).
 */
export class CinderClient {
  readonly microversion: Microversion
  private readonly options: CinderOptions
  private readonly base: string
  private readonly logger: Logger

  private constructor(options: CinderOptions, base: string, microversion: Microversion) {
    this.options = options
    this.base = base
    this.microversion = microversion
    this.logger = options.logger
  }

  /** Finds Cinder in the catalog (or the override) and agrees on a microversion. */
  static async connect(options: CinderOptions): Promise<CinderClient> {
    const token = await options.keystone.token()
    const base = (options.endpointOverride === undefined
      ? await options.keystone.endpoint(options.endpoint)
      : fillTemplate(options.endpointOverride, token.projectId)).replace(/\/+$/, '')
    const server = await discover(options.http, options.keystone, base)
    const wanted = parseMicroversion(options.maxMicroversion ?? CLIENT_MAX_MICROVERSION)
    const chosen = negotiate(wanted, server)
    if (chosen === undefined) {
      throw new CinderfsError('EIO', `Cinder at ${base} speaks ${formatMicroversion(server.min)}–${formatMicroversion(server.max)}, not ${formatMicroversion(wanted)} or older`)
    }
    options.logger.info({ endpoint: base, microversion: formatMicroversion(chosen), serverMax: formatMicroversion(server.max) }, 'connected to Cinder')
    return new CinderClient(options, base, chosen)
  }

  supports(minor: number): boolean {
    return compareMicroversions(this.microversion, { major: 3, minor }) >= 0
  }

  // ------------------------------------------------------------- volumes

  /** Starts a create (status `creating`); never retried, so one call makes at most one volume. */
  async createVolume(spec: VolumeSpec): Promise<CinderVolume> {
    const body: Json = { name: spec.name, size: spec.size, metadata: spec.metadata }
    if (spec.volumeType !== undefined) body.volume_type = spec.volumeType
    if (spec.availabilityZone !== undefined) body.availability_zone = spec.availabilityZone
    const response = await this.call('POST', '/volumes', { body: { volume: body }, idempotent: false, context: { volumeName: spec.name } })
    const volume = parseVolume(member(response.data, 'volume'))
    this.logger.info({ volumeId: volume.id, volumeName: spec.name, sizeGiB: spec.size, requestId: response.requestId }, 'volume create requested')
    return volume
  }

  async showVolume(volumeId: string): Promise<CinderVolume> {
    const response = await this.call('GET', `/volumes/${volumeId}`, { context: { volumeId } })
    return parseVolume(member(response.data, 'volume'))
  }

  async listVolumes(page: { limit?: number, marker?: string }, filters: VolumeFilters = {}): Promise<{ volumes: CinderVolume[], next?: string }> {
    const query = new URLSearchParams()
    if (page.limit !== undefined) query.set('limit', String(page.limit))
    if (page.marker !== undefined) query.set('marker', page.marker)
    if (filters.name !== undefined) query.set('name', filters.name)
    if (filters.status !== undefined) query.set('status', filters.status)
    if (filters.metadata !== undefined) query.set('metadata', JSON.stringify(filters.metadata))
    const response = await this.call('GET', `/volumes/detail?${query.toString()}`, {})
    const body = object(response.data, 'volume list')
    const volumes = array(body.volumes, 'volumes').map(v => parseVolume(object(v, 'volume')))
    const next = nextMarker(body.volumes_links)
    return next === undefined ? { volumes } : { volumes, next }
  }

  async renameVolume(volumeId: string, name: string): Promise<void> {
    await this.call('PUT', `/volumes/${volumeId}`, { body: { volume: { name } }, context: { volumeId } })
  }

  /** Renames and replaces the whole user metadata in one request (keys not named are removed). */
  async renameAndReplaceMetadata(volumeId: string, name: string, metadata: Record<string, string>): Promise<CinderVolume> {
    const response = await this.call('PUT', `/volumes/${volumeId}`, { body: { volume: { name, metadata } }, context: { volumeId } })
    return parseVolume(member(response.data, 'volume'))
  }

  /** POST merges: keys not named stay as they are. */
  async mergeMetadata(volumeId: string, metadata: Record<string, string>): Promise<void> {
    // idempotent: sending the same keys twice leaves the same metadata
    await this.call('POST', `/volumes/${volumeId}/metadata`, { body: { metadata }, idempotent: true, context: { volumeId } })
  }

  async deleteMetadataKey(volumeId: string, key: string): Promise<void> {
    await this.call('DELETE', `/volumes/${volumeId}/metadata/${encodeURIComponent(key)}`, { context: { volumeId } })
  }

  /** Only while `available`; afterwards every attachment is read-only. */
  async setReadOnlyFlag(volumeId: string, readOnly: boolean): Promise<void> {
    await this.action(volumeId, { 'os-update_readonly_flag': { readonly: readOnly } }, true)
  }

  /** Grows the volume and waits until it is back in `settled` (`available`, or `in-use` when online). */
  async extendVolume(volumeId: string, newSize: number, settled: 'available' | 'in-use'): Promise<CinderVolume> {
    // not idempotent: a repeated extend to the same size is a 400
    await this.action(volumeId, { 'os-extend': { new_size: newSize } }, false)
    const volume = await this.waitForStatus(volumeId, ['extending'], settled)
    this.logger.info({ volumeId, sizeGiB: volume.size }, 'volume extended')
    return volume
  }

  /** Deletes and waits until Cinder no longer knows the volume. */
  async deleteVolume(volumeId: string): Promise<void> {
    await this.call('DELETE', `/volumes/${volumeId}`, { context: { volumeId } })
    await this.poll(volumeId, async () => {
      try {
        const { status } = await this.showVolume(volumeId)
        // until the API has moved it to deleting, the old status (even error) shows
        if (status === 'error_deleting') fail('EIO', `volume ${volumeId} went to status ${status}`, { volumeId, status })
        return false
      } catch (err) {
        if (err instanceof CinderfsError && err.code === 'ENOENT') return true
        throw err
      }
    })
    this.logger.info({ volumeId }, 'volume deleted')
  }

  /**
   * Polls until the volume leaves the `transitional` statuses for `target`.
   * An `error*` status fails at once, with the status in the message.
   * `firstAskMs`: when nobody waits for the answer (a spare), ask first after
   * that long: fewer polls.
   */
  async waitForStatus(volumeId: string, transitional: string[], target: string, firstAskMs = 0): Promise<CinderVolume> {
    let last: CinderVolume | undefined
    await this.poll(volumeId, async () => {
      last = await this.showVolume(volumeId)
      return checkStatus(last, transitional, target)
    }, firstAskMs)
    if (last === undefined) throw new CinderfsError('EIO', `volume ${volumeId} was never seen`, { volumeId })
    return last
  }

  /** The project's gigabytes quota in GiB, or undefined when it is unlimited. */
  async gigabytesQuota(): Promise<{ limit: number, used: number } | undefined> {
    const projectId = (await this.options.keystone.token()).projectId
    if (projectId === undefined) return undefined
    const reply = await this.call('GET', `/os-quota-sets/${projectId}?usage=true`, {})
    const gigabytes = object(member(reply.data, 'quota_set').gigabytes, 'gigabytes')
    const limit = number(gigabytes, 'limit')
    if (limit < 0) return undefined
    const reserved = typeof gigabytes.reserved === 'number' ? gigabytes.reserved : 0
    return { limit, used: number(gigabytes, 'in_use') + reserved }
  }

  /** Names of the volume types this project may use (`cinderfs doctor` checks the configured one is among them). */
  async volumeTypeNames(): Promise<string[]> {
    const reply = await this.call('GET', '/types', {})
    return array(object(reply.data, 'body').volume_types, 'volume_types').map(t => string(object(t, 'volume type'), 'name'))
  }

  // --------------------------------------------------------- attachments

  /** Attaches to this host through the attachments API or, before 3.54, the legacy actions. */
  async attach(volumeId: string, mode: AttachMode): Promise<Attachment> {
    let attachment: Attachment
    try {
      attachment = this.supports(FEATURES.attachmentMode)
        ? await this.attachNew(volumeId, mode)
        : await this.attachLegacy(volumeId, mode)
    } catch (err) {
      throw await this.explainBusy(volumeId, err)
    }
    this.logger.info({ volumeId, attachmentId: attachment.id, mode: attachment.mode, driverVolumeType: attachment.connectionInfo.driverVolumeType }, 'volume attached')
    return attachment
  }

  /** Detaches; an attachment that is already gone counts as detached. */
  async detach(attachment: Attachment): Promise<void> {
    const { id: attachmentId, volumeId } = attachment
    try {
      if (this.supports(FEATURES.attachmentMode)) {
        await this.call('DELETE', `/attachments/${attachmentId}`, { context: { volumeId, attachmentId } })
      } else {
        await this.detachLegacy(attachment)
      }
    } catch (err) {
      if (!(err instanceof CinderfsError && err.code === 'ENOENT')) throw err
      this.logger.info({ volumeId, attachmentId }, 'attachment was already gone')
      await this.options.journal?.forgetAttachment(attachmentId)
      return
    }
    await this.options.journal?.forgetAttachment(attachmentId)
    this.logger.info({ volumeId, attachmentId }, 'volume detached')
  }

  /**
   * Attachments an earlier run's journal names (completed or not: a
   * reservation has no host, and a volume lists only completed attachments,
   * with their host name to admins only), and those whose connector named
   * this host on any volume of the project.
   */
  async ownAttachments(): Promise<Attachment[]> {
    const own = await this.journaledAttachments()
    let marker: string | undefined
    do {
      const page = await this.listVolumes(marker === undefined ? { limit: 1000 } : { limit: 1000, marker })
      for (const volume of page.volumes) {
        for (const a of volume.attachments) {
          if (a.hostName === this.options.host && !own.some(o => o.id === a.id)) own.push(await this.describeAttachment(volume, a.id))
        }
      }
      marker = page.next
    } while (marker !== undefined)
    return own
  }

  /**
   * A normal volume takes one attachment at a time; when another host (or
   * reader) holds it, say so and name the fix instead of Cinder's status text.
   */
  private async explainBusy(volumeId: string, err: unknown): Promise<unknown> {
    if (!(err instanceof CinderfsError && err.code === 'EBUSY')) return err
    const volume = await this.showVolume(volumeId).catch(() => undefined)
    if (volume === undefined || volume.multiattach) return err
    const holders = volume.attachments.map(a => a.hostName ?? 'an unnamed host').join(', ') || 'another attachment'
    return new CinderfsError('EBUSY', `volume ${volumeId} is attached to ${holders} and is not multiattach: readers on several hosts need a multiattach volume type (cinder_volume_type) (${err.message})`, err.details)
  }

  private async attachNew(volumeId: string, mode: AttachMode): Promise<Attachment> {
    // rw: one create with the connector. ro: create without a connector, then
    // update, since a one-shot create ignores mode ro (the device comes out rw).
    const oneShot = mode === 'rw'
    const { attachmentId, created, token } = await this.createAttachment(volumeId, mode, oneShot)
    const context = { volumeId, attachmentId }
    try {
      const attachment = oneShot
        ? created
        : member((await this.call('PUT', `/attachments/${attachmentId}`, { body: { attachment: { connector: this.connector(mode) } }, context })).data, 'attachment')
      if (this.supports(FEATURES.attachmentComplete)) {
        await this.call('POST', `/attachments/${attachmentId}/action`, { body: { 'os-complete': null }, context })
      }
      // attach_mode is right; connection_info.access_mode is not for non-admins
      const granted = attachMode(optionalString(attachment, 'attach_mode') ?? optionalString(created, 'attach_mode') ?? mode)
      return { id: attachmentId, volumeId, mode: granted, connectionInfo: flatConnectionInfo(attachment.connection_info) }
    } catch (err) {
      await this.deleteUnfinished(context, token)
      throw err
    }
  }

  /**
   * The first step of an attach: `POST /attachments`, with the connector or
   * as a bare reservation (no host), recorded in the journal before it is
   * sent and named there once Cinder answers, so a crash at any point until
   * the detach leaves an entry recovery deletes it by. Never sends
   * instance_uuid: once such an attachment has a connection, deleting it makes
   * Cinder ask Nova (its CVE-2023-2088 check), which fails without one.
   */
  async createAttachment(volumeId: string, mode: AttachMode, withConnector: boolean): Promise<{ attachmentId: string, created: Json, token: string | undefined }> {
    const journal = this.options.journal
    const token = await journal?.begin(volumeId)
    const body = withConnector ? { volume_uuid: volumeId, mode, connector: this.connector(mode) } : { volume_uuid: volumeId, mode }
    let created: Json
    try {
      created = member((await this.call('POST', '/attachments', { body: { attachment: body }, idempotent: false, context: { volumeId } })).data, 'attachment')
    } catch (err) {
      // Cinder answered with an error: nothing was created. No answer (cut off): it may have been; recovery looks.
      if (token !== undefined && httpStatus(err) !== undefined) await journal?.end(token)
      throw err
    }
    const attachmentId = string(created, 'id')
    if (token !== undefined) {
      try {
        await journal?.named(token, attachmentId)
      } catch (err) {
        await this.deleteUnfinished({ volumeId, attachmentId }, token)
        throw err
      }
    }
    return { attachmentId, created, token }
  }

  /** Deletes an attachment whose attach failed; its journal entry goes only once it is gone. */
  private async deleteUnfinished(context: { volumeId: string, attachmentId: string }, token: string | undefined): Promise<void> {
    const deleted = await this.bestEffort(context, 'deleting the unfinished attachment', () => this.call('DELETE', `/attachments/${context.attachmentId}`, { context }))
    if (deleted && token !== undefined) await this.bestEffort(context, 'clearing the attach journal', async () => this.options.journal?.end(token))
  }

  /**
   * Attachments an earlier run's journal names that still exist. A
   * reservation whose id the journal never got (the run died while Cinder
   * was creating it) cannot be told from another host's attach in flight: it
   * is logged, not deleted; deleting the volume removes it (removeReservations).
   */
  private async journaledAttachments(): Promise<Attachment[]> {
    const journal = this.options.journal
    if (journal === undefined || !this.supports(FEATURES.attachments)) return []
    const found: Attachment[] = []
    for (const { token, volumeId, attachmentId } of await journal.leftovers()) {
      if (attachmentId === undefined) {
        const reserved = (await this.attachmentsOf(volumeId)).filter(a => a.status === 'reserved')
        if (reserved.length === 0) await journal.end(token)
        else this.logger.warn({ volumeId, attachmentIds: reserved.map(a => a.id) }, `${JOURNALED_ATTACHMENT_FOUND}, but its id was never recorded: not deleting reservations that may be another host's`)
        continue
      }
      const context = { volumeId, attachmentId }
      let attachment: Json
      try {
        attachment = member((await this.call('GET', `/attachments/${attachmentId}`, { context })).data, 'attachment')
      } catch (err) {
        if (errorCode(err) !== 'ENOENT') throw err
        await journal.end(token)
        continue
      }
      this.logger.warn({ ...context, status: optionalString(attachment, 'status') }, JOURNALED_ATTACHMENT_FOUND)
      found.push({ id: attachmentId, volumeId, mode: attachMode(optionalString(attachment, 'attach_mode') ?? 'rw'), connectionInfo: flatConnectionInfo(attachment.connection_info) })
    }
    return found
  }

  /**
   * Deletes the volume's reservations: attachments never given a connector,
   * so no host holds a connection through them. Only for a volume of ours
   * that is being deleted (Cinder refuses while any attachment exists).
   * Resolves with how many went.
   */
  async removeReservations(volumeId: string): Promise<number> {
    if (!this.supports(FEATURES.attachments)) return 0
    const reserved = (await this.attachmentsOf(volumeId)).filter(a => a.status === 'reserved')
    for (const { id } of reserved) {
      await this.detach({ id, volumeId, mode: 'ro', connectionInfo: { driverVolumeType: '', data: {} } })
      this.logger.warn({ volumeId, attachmentId: id }, RESERVATION_REMOVED)
    }
    return reserved.length
  }

  /** The volume's attachments in any state (a volume lists only completed ones). */
  private async attachmentsOf(volumeId: string): Promise<{ id: string, status: string }[]> {
    const reply = await this.call('GET', `/attachments?volume_id=${encodeURIComponent(volumeId)}`, { context: { volumeId } })
    return array(object(reply.data, 'attachment list').attachments, 'attachments').map(a => {
      const attachment = object(a, 'attachment')
      return { id: string(attachment, 'id'), status: optionalString(attachment, 'status') ?? '' }
    })
  }

  private async attachLegacy(volumeId: string, requested: AttachMode): Promise<Attachment> {
    const before = await this.showVolume(volumeId)
    // os-attach refuses rw on a read-only volume; the new API downgrades instead
    const mode: AttachMode = isReadOnly(before) ? 'ro' : requested
    const known = new Set(before.attachments.map(a => a.id))
    const connector = this.connector(mode)
    await this.action(volumeId, { 'os-reserve': {} }, false)
    let connectionInfo: ConnectionInfo
    try {
      const reply = await this.action(volumeId, { 'os-initialize_connection': { connector } }, true)
      const info = object(object(reply.data, 'initialize_connection reply').connection_info, 'connection_info')
      connectionInfo = { driverVolumeType: string(info, 'driver_volume_type'), data: object(info.data, 'connection_info.data') }
    } catch (err) {
      await this.bestEffort({ volumeId }, 'unreserving', () => this.action(volumeId, { 'os-unreserve': {} }, true))
      throw err
    }
    try {
      await this.action(volumeId, { 'os-attach': { mountpoint: '/cinderfs', mode, host_name: this.options.host } }, false)
    } catch (err) {
      await this.bestEffort({ volumeId }, 'terminating the connection', () => this.action(volumeId, { 'os-terminate_connection': { connector } }, true))
      await this.bestEffort({ volumeId }, 'unreserving', () => this.action(volumeId, { 'os-unreserve': {} }, true))
      throw err
    }
    const after = await this.showVolume(volumeId)
    const added = after.attachments.find(a => !known.has(a.id) && a.hostName === this.options.host)
    if (added === undefined) fail('EIO', `volume ${volumeId} shows no attachment for host ${this.options.host} after os-attach`, { volumeId })
    return { id: added.id, volumeId, mode, connectionInfo }
  }

  private async detachLegacy(attachment: Attachment): Promise<void> {
    const { id: attachmentId, volumeId } = attachment
    // the legacy actions refuse a volume that is no longer in use: ask first
    const volume = await this.showVolume(volumeId)
    if (!volume.attachments.some(a => a.id === attachmentId)) fail('ENOENT', `volume ${volumeId} has no attachment ${attachmentId}`, { volumeId, attachmentId })
    await this.action(volumeId, { 'os-begin_detaching': {} }, true, attachmentId)
    await this.action(volumeId, { 'os-terminate_connection': { connector: this.connector(attachment.mode) } }, true, attachmentId)
    await this.action(volumeId, { 'os-detach': { attachment_id: attachmentId } }, true, attachmentId)
  }

  private async describeAttachment(volume: CinderVolume, attachmentId: string): Promise<Attachment> {
    const fallback: AttachMode = isReadOnly(volume) ? 'ro' : 'rw'
    if (!this.supports(FEATURES.attachmentMode)) {
      return { id: attachmentId, volumeId: volume.id, mode: fallback, connectionInfo: { driverVolumeType: '', data: {} } }
    }
    const reply = await this.call('GET', `/attachments/${attachmentId}`, { context: { volumeId: volume.id, attachmentId } })
    const attachment = member(reply.data, 'attachment')
    return {
      id: attachmentId,
      volumeId: volume.id,
      mode: attachMode(optionalString(attachment, 'attach_mode') ?? fallback),
      connectionInfo: flatConnectionInfo(attachment.connection_info),
    }
  }

  /** What os-brick's get_connector_properties would send; `host` is mandatory (Cinder answers 500 without it). */
  private connector(mode: AttachMode): Json {
    const { host, ip, initiator } = this.options
    // multipath: true makes iSCSI drivers send every portal (target_portals), which the iscsi connector fails over between.
    return { host, ip, ...(initiator === undefined ? {} : { initiator }), platform: os.machine(), os_type: process.platform, multipath: true, mode }
  }

  // ---------------------------------------------------------- plumbing

  private async action(volumeId: string, action: Json, idempotent: boolean, attachmentId?: string): Promise<HttpResponse> {
    const context: Record<string, string> = attachmentId === undefined ? { volumeId } : { volumeId, attachmentId }
    return await this.call('POST', `/volumes/${volumeId}/action`, { body: action, idempotent, context })
  }

  private async call(method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, request: { body?: unknown, idempotent?: boolean, context?: Record<string, string> }): Promise<HttpResponse> {
    return await this.options.http.send({
      service: 'cinder',
      method,
      url: this.base + path,
      headers: { 'OpenStack-API-Version': `volume ${formatMicroversion(this.microversion)}` },
      auth: this.options.keystone.authenticator(),
      body: request.body,
      idempotent: request.idempotent ?? method !== 'POST',
      ...(request.context === undefined ? {} : { context: request.context }),
    })
  }

  private async poll(volumeId: string, done: () => Promise<boolean>, firstAskMs = 0): Promise<void> {
    const timeoutMs = (this.options.stateTransitionTimeoutSeconds ?? 300) * 1000
    const deadline = Date.now() + timeoutMs
    // A create or delete on a healthy Cinder settles in a few hundred ms: ask often at first.
    let delayMs = Math.max(50, firstAskMs)
    if (firstAskMs > 0) await new Promise(resolve => setTimeout(resolve, firstAskMs))
    while (!(await done())) {
      if (Date.now() >= deadline) throw new CinderfsError('ETIMEDOUT', `volume ${volumeId}: no final status after ${timeoutMs / 1000} s`, { volumeId })
      await new Promise(resolve => setTimeout(resolve, delayMs))
      delayMs = Math.min(delayMs * 1.5, 2000)
    }
  }

  /** Resolves true when the step worked. */
  private async bestEffort(context: Record<string, string>, what: string, step: () => Promise<unknown>): Promise<boolean> {
    try {
      await step()
      return true
    } catch (err) {
      this.logger.warn({ ...context, err, status: httpStatus(err) }, `cleanup failed: ${what}`)
      return false
    }
  }
}

/** True when `target` is reached, false while transitional; throws on error* or anything else. */
function checkStatus(volume: CinderVolume, transitional: string[], target: string): boolean {
  if (volume.status === target) return true
  if (volume.status.startsWith('error')) fail('EIO', `volume ${volume.id} went to status ${volume.status}`, { volumeId: volume.id, status: volume.status })
  if (transitional.includes(volume.status)) return false
  return fail('EIO', `volume ${volume.id} has status ${volume.status}, expected ${target}`, { volumeId: volume.id, status: volume.status })
}

async function discover(http: HttpClient, keystone: KeystoneClient, base: string): Promise<{ min: Microversion, max: Microversion }> {
  // The versioned root (…/v3/) works behind any path prefix; Cinder wants a token there.
  const root = base.replace(/\/v3(\/.*)?$/, '') + '/v3/'
  const reply = await http.send({ service: 'cinder', method: 'GET', url: root, auth: keystone.authenticator(), idempotent: true, accept: [300] })
  const versions = array(object(reply.data, 'version document').versions, 'versions').map(v => object(v, 'version'))
  const v3 = versions.find(v => optionalString(v, 'id')?.startsWith('v3') === true)
  if (v3 === undefined) fail('EIO', `Cinder at ${base} does not offer API v3`)
  const max = optionalString(v3, 'version') ?? ''
  // no microversions at all: plain 3.0
  return max === ''
    ? { min: { major: 3, minor: 0 }, max: { major: 3, minor: 0 } }
    : { min: parseMicroversion(optionalString(v3, 'min_version') || '3.0'), max: parseMicroversion(max) }
}

function fillTemplate(template: string, projectId: string | undefined): string {
  return template.replace(/[%$]\((project_id|tenant_id|tenant)\)s/g, () => {
    if (projectId === undefined) throw new CinderfsError('EIO', `the Cinder endpoint ${template} needs a project-scoped token`)
    return projectId
  })
}

function nextMarker(links: unknown): string | undefined {
  if (!Array.isArray(links)) return undefined
  for (const link of links) {
    const l = object(link, 'link')
    if (l.rel === 'next' && typeof l.href === 'string') return new URL(l.href).searchParams.get('marker') ?? undefined
  }
  return undefined
}

function attachMode(value: string): AttachMode {
  return value === 'ro' ? 'ro' : 'rw'
}

/** The attachments API flattens `data` into connection_info next to driver_volume_type. */
function flatConnectionInfo(value: unknown): ConnectionInfo {
  const { driver_volume_type: type, ...data } = object(value ?? {}, 'connection_info')
  return { driverVolumeType: typeof type === 'string' ? type : '', data }
}

function cinderDate(value: unknown): Date | undefined {
  if (typeof value !== 'string' || value === '') return undefined
  // Cinder's timestamps are UTC without a zone
  return new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(value) ? value : `${value}Z`)
}

function parseVolume(v: Json): CinderVolume {
  const createdAt = cinderDate(v.created_at) ?? new Date(0)
  return {
    id: string(v, 'id'),
    name: optionalString(v, 'name') ?? '',
    size: number(v, 'size'),
    status: string(v, 'status'),
    metadata: stringMap(v.metadata),
    multiattach: v.multiattach === true,
    volumeType: optionalString(v, 'volume_type'),
    createdAt,
    updatedAt: cinderDate(v.updated_at) ?? createdAt,
    attachments: array(v.attachments ?? [], 'attachments').map(a => {
      const attachment = object(a, 'attachment')
      return { id: optionalString(attachment, 'attachment_id') ?? string(attachment, 'id'), hostName: optionalString(attachment, 'host_name') }
    }),
  }
}
