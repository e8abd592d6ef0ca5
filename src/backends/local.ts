import { randomUUID } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import { CinderfsError, fail } from '../errors/errors.js'
import type { Logger } from '../log/logger.js'
import { attachLoop, detachLoop, loopsBackedBy, refreshLoopCapacity } from './loop-devices.js'
import {
  GiB, type Attachment, type AttachMode, type CreateVolumeRequest, type ListOptions, type Volume,
  type VolumePage, type VolumeService,
} from './volume-service.js'

interface AttachmentRecord {
  id: string
  mode: AttachMode
  host: string
  devicePath: string
  loop: boolean
}

/** What the local backend keeps per volume, as `<id>.json` beside the sparse `<id>.img`. */
interface VolumeRecord {
  id: string
  name: string
  sizeGiB: number
  metadata: Record<string, string>
  readOnly: boolean
  createdAt: string
  updatedAt: string
  attachments: AttachmentRecord[]
}

export interface LocalBackendOptions {
  dir: string
  host: string
  /** Attach through loop devices (root); otherwise the sparse file itself is the device. */
  useLoopDevices: boolean
  logger: Logger
}

const nameLimit = 255

/**
 * The embedded backend: Cinder's volume model on a local directory, so
 * cinderfs runs with no OpenStack. Sizes are whole GiB and volumes are thin
 * (sparse), as with Cinder's thin drivers; attachments are loop devices, as
 * with the test-only Cinder driver, so the data path is the same.
 */
export class LocalVolumeService implements VolumeService {
  readonly kind = 'local'
  private readonly dir: string
  private readonly host: string
  private readonly useLoopDevices: boolean
  private readonly log: Logger
  /** Serialises read-modify-write of one volume's record. */
  private readonly locks = new Map<string, Promise<void>>()

  constructor(options: LocalBackendOptions) {
    this.dir = options.dir
    this.host = options.host
    this.useLoopDevices = options.useLoopDevices
    this.log = options.logger.child({ backend: 'local' })
  }

  /** Creates the directory and takes it for this process (one daemon per directory). */
  static async open(options: LocalBackendOptions): Promise<LocalVolumeService> {
    await fs.mkdir(options.dir, { recursive: true, mode: 0o700 })
    const service = new LocalVolumeService(options)
    await service.takeDirectory()
    return service
  }

  private async takeDirectory(): Promise<void> {
    const pidFile = path.join(this.dir, 'cinderfs.pid')
    const previous = Number.parseInt(await fs.readFile(pidFile, 'utf8').catch(() => ''), 10)
    if (Number.isInteger(previous) && previous !== process.pid && processAlive(previous)) {
      fail('EBUSY', `local backend directory ${this.dir} is in use by cinderfs pid ${previous}`, { pid: previous })
    }
    await fs.writeFile(pidFile, `${process.pid}\n`)
  }

  async create(request: CreateVolumeRequest): Promise<Volume> {
    checkName(request.name)
    if (!Number.isInteger(request.sizeGiB) || request.sizeGiB < 1) fail('EINVAL', `volume size must be a whole number of GiB, got ${request.sizeGiB}`)
    const id = randomUUID()
    const now = new Date().toISOString()
    const record: VolumeRecord = {
      id, name: request.name, sizeGiB: request.sizeGiB, metadata: { ...request.metadata },
      readOnly: false, createdAt: now, updatedAt: now, attachments: [],
    }
    const handle = await fs.open(this.imagePath(id), 'wx', 0o600)
    try {
      await handle.truncate(request.sizeGiB * GiB)
    } finally {
      await handle.close()
    }
    await this.save(record)
    this.log.info({ volumeId: id, name: request.name, sizeGiB: request.sizeGiB }, 'volume created')
    return toVolume(record)
  }

  async get(volumeId: string): Promise<Volume> {
    return toVolume(await this.load(volumeId))
  }

