import { randomUUID } from 'node:crypto'
import os from 'node:os'
import type { Logger } from 'pino'
import type { OpenStackSettings } from '../config/openstack.js'
import { CinderfsError, errorCode } from '../errors/errors.js'
import type { Janitor } from '../janitor/janitor.js'
import { AttachJournal } from '../openstack/attach-journal.js'
import { ADMIN_METADATA_KEYS, CinderClient, FEATURES, isReadOnly, type CinderVolume } from '../openstack/cinder.js'
import { HttpClient, type HttpOptions } from '../openstack/http.js'
import { KeystoneClient } from '../openstack/keystone.js'
import { GiB, type Attachment, type AttachMode, type CreateVolumeRequest, type ListOptions, type Volume, type VolumePage } from '../model/volume.js'
import type { VolumeService } from './volume-service.js'

export interface CinderBackendOptions {
  settings: OpenStackSettings
  logger: Logger
  /** The connector's host name: whose attachments are ours (default: this machine's name). */
  host?: string
  /** The connector's IP, which storage backends may use for access control (default: this host's first external IPv4 address). */
  ip?: string
  /** Retries deleting a volume whose create failed (Cinder refuses while it is still `creating`); without one that is only logged. */
  janitor?: Janitor
  /** The connector's iSCSI initiator IQN: iSCSI drivers export volumes to it (default: none sent). */
  initiator?: string
  /**
   * Create and attach ahead: keep this many 1 GiB volumes made and attached
   * rw to this host before they are needed, so a new image costs one rename
   * instead of a create, its polls and an attach. Each spare carries
   * `metadata` (the caller's marks of an unfinished upload of this host), so
   * recovery after a crash deletes spares like any other unfinished upload
   * (and their attachments, as this host's). Default 0: none.
   */
  spares?: { count: number, metadata: Record<string, string> }
  /** Told of every HTTP request's outcome (metrics). */
  observe?: HttpOptions['observe']
  /**
   * A file recording our attachments, so that recovery deletes those a crash
   * left, even unfinished ones with no host yet (see AttachJournal). Without
   * one, only completed attachments Cinder shows under this host are found.
   */
  attachJournal?: string
}

/** Logged when a spare volume is made and attached (tests wait for it). */
export const SPARE_READY = 'spare volume ready'
/** Spares are named so that no file name can collide with one. */
const SPARE_PREFIX = 'image-.cinderfs-spare-'

/**
 * The `cinder` backend: VolumeService on a real Cinder v3, authenticated
 * through Keystone. Connects lazily, so construction never does I/O.
 */
export class CinderVolumeService implements VolumeService {
  readonly kind = 'cinder'
  readonly host: string
  private readonly options: CinderBackendOptions
  private readonly http: HttpClient
  private readonly logger: Logger
  private connecting: Promise<CinderClient> | undefined
  private keystone: KeystoneClient | undefined
  /** Spare volumes being made or ready, oldest first; each settles to undefined when it could not be made. */
  private readonly spares: Array<Promise<Spare | undefined>> = []
  /** Attachments of taken spares, handed out by the first rw attach of their volume. */
  private readonly spareAttachments = new Map<string, Attachment>()
  private closed = false

  constructor(options: CinderBackendOptions) {
    this.options = options
    this.host = options.host ?? os.hostname()
    this.logger = options.logger.child({ backend: 'cinder', host: this.host })
    this.http = new HttpClient({ logger: this.logger, tls: options.settings.tls, ...(options.observe === undefined ? {} : { observe: options.observe }) })
  }

  /** The connected client (version discovery happens once, on first use). */
  async client(): Promise<CinderClient> {
    this.connecting ??= this.connect().catch((err: unknown) => {
      this.connecting = undefined
      throw err
    })
    return await this.connecting
  }

  /** The project we act for: glance_store records it as image_owner (Cinder's clone-from-image check uses it). */
  async projectId(): Promise<string | undefined> {
    await this.client()
    return (await this.keystone?.token())?.projectId
  }

  async create(request: CreateVolumeRequest): Promise<Volume> {
    const cinder = await this.client()
    if (request.sizeGiB === 1 && (this.options.spares?.count ?? 0) > 0) {
      const spare = await this.spares.shift()
      this.refillSpares()
      if (spare !== undefined) {
        // A provisional volume keeps the spare's name and marks (an unfinished
        // upload of this host) until the caller's replace; otherwise one PUT
        // names it and replaces them with the image's metadata.
        const taken = request.provisional === true
          ? { ...spare.volume, name: request.name, metadata: request.metadata }
          : await cinder.renameAndReplaceMetadata(spare.volume.id, request.name, request.metadata)
        this.spareAttachments.set(spare.volume.id, spare.attachment)
        this.logger.debug({ volumeId: spare.volume.id, attachmentId: spare.attachment.id, volumeName: request.name }, 'spare volume taken')
        return toVolume(taken)
      }
    }
    return toVolume(await this.createAndWait(cinder, request.name, request.sizeGiB, request.metadata))
  }

