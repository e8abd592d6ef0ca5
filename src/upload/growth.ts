import { setTimeout as sleep } from 'node:timers/promises'
import type { AttachmentManager, Lease } from '../attachments/attachment-manager.js'
import type { VolumeService } from '../backends/volume-service.js'
import type { BlockDevice } from '../connectors/connector.js'
import { CinderfsError, errorCode, errorMessage, fail } from '../errors/errors.js'
import type { Logger } from '../log/logger.js'
import { GiB } from '../model/volume.js'
import type { StagingTarget } from './staging.js'

/** How long a grown device may take to show its new size (iSCSI rescans, os-brick's LP#1959913). */
const resizeWaitMs = 20_000
/** Below this much free space an I/O error from the device is taken to mean the backend is full. */
const lowSpaceBytes = 64 * 1024 * 1024

export function ceilGiB(bytes: number): number {
  return Math.max(1, Math.ceil(bytes / GiB))
}

export interface GrowableVolumeOptions {
  volumeId: string
  sizeGiB: number
  lease: Lease
  service: VolumeService
  attachments: AttachmentManager
  logger: Logger
}

/**
 * An upload's read-write attachment of its volume, which grows on demand to
 * exactly the GiB it needs: online (Cinder 3.42+, the local backend), or by
 * detaching, extending and attaching again where the backend cannot. Device
 * errors that mean "the backend is full" come out as ENOSPC.
 */
export class GrowableVolume implements StagingTarget {
  private lease: Lease
  private bytes: number

  constructor(private readonly o: GrowableVolumeOptions) {
    this.lease = o.lease
    this.bytes = o.sizeGiB * GiB
  }

  get capacity(): number {
    return this.bytes
  }

  get sizeGiB(): number {
    return this.bytes / GiB
  }

  get device(): BlockDevice {
    return this.lease.device
  }

  async ensure(bytes: number): Promise<void> {
    const sizeGiB = ceilGiB(bytes)
    if (sizeGiB * GiB <= this.bytes) return
    const started = Date.now()
    try {
      await this.o.service.extend(this.o.volumeId, sizeGiB, true)
    } catch (err) {
      if (errorCode(err) !== 'ENOTSUP') throw err
      // No online extend (Cinder before 3.42): detach, extend, attach again.
      this.lease.release()
      await this.o.attachments.detach(this.o.volumeId)
      await this.o.service.extend(this.o.volumeId, sizeGiB, false)
      this.lease = await this.o.attachments.acquire(this.o.volumeId, 'rw')
    }
    const wanted = sizeGiB * GiB
    while (await this.device.refreshSize() < wanted) {
      if (Date.now() - started > resizeWaitMs) fail('EIO', `device ${this.device.path} did not grow to ${sizeGiB} GiB within ${resizeWaitMs / 1000} s`)
      await sleep(100)
    }
    this.bytes = wanted
    this.o.logger.info({ volumeId: this.o.volumeId, sizeGiB, ms: Date.now() - started }, 'volume grown')
  }

  async write(data: Buffer, offset: number, length: number, position: number): Promise<void> {
    try {
      await this.device.write(data, offset, length, position)
    } catch (err) {
      throw await this.explain(err)
    }
  }

  async flush(): Promise<void> {
    try {
      await this.device.flush()
    } catch (err) {
      throw await this.explain(err)
    }
  }

  async read(target: Buffer, length: number, position: number): Promise<number> {
    return this.device.read(target, 0, length, position)
  }

  /** Lets go of the attachment (it is detached when no reader shares it). */
  release(): void {
    this.lease.release()
  }

  /**
   * Block devices report a full thin backend (a loop file on a full disk, a
   * full thin pool) as EIO. When the backend says it is out of space, tell
   * the writer ENOSPC, which is what happened.
   */
  private async explain(err: unknown): Promise<CinderfsError> {
    const failure = asFailure(err, `I/O on ${this.device.path} failed`)
    if (failure.code !== 'EIO') return failure
    const capacity = await this.o.service.capacity().catch(() => undefined)
    if (capacity === undefined || capacity.freeBytes >= lowSpaceBytes) return failure
    return new CinderfsError('ENOSPC', `the backend is out of space (${capacity.freeBytes} bytes free): ${failure.message}`, { volumeId: this.o.volumeId }, { cause: err })
  }
}

/** Any error as the typed error an upload fails with (device errnos kept, the rest EIO). */
export function asFailure(err: unknown, context: string): CinderfsError {
  if (err instanceof CinderfsError) return err
  const code = errorCode(err)
  const known = code === 'ENOSPC' || code === 'EDQUOT' || code === 'EIO' || code === 'EROFS' || code === 'EFBIG' ? code : 'EIO'
  return new CinderfsError(known, `${context}: ${errorMessage(err)}`, {}, { cause: err })
}
