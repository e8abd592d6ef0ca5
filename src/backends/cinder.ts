import os from 'node:os'
import type { Logger } from 'pino'
import type { OpenStackSettings } from '../config/openstack.js'
import { CinderfsError } from '../errors/errors.js'
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
  /** Told of every HTTP request's outcome (metrics). */
  observe?: HttpOptions['observe']
}

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
    const { volumeType, availabilityZone } = this.options.settings
    const created = await cinder.createVolume({
      name: request.name,
      size: request.sizeGiB,
      metadata: request.metadata,
      ...(volumeType === undefined ? {} : { volumeType }),
      ...(availabilityZone === undefined ? {} : { availabilityZone }),
    })
    try {
      return toVolume(await cinder.waitForStatus(created.id, ['creating'], 'available'))
    } catch (err) {
      // a volume that never became available is ours to remove
      try {
        await cinder.deleteVolume(created.id)
      } catch (cleanup) {
        this.logger.warn({ volumeId: created.id, err: cleanup }, 'could not delete the failed volume')
      }
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

  async updateMetadata(volumeId: string, changes: Record<string, string | null>): Promise<void> {
    const cinder = await this.client()
    const set: Record<string, string> = {}
    const remove: string[] = []
    for (const [key, value] of Object.entries(changes)) {
      if (value === null) remove.push(key)
      else set[key] = value
    }
    if (Object.keys(set).length > 0) await cinder.mergeMetadata(volumeId, set)
    if (remove.length === 0) return
    // removing an absent key is a no-op, as in a merge; a missing volume is still ENOENT
    const present = (await cinder.showVolume(volumeId)).metadata
    for (const key of remove) if (key in present) await cinder.deleteMetadataKey(volumeId, key)
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
    await (await this.client()).deleteVolume(volumeId)
  }

  async attach(volumeId: string, mode: AttachMode): Promise<Attachment> {
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

  async close(): Promise<void> {
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