  /** Keeps `spares.count` spare volumes made or in the making. */
  private refillSpares(): void {
    const wanted = this.options.spares
    if (wanted === undefined || this.closed) return
    while (this.spares.length < wanted.count) {
      const name = `${SPARE_PREFIX}${randomUUID()}`
      this.spares.push(this.makeSpare(name, wanted.metadata).catch((err: unknown) => {
        this.logger.warn({ volumeName: name, err }, 'could not make a spare volume; creating on demand')
        return undefined
      }))
    }
  }

  private async makeSpare(name: string, metadata: Record<string, string>): Promise<Spare> {
    const cinder = await this.client()
    // nobody waits for a spare: a create takes a few hundred ms, so ask after 400 (one or two GETs, not four or five)
    const volume = await this.createAndWait(cinder, name, 1, metadata, 400)
    try {
      const attachment = await cinder.attach(volume.id, 'rw')
      this.logger.info({ volumeId: volume.id, attachmentId: attachment.id }, SPARE_READY)
      return { volume, attachment }
    } catch (err) {
      await cinder.deleteVolume(volume.id).catch(() => undefined)
      throw err
    }
  }

  /** `firstAskMs`: see CinderClient.waitForStatus. */
  private async createAndWait(cinder: CinderClient, name: string, sizeGiB: number, metadata: Record<string, string>, firstAskMs = 0): Promise<CinderVolume> {
    const { volumeType, availabilityZone } = this.options.settings
    const created = await cinder.createVolume({
      name,
      size: sizeGiB,
      metadata,
      ...(volumeType === undefined ? {} : { volumeType }),
      ...(availabilityZone === undefined ? {} : { availabilityZone }),
    })
    try {
      return await cinder.waitForStatus(created.id, ['creating'], 'available', firstAskMs)
    } catch (err) {
      // A volume that never became available is ours to remove; one stuck in
      // `creating` (cinder-volume down) can only go once Cinder lets it.
      const step = { volumeId: created.id, call: 'delete volume', run: async () => cinder.deleteVolume(created.id) }
      if (this.options.janitor !== undefined) await this.options.janitor.attempt(step)
      else await step.run().catch((cleanup: unknown) => { this.logger.warn({ volumeId: created.id, err: cleanup }, 'could not delete the failed volume') })
      throw err
    }
  }

  async get(volumeId: string): Promise<Volume> {
    return toVolume(await (await this.client()).showVolume(volumeId))
  }

  async list(options: ListOptions = {}): Promise<VolumePage> {
    const page = await (await this.client()).listVolumes(options)
    const volumes = page.volumes.map(toVolume)
    return page.next === undefined ? { volumes } : { volumes, next: page.next }
  }

  async rename(volumeId: string, name: string): Promise<void> {
    await (await this.client()).renameVolume(volumeId, name)
  }

  async replace(volumeId: string, name: string, metadata: Record<string, string>): Promise<void> {
    await (await this.client()).renameAndReplaceMetadata(volumeId, name, metadata)
  }

  async updateMetadata(volumeId: string, changes: Record<string, string | null>): Promise<void> {
    const cinder = await this.client()
    const set: Record<string, string> = {}
    const remove: string[] = []
    for (const [key, value] of Object.entries(changes)) {
      if (value === null) remove.push(key)
      else set[key] = value
    }
    if (Object.keys(set).length > 0) await cinder.mergeMetadata(volumeId, set)
    for (const key of remove) {
      try {
        await cinder.deleteMetadataKey(volumeId, key)
      } catch (err) {
        // Removing an absent key is a no-op, as in a merge; a missing volume is
        // still ENOENT. Asking only on a 404 saves a GET per removal.
        if (!(err instanceof CinderfsError && err.code === 'ENOENT')) throw err
        await cinder.showVolume(volumeId)
      }
    }
  }

  async setReadOnly(volumeId: string, readOnly: boolean): Promise<void> {
    await (await this.client()).setReadOnlyFlag(volumeId, readOnly)
  }

  /** Cinder's status decides rather than `_attached`: it also knows other hosts' attachments. */
  async extend(volumeId: string, newSizeGiB: number, _attached: boolean): Promise<void> {
    const cinder = await this.client()
    const volume = await cinder.showVolume(volumeId)
    if (newSizeGiB <= volume.size) return // Cinder never shrinks
    if (volume.status === 'available') {
      await cinder.extendVolume(volumeId, newSizeGiB, 'available')
    } else if (cinder.supports(FEATURES.onlineExtend)) {
      await cinder.extendVolume(volumeId, newSizeGiB, 'in-use')
    } else {
      // Only the caller holds the open device, so only it can detach, extend and reattach.
      throw new CinderfsError('ENOTSUP', `Cinder ${cinder.microversion.major}.${cinder.microversion.minor} cannot extend volume ${volumeId} while it is ${volume.status}`, { volumeId })
    }
  }

