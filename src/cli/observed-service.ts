import { performance } from 'node:perf_hooks'
import type { VolumeService } from '../backends/volume-service.js'
import type { Metrics } from '../metrics/metrics.js'
import type { Attachment, AttachMode, CreateVolumeRequest, ListOptions, Volume, VolumePage } from '../model/volume.js'

/** An attachment held now, as `cinderfs status` shows it (never its connection info: it may carry CHAP secrets). */
export interface HeldAttachment {
  volumeId: string
  attachmentId: string
  mode: AttachMode
  transport: string
  since: Date
}

/**
 * The backend as the daemon uses it, counted: volumes created and deleted,
 * attach and detach latency, the attachments held now, and what recovery
 * cleaned up at start. Wrapping the VolumeService here, in the composition
 * root, keeps metrics out of the layers below.
 */
export class ObservedVolumeService implements VolumeService {
  readonly kind: string
  readonly held = new Map<string, HeldAttachment>()
  /** Set while fs.recover() runs: the deletes and detaches then are cleanup of an earlier run. */
  recovering = false

  constructor(private readonly inner: VolumeService, private readonly metrics: Metrics) {
    this.kind = inner.kind
  }

  async create(request: CreateVolumeRequest): Promise<Volume> {
    const volume = await this.inner.create(request)
    this.metrics.volumeCreated()
    return volume
  }

  async get(volumeId: string): Promise<Volume> {
    return this.inner.get(volumeId)
  }

  async list(options?: ListOptions): Promise<VolumePage> {
    return this.inner.list(options)
  }

  async rename(volumeId: string, name: string): Promise<void> {
    return this.inner.rename(volumeId, name)
  }

  async replace(volumeId: string, name: string, metadata: Record<string, string>): Promise<void> {
    return this.inner.replace(volumeId, name, metadata)
  }

  async updateMetadata(volumeId: string, changes: Record<string, string | null>): Promise<void> {
    return this.recovered('seal_finalised_image', this.inner.updateMetadata(volumeId, changes))
  }

  async setReadOnly(volumeId: string, readOnly: boolean): Promise<void> {
    return this.inner.setReadOnly(volumeId, readOnly)
  }

  async extend(volumeId: string, newSizeGiB: number, attached: boolean): Promise<void> {
    return this.inner.extend(volumeId, newSizeGiB, attached)
  }

  async delete(volumeId: string): Promise<void> {
    await this.recovered('delete_partial_volume', this.inner.delete(volumeId))
    this.metrics.volumeDeleted()
  }

  async attach(volumeId: string, mode: AttachMode): Promise<Attachment> {
    const started = performance.now()
    const attachment = await this.inner.attach(volumeId, mode)
    this.metrics.attached((performance.now() - started) / 1000)
    this.held.set(attachment.id, { volumeId, attachmentId: attachment.id, mode: attachment.mode, transport: attachment.connectionInfo.driverVolumeType, since: new Date() })
    return attachment
  }

  async detach(attachment: Attachment): Promise<void> {
    const started = performance.now()
    await this.recovered('delete_leftover_attachment', this.inner.detach(attachment))
    this.metrics.detached((performance.now() - started) / 1000)
    this.held.delete(attachment.id)
  }

  async listOwnAttachments(): Promise<Attachment[]> {
    return this.inner.listOwnAttachments()
  }

  async capacity(): Promise<{ totalBytes: number, freeBytes: number } | undefined> {
    return this.inner.capacity()
  }

  async close(): Promise<void> {
    return this.inner.close()
  }

  /** Counts `work` as a recovery action when recovery runs it. */
  private async recovered(action: string, work: Promise<void>): Promise<void> {
    if (!this.recovering) return work
    try {
      await work
      this.metrics.recovery(action, true)
    } catch (err) {
      this.metrics.recovery(action, false)
      throw err
    }
  }
}