  async list(options: ListOptions = {}): Promise<VolumePage> {
    const records: VolumeRecord[] = []
    for (const entry of await fs.readdir(this.dir)) {
      if (!entry.endsWith('.json')) continue
      const record = await this.load(entry.slice(0, -'.json'.length)).catch(ignoreMissing)
      if (record !== undefined) records.push(record)
    }
    records.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id))
    const start = options.marker === undefined ? 0 : records.findIndex(r => r.id === options.marker) + 1
    const limit = options.limit ?? 1000
    const page = records.slice(start, start + limit)
    const last = page.at(-1)
    const more = start + limit < records.length && last !== undefined
    return more ? { volumes: page.map(toVolume), next: last.id } : { volumes: page.map(toVolume) }
  }

  async rename(volumeId: string, name: string): Promise<void> {
    checkName(name)
    await this.update(volumeId, record => { record.name = name })
  }

  async updateMetadata(volumeId: string, changes: Record<string, string | null>): Promise<void> {
    await this.update(volumeId, record => {
      for (const [key, value] of Object.entries(changes)) {
        if (value === null) delete record.metadata[key]
        else record.metadata[key] = value
      }
    })
  }

  async setReadOnly(volumeId: string, readOnly: boolean): Promise<void> {
    await this.update(volumeId, record => {
      // Cinder allows the flag only on a detached volume; keep the same rule.
      if (record.attachments.length > 0) fail('EBUSY', `volume ${volumeId} is attached; the read-only flag can only change while it is available`)
      record.readOnly = readOnly
    })
  }

  async extend(volumeId: string, newSizeGiB: number): Promise<void> {
    const record = await this.update(volumeId, r => {
      if (!Number.isInteger(newSizeGiB) || newSizeGiB <= r.sizeGiB) fail('EINVAL', `new size ${newSizeGiB} GiB must be larger than ${r.sizeGiB} GiB`)
      r.sizeGiB = newSizeGiB
    })
    await fs.truncate(this.imagePath(volumeId), newSizeGiB * GiB)
    for (const attachment of record.attachments) {
      if (attachment.loop) await refreshLoopCapacity(attachment.devicePath)
    }
    this.log.info({ volumeId, sizeGiB: newSizeGiB }, 'volume extended')
  }

  async delete(volumeId: string): Promise<void> {
    await this.withLock(volumeId, async () => {
      const record = await this.load(volumeId)
      if (record.attachments.length > 0) fail('EBUSY', `volume ${volumeId} is attached and cannot be deleted`)
      await fs.rm(this.imagePath(volumeId), { force: true })
      await fs.rm(this.recordPath(volumeId), { force: true })
    })
    this.log.info({ volumeId }, 'volume deleted')
  }

  async attach(volumeId: string, requested: AttachMode): Promise<Attachment> {
    let attachment: AttachmentRecord | undefined
    await this.update(volumeId, async record => {
      // As in Cinder, a read-only volume attaches read-only whatever was asked.
      const mode: AttachMode = record.readOnly ? 'ro' : requested
      const file = this.imagePath(volumeId)
      const devicePath = this.useLoopDevices ? await attachLoop(file, mode === 'ro') : file
      attachment = { id: randomUUID(), mode, host: this.host, devicePath, loop: this.useLoopDevices }
      record.attachments.push(attachment)
    })
    if (attachment === undefined) fail('EIO', `attach of ${volumeId} did not complete`)
    this.log.info({ volumeId, attachmentId: attachment.id, mode: attachment.mode, device: attachment.devicePath }, 'volume attached')
    return this.toAttachment(volumeId, attachment)
  }

  async detach(attachment: Attachment): Promise<void> {
    await this.update(attachment.volumeId, async record => {
      const found = record.attachments.find(a => a.id === attachment.id)
      if (found === undefined) return
      if (found.loop) await detachLoop(found.devicePath)
      record.attachments = record.attachments.filter(a => a !== found)
    })
    this.log.info({ volumeId: attachment.volumeId, attachmentId: attachment.id }, 'volume detached')
  }

  async listOwnAttachments(): Promise<Attachment[]> {
    const own: Attachment[] = []
    let marker: string | undefined
    do {
      const page = await this.list(marker === undefined ? {} : { marker })
      for (const volume of page.volumes) {
        const record = await this.load(volume.id).catch(ignoreMissing)
        for (const a of record?.attachments ?? []) {
          if (a.host === this.host) own.push(this.toAttachment(volume.id, a))
        }
        // A loop device can outlive its record after a crash between losetup and save.
        if (this.useLoopDevices && record !== undefined) await this.detachUnrecordedLoops(record)
      }
      marker = page.next
    } while (marker !== undefined)
    return own
  }

  async capacity(): Promise<{ totalBytes: number, freeBytes: number }> {
    const s = await fs.statfs(this.dir)
    return { totalBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize }
  }

  async close(): Promise<void> {
    await fs.rm(path.join(this.dir, 'cinderfs.pid'), { force: true })
  }

  private async detachUnrecordedLoops(record: VolumeRecord): Promise<void> {
    const known = new Set(record.attachments.map(a => a.devicePath))
    for (const device of await loopsBackedBy(this.imagePath(record.id))) {
      if (known.has(device)) continue
      this.log.warn({ volumeId: record.id, device }, 'detaching a loop device with no attachment record')
      await detachLoop(device)
    }
  }

  private toAttachment(volumeId: string, a: AttachmentRecord): Attachment {
    return {
      id: a.id, volumeId, mode: a.mode,
      connectionInfo: { driverVolumeType: 'local', data: { device_path: a.devicePath, read_only: a.mode === 'ro' } },
    }
  }

  private imagePath(id: string): string {
    return path.join(this.dir, `${checkId(id)}.img`)
  }

  private recordPath(id: string): string {
    return path.join(this.dir, `${checkId(id)}.json`)
  }

  private async load(id: string): Promise<VolumeRecord> {
    let text: string
    try {
      text = await fs.readFile(this.recordPath(id), 'utf8')
    } catch (err) {
      if (isMissing(err)) fail('ENOENT', `volume ${id} does not exist`, { volumeId: id })
      throw err
    }
    return JSON.parse(text) as VolumeRecord
  }

  /** Write-then-rename, so a crash leaves the old record or the new one, never half of one. */
  private async save(record: VolumeRecord): Promise<void> {
    const target = this.recordPath(record.id)
    const temp = `${target}.tmp`
    const handle = await fs.open(temp, 'w', 0o600)
    try {
      await handle.writeFile(JSON.stringify(record))
      await handle.datasync()
    } finally {
      await handle.close()
    }
    await fs.rename(temp, target)
  }

  private async update(id: string, change: (record: VolumeRecord) => void | Promise<void>): Promise<VolumeRecord> {
    return this.withLock(id, async () => {
      const record = await this.load(id)
      await change(record)
      record.updatedAt = new Date().toISOString()
      await this.save(record)
      return record
    })
  }

  private async withLock<T>(id: string, work: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(id) ?? Promise.resolve()
    const result = previous.then(work)
    const tail = result.then(() => undefined, () => undefined)
    this.locks.set(id, tail)
    void tail.then(() => { if (this.locks.get(id) === tail) this.locks.delete(id) })
    return result
  }
}

function toVolume(record: VolumeRecord): Volume {
  return {
    id: record.id,
    name: record.name,
    sizeGiB: record.sizeGiB,
    status: record.attachments.length > 0 ? 'in-use' : 'available',
    metadata: { ...record.metadata },
    readOnly: record.readOnly,
    multiattach: true,
    createdAt: new Date(record.createdAt),
    updatedAt: new Date(record.updatedAt),
  }
}

function checkName(name: string): void {
  if (name.length > nameLimit) fail('ENAMETOOLONG', `volume name is ${name.length} characters; the limit is ${nameLimit}`)
}

/** Ids become file names: accept only what create() makes. */
function checkId(id: string): string {
  if (!/^[0-9a-f-]{36}$/.test(id)) throw new CinderfsError('ENOENT', `volume ${id} does not exist`, { volumeId: id })
  return id
}

function isMissing(err: unknown): boolean {
  return typeof err === 'object' && err !== null && 'code' in err && err.code === 'ENOENT'
}

function ignoreMissing(err: unknown): undefined {
  if (err instanceof CinderfsError && err.code === 'ENOENT') return undefined
  throw err
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return typeof err === 'object' && err !== null && 'code' in err && err.code === 'EPERM'
  }
}