  async delete(volumeId: string): Promise<void> {
    const cinder = await this.client()
    // a taken spare whose attachment was never handed out still holds it
    const attachment = this.spareAttachments.get(volumeId)
    if (attachment !== undefined) {
      this.spareAttachments.delete(volumeId)
      await cinder.detach(attachment)
    }
    try {
      await cinder.deleteVolume(volumeId)
    } catch (err) {
      // Cinder refuses while any attachment exists; a reservation a crash left
      // (no host, no connection) must not keep our volume forever.
      if (errorCode(err) !== 'EBUSY' || await cinder.removeReservations(volumeId) === 0) throw err
      await cinder.deleteVolume(volumeId)
    }
  }

  async attach(volumeId: string, mode: AttachMode): Promise<Attachment> {
    const ready = this.spareAttachments.get(volumeId)
    if (ready !== undefined && mode === 'rw') {
      this.spareAttachments.delete(volumeId)
      return ready
    }
    return await (await this.client()).attach(volumeId, mode)
  }

  async detach(attachment: Attachment): Promise<void> {
    await (await this.client()).detach(attachment)
  }

  async listOwnAttachments(): Promise<Attachment[]> {
    return await (await this.client()).ownAttachments()
  }

  /** The project's gigabytes quota, when it has one. */
  async capacity(): Promise<{ totalBytes: number, freeBytes: number } | undefined> {
    const quota = await (await this.client()).gigabytesQuota()
    if (quota === undefined) return undefined
    return { totalBytes: quota.limit * GiB, freeBytes: Math.max(0, quota.limit - quota.used) * GiB }
  }

  /** Deletes the spares (a clean stop leaves none), then closes the connections. */
  async close(): Promise<void> {
    this.closed = true
    const spares = (await Promise.all(this.spares.splice(0))).filter(spare => spare !== undefined)
    const cinder = spares.length + this.spareAttachments.size === 0 ? undefined : await this.client().catch(() => undefined)
    await Promise.all([
      ...spares.map(async ({ volume, attachment }) => {
        await cinder?.detach(attachment)
        await cinder?.deleteVolume(volume.id)
      }),
      // taken, never attached by the caller: the volume is the caller's, the attachment ours
      ...[...this.spareAttachments.values()].map(async attachment => cinder?.detach(attachment)),
    ].map(async step => step.catch((err: unknown) => {
      this.logger.warn({ err }, 'could not remove a spare volume or attachment; recovery at the next mount does')
    })))
    this.spareAttachments.clear()
    this.http.close()
  }

  private async connect(): Promise<CinderClient> {
    const { settings } = this.options
    const keystone = new KeystoneClient({ authUrl: settings.authUrl, credentials: settings.credentials, http: this.http, logger: this.logger })
    this.keystone = keystone
    this.logger.debug({ source: settings.source }, 'connecting to OpenStack')
    return await CinderClient.connect({
      keystone,
      http: this.http,
      logger: this.logger,
      endpoint: settings.endpoint,
      stateTransitionTimeoutSeconds: settings.stateTransitionTimeoutSeconds,
      host: this.host,
      ip: this.options.ip ?? hostIp(),
      ...(this.options.initiator === undefined ? {} : { initiator: this.options.initiator }),
      ...(this.options.attachJournal === undefined ? {} : { journal: new AttachJournal(this.options.attachJournal) }),
      ...(settings.endpointOverride === undefined ? {} : { endpointOverride: settings.endpointOverride }),
      ...(settings.maxMicroversion === undefined ? {} : { maxMicroversion: settings.maxMicroversion }),
    })
  }

}

/** What os-brick would report: an address of this host, the loopback one only when there is no other. */
function hostIp(): string {
  const addresses = Object.values(os.networkInterfaces()).flat()
  return addresses.find(a => a !== undefined && a.family === 'IPv4' && !a.internal)?.address ?? '127.0.0.1'
}

function toVolume(v: CinderVolume): Volume {
  const metadata = { ...v.metadata }
  for (const key of ADMIN_METADATA_KEYS) delete metadata[key]
  return {
    id: v.id,
    name: v.name,
    sizeGiB: v.size,
    status: v.status,
    metadata,
    readOnly: isReadOnly(v),
    multiattach: v.multiattach,
    createdAt: v.createdAt,
    updatedAt: v.updatedAt,
  }
}

/** A volume made and attached ahead of need. */
interface Spare {
  volume: CinderVolume
  attachment: Attachment
}
