import { createHash, randomUUID } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { CinderfsError, fail } from '../errors/errors.js'
import type { Logger } from '../log/logger.js'
import { processAlive } from '../system/process.js'
import { attachLoop, detachLoop, loopsBackedBy, refreshLoopCapacity } from './loop-devices.js'
import { GiB, type Attachment, type AttachMode, type CreateVolumeRequest, type ListOptions, type Volume, type VolumePage } from '../model/volume.js'
import type { VolumeService } from './volume-service.js'

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
  /**
   * Attachments are per-boot state (loop devices do not survive a reboot), so
   * they live under /run, not beside the volumes: a detach must still work
   * when the volume directory's disk is full.
   */
  private readonly runDir: string
  private readonly host: string
  private readonly useLoopDevices: boolean
  private readonly log: Logger
  /** Serialises read-modify-write of one volume's record. */
  private readonly locks = new Map<string, Promise<void>>()

  constructor(options: LocalBackendOptions) {
    this.dir = options.dir
    this.runDir = runtimeDirFor(options.dir)
    this.host = options.host
    this.useLoopDevices = options.useLoopDevices
    this.log = options.logger.child({ backend: 'local' })
  }

  /** Creates the directory and takes it for this process (one daemon per directory). */
  static async open(options: LocalBackendOptions): Promise<LocalVolumeService> {
    await fs.mkdir(options.dir, { recursive: true, mode: 0o700 })
    await fs.mkdir(runtimeDirFor(options.dir), { recursive: true, mode: 0o700 })
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
      readOnly: false, createdAt: now, updatedAt: now,
    }
    const handle = await fs.open(this.imagePath(id), 'wx', 0o600)
    try {
      await handle.truncate(request.sizeGiB * GiB)
    } finally {
      await handle.close()
    }
    try {
      await this.save(record)
    } catch (err) {
      await fs.rm(this.imagePath(id), { force: true })
      throw err
    }
    this.log.info({ volumeId: id, name: request.name, sizeGiB: request.sizeGiB }, 'volume created')
    return toVolume(record, [])
  }

  async get(volumeId: string): Promise<Volume> {
    return this.volumeOf(await this.load(volumeId))
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
    const volumes = await Promise.all(page.map(async r => this.volumeOf(r)))
    const more = start + limit < records.length && last !== undefined
    return more ? { volumes, next: last.id } : { volumes }
  }

  async rename(volumeId: string, name: string): Promise<void> {
    checkName(name)
    await this.update(volumeId, record => { record.name = name })
  }

  async replace(volumeId: string, name: string, metadata: Record<string, string>): Promise<void> {
    checkName(name)
    await this.update(volumeId, record => {
      record.name = name
      record.metadata = { ...metadata }
    })
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
    await this.update(volumeId, async record => {
      // Cinder allows the flag only on a detached volume; keep the same rule.
      if ((await this.attachmentsOf(volumeId)).length > 0) fail('EBUSY', `volume ${volumeId} is attached; the read-only flag can only change while it is available`)
      record.readOnly = readOnly
    })
  }

  async extend(volumeId: string, newSizeGiB: number, _attached = false): Promise<void> {
    if (!Number.isInteger(newSizeGiB) || newSizeGiB < 1) fail('EINVAL', `volume size must be a whole number of GiB, got ${newSizeGiB}`)
    const record = await this.update(volumeId, r => {
      // Never shrinks: a smaller size is a no-op, as with Cinder.
      r.sizeGiB = Math.max(r.sizeGiB, newSizeGiB)
    })
    await fs.truncate(this.imagePath(record.id), newSizeGiB * GiB)
    for (const attachment of await this.attachmentsOf(volumeId)) {
      if (attachment.loop) await refreshLoopCapacity(attachment.devicePath)
    }
    this.log.info({ volumeId, sizeGiB: newSizeGiB }, 'volume extended')
  }

  async delete(volumeId: string): Promise<void> {
    await this.withLock(volumeId, async () => {
      await this.load(volumeId)
      if ((await this.attachmentsOf(volumeId)).length > 0) fail('EBUSY', `volume ${volumeId} is attached and cannot be deleted`)
      // Data first: on a full disk this is what frees the space.
      await fs.rm(this.imagePath(volumeId), { force: true })
      await fs.rm(this.recordPath(volumeId), { force: true })
    })
    this.log.info({ volumeId }, 'volume deleted')
  }

  async attach(volumeId: string, requested: AttachMode): Promise<Attachment> {
    const attachment = await this.withLock(volumeId, async () => {
      const record = await this.load(volumeId)
      // As in Cinder, a read-only volume attaches read-only whatever was asked.
      const mode: AttachMode = record.readOnly ? 'ro' : requested
      const file = this.imagePath(volumeId)
      const devicePath = this.useLoopDevices ? await attachLoop(file, mode === 'ro') : file
      const added: AttachmentRecord = { id: randomUUID(), mode, host: this.host, devicePath, loop: this.useLoopDevices }
      try {
        await this.saveAttachments(volumeId, [...await this.attachmentsOf(volumeId), added])
      } catch (err) {
        if (added.loop) await detachLoop(devicePath)
        throw err
      }
      return added
    })
    this.log.info({ volumeId, attachmentId: attachment.id, mode: attachment.mode, device: attachment.devicePath }, 'volume attached')
    return this.toAttachment(volumeId, attachment)
  }

  async detach(attachment: Attachment): Promise<void> {
    await this.withLock(attachment.volumeId, async () => {
      const all = await this.attachmentsOf(attachment.volumeId)
      const found = all.find(a => a.id === attachment.id)
      if (found === undefined) return
      if (found.loop) await detachLoop(found.devicePath)
      await this.saveAttachments(attachment.volumeId, all.filter(a => a !== found))
    })
    this.log.info({ volumeId: attachment.volumeId, attachmentId: attachment.id }, 'volume detached')
  }

  async listOwnAttachments(): Promise<Attachment[]> {
    const own: Attachment[] = []
    for (const entry of await fs.readdir(this.runDir)) {
      if (!entry.endsWith('.json')) continue
      const volumeId = entry.slice(0, -'.json'.length)
      for (const a of await this.attachmentsOf(volumeId)) {
        if (a.host === this.host) own.push(this.toAttachment(volumeId, a))
      }
    }
    // A loop device can outlive its record after a crash between losetup and saving the record.
    if (this.useLoopDevices) {
      for (const entry of await fs.readdir(this.dir)) {
        if (entry.endsWith('.img')) await this.detachUnrecordedLoops(entry.slice(0, -'.img'.length))
      }
    }
    return own
  }

  async capacity(): Promise<{ totalBytes: number, freeBytes: number }> {
    const s = await fs.statfs(this.dir)
    return { totalBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize }
  }

  async close(): Promise<void> {
    await fs.rm(path.join(this.dir, 'cinderfs.pid'), { force: true })
  }

  private async detachUnrecordedLoops(volumeId: string): Promise<void> {
    const known = new Set((await this.attachmentsOf(volumeId)).map(a => a.devicePath))
    for (const device of await loopsBackedBy(this.imagePath(volumeId))) {
      if (known.has(device)) continue
      this.log.warn({ volumeId, device }, 'detaching a loop device with no attachment record')
      await detachLoop(device)
    }
  }

  private async volumeOf(record: VolumeRecord): Promise<Volume> {
    return toVolume(record, await this.attachmentsOf(record.id))
  }

  private attachmentsPath(id: string): string {
    return path.join(this.runDir, `${checkId(id)}.json`)
  }

  private async attachmentsOf(id: string): Promise<AttachmentRecord[]> {
    const text = await fs.readFile(this.attachmentsPath(id), 'utf8').catch((err: unknown) => {
      if (isMissing(err)) return '[]'
      throw err
    })
    return JSON.parse(text) as AttachmentRecord[]
  }

  private async saveAttachments(id: string, attachments: AttachmentRecord[]): Promise<void> {
    if (attachments.length === 0) await fs.rm(this.attachmentsPath(id), { force: true })
    else await writeAtomically(this.attachmentsPath(id), JSON.stringify(attachments))
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

  private async save(record: VolumeRecord): Promise<void> {
    await writeAtomically(this.recordPath(record.id), JSON.stringify(record))
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

/** Write-then-rename, so a crash leaves the old record or the new one, never half of one. */
async function writeAtomically(target: string, text: string): Promise<void> {
  const temp = `${target}.tmp`
  try {
    const handle = await fs.open(temp, 'w', 0o600)
    try {
      await handle.writeFile(text)
      await handle.datasync()
    } finally {
      await handle.close()
    }
    await fs.rename(temp, target)
  } catch (err) {
    await fs.rm(temp, { force: true })
    throw err
  }
}

function runtimeDirFor(dir: string): string {
  const base = process.getuid?.() === 0 ? '/run/cinderfs' : path.join(os.tmpdir(), `cinderfs-${process.getuid?.() ?? 0}`)
  return path.join(base, `local-${createHash('sha256').update(path.resolve(dir)).digest('hex').slice(0, 16)}`)
}

function toVolume(record: VolumeRecord, attachments: AttachmentRecord[]): Volume {
  return {
    id: record.id,
    name: record.name,
    sizeGiB: record.sizeGiB,
    status: attachments.length > 0 ? 'in-use' : 'available',
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

