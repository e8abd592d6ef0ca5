import fs from 'node:fs'
import type { AttachMode, ConnectionInfo } from '../model/volume.js'
import { fail, withContext } from '../errors/errors.js'
import type { BlockDevice, Connector } from './connector.js'
import { loadIscsi, type IscsiLun, type IscsiPath } from './iscsi-binding.js'

export interface IscsiConnectorOptions {
  /** Our IQN, the `initiator` Cinder was given (defaultInitiatorName). */
  initiator: string
  /** Login, each command and each reconnect give up after this long. */
  timeoutSeconds?: number
}

/** Where a Cinder iscsi attachment points and how to log in, parsed from its connection info. */
export interface IscsiTarget {
  /** The primary path first, then the other multipath ones. */
  paths: IscsiPath[]
  chap?: { username: string, password: string }
}

/** Where open-iscsi keeps the host's IQN; os-brick sends that one to Cinder. */
export const INITIATOR_NAME_FILE = '/etc/iscsi/initiatorname.iscsi'

/**
 * The host's IQN from open-iscsi's file if there is one (the same identity a
 * kernel initiator on this host would use), else one derived from the host
 * name, stable across restarts so Cinder's exports keep matching.
 */
export function defaultInitiatorName(host: string, file = INITIATOR_NAME_FILE): string {
  let text = ''
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch {
    // no open-iscsi on this host: derive one
  }
  const configured = /^\s*InitiatorName\s*=\s*(\S+)\s*$/m.exec(text)?.[1]
  if (configured !== undefined && isIqn(configured)) return configured
  const name = host.toLowerCase().replace(/[^a-z0-9.-]+/g, '-').replace(/^[-.]+|[-.]+$/g, '') || 'host'
  return `iqn.2026-12.io.cinderfs:${name}`.slice(0, 223)
}

/** An iSCSI name as RFC 3720 spells them (iqn., eui., naa.), at most 223 bytes, no spaces. */
export function isIqn(name: string): boolean {
  return name.length <= 223 && /^(iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:\S+)?|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$/.test(name)
}

/**
 * Cinder's iSCSI targets (`driver_volume_type: iscsi`: LVM with tgt or LIO, most
 * arrays) through libiscsi in userspace, as QEMU reaches them: no kernel
 * initiator, iscsiadm, udev or root. Multipath lists become failover paths
 * within one session; CHAP credentials go to the addon and nowhere else.
 */
export class IscsiConnector implements Connector {
  readonly protocol = 'iscsi'

  constructor(private readonly options: IscsiConnectorOptions) {}

  async connect(info: ConnectionInfo, mode: AttachMode): Promise<BlockDevice> {
    if (info.driverVolumeType !== this.protocol) fail('EINVAL', `iscsi connector given ${info.driverVolumeType} connection info`)
    const target = parseIscsiConnectionInfo(info.data)
    const [first] = target.paths
    const where = first === undefined ? 'iscsi' : `iscsi:${first.portal}/${first.target}/${first.lun}`
    let lun: IscsiLun
    try {
      lun = await loadIscsi().connect({
        paths: target.paths,
        initiator: this.options.initiator,
        ...(target.chap === undefined ? {} : { username: target.chap.username, password: target.chap.password }),
        ...(this.options.timeoutSeconds === undefined ? {} : { timeoutSeconds: this.options.timeoutSeconds }),
        readOnly: mode === 'ro',
      })
    } catch (err) {
      throw withContext(err, `logging in to ${where} as ${this.options.initiator}`)
    }
    return new IscsiDevice(where, mode === 'rw', lun)
  }
}

/**
 * A LUN as a BlockDevice: byte ranges over whole-block SCSI commands. Aligned
 * I/O goes straight between the caller's buffer and the target in pieces of
 * at most the LUN's transfer limit; a write that starts or ends inside a
 * block reads that block, patches it and writes it back. Writes whose block
 * ranges overlap run one after another, so such a read-modify-write never
 * brings back bytes another write just wrote.
 */
export class IscsiDevice implements BlockDevice {
  private closed = false
  private readonly writing = new Set<{ first: number, end: number, done: Promise<void> }>()

  constructor(readonly path: string, readonly writable: boolean, private readonly lun: IscsiLun) {}

  get size(): number {
    return this.lun.size()
  }

  refreshSize(): Promise<number> {
    return this.lun.refreshSize()
  }

  async read(buffer: Buffer, offset: number, length: number, position: number): Promise<number> {
    checkRange(buffer, offset, length, position)
    const size = this.lun.size()
    if (position >= size || length === 0) return 0
    const n = Math.min(length, size - position)
    const block = this.lun.blockSize()
    if (position % block === 0 && n % block === 0) {
      await this.transfer('read', buffer, offset, n, position)
      return n
    }
    const start = position - (position % block)
    const end = Math.min(roundUp(position + n, block), size)
    const span = Buffer.allocUnsafe(end - start)
    await this.transfer('read', span, 0, span.length, start)
    span.copy(buffer, offset, position - start, position - start + n)
    return n
  }

  async write(buffer: Buffer, offset: number, length: number, position: number): Promise<number> {
    checkRange(buffer, offset, length, position)
    if (!this.writable) fail('EROFS', `${this.path} is attached read-only`)
    const size = this.lun.size()
    if (position + length > size) fail('EFBIG', `write of ${length} bytes at ${position} passes the end of ${this.path} (${size} bytes)`)
    if (length === 0) return 0
    const block = this.lun.blockSize()
    const start = position - (position % block)
    const end = roundUp(position + length, block)
    const release = await this.lockBlocks(start / block, end / block)
    try {
      if (start === position && end === position + length) {
        await this.transfer('write', buffer, offset, length, position)
        return length
      }
      // Read-modify-write of the partial first and last blocks.
      const span = Buffer.allocUnsafe(end - start)
      await this.transfer('read', span, 0, block, start)
      if (end - block > start) await this.transfer('read', span, span.length - block, block, end - block)
      buffer.copy(span, position - start, offset, offset + length)
      await this.transfer('write', span, 0, span.length, start)
      return length
    } finally {
      release()
    }
  }

  flush(): Promise<void> {
    return this.lun.flush()
  }

  async close(): Promise<void> {
    if (this.closed) fail('EBADF', `${this.path} is already closed`)
    this.closed = true
    await this.lun.close()
  }

  /** Whole blocks in pieces the target takes, all in flight at once. */
  private async transfer(op: 'read' | 'write', buffer: Buffer, offset: number, length: number, position: number): Promise<void> {
    const max = this.lun.maxTransfer()
    const pieces: Array<Promise<number>> = []
    for (let done = 0; done < length; done += max) {
      const n = Math.min(max, length - done)
      pieces.push(op === 'read' ? this.lun.read(buffer, offset + done, n, position + done) : this.lun.write(buffer, offset + done, n, position + done))
    }
    await Promise.all(pieces)
  }

  /** Waits until no write in flight touches blocks [first, end), then holds them. */
  private async lockBlocks(first: number, end: number): Promise<() => void> {
    for (;;) {
      const overlapping = [...this.writing].find(w => w.first < end && first < w.end)
      if (overlapping === undefined) break
      await overlapping.done
    }
    let release = (): void => {}
    const held = { first, end, done: new Promise<void>(resolve => { release = resolve }) }
    this.writing.add(held)
    return () => {
      this.writing.delete(held)
      release()
    }
  }
}

function roundUp(n: number, block: number): number {
  return Math.ceil(n / block) * block
}

function checkRange(buffer: Buffer, offset: number, length: number, position: number): void {
  if (![offset, length, position].every(Number.isSafeInteger) || offset < 0 || length < 0 || position < 0 || offset + length > buffer.length) {
    throw new RangeError(`bad range: offset ${offset}, length ${length}, position ${position}, buffer ${buffer.length}`)
  }
}

/** Cinder's iscsi connection info (`cinder/volume/targets/iscsi.py` _get_iscsi_properties). */
export function parseIscsiConnectionInfo(data: Record<string, unknown>): IscsiTarget {
  const primary = pathOf(data.target_portal, data.target_iqn, data.target_lun)
  const paths = [primary]
  const { target_portals: portals, target_iqns: iqns, target_luns: luns } = data
  if (portals !== undefined) {
    if (!Array.isArray(portals) || !Array.isArray(iqns) || !Array.isArray(luns) || portals.length !== iqns.length || portals.length !== luns.length) {
      fail('EINVAL', 'iscsi connection info: target_portals, target_iqns and target_luns must be lists of the same length')
    }
    for (let i = 0; i < portals.length; i++) {
      const path = pathOf(portals[i], iqns[i], luns[i])
      if (!paths.some(p => p.portal === path.portal && p.target === path.target && p.lun === path.lun)) paths.push(path)
    }
  }
  if (paths.length > 16) fail('EINVAL', `iscsi connection info: ${paths.length} paths (at most 16)`)
  const method: unknown = data.auth_method
  if (method === undefined || method === null || method === '' || method === 'None') return { paths }
  if (typeof method !== 'string' || method.toUpperCase() !== 'CHAP') fail('EINVAL', `iscsi connection info: auth_method ${JSON.stringify(method)} is not supported (only CHAP)`)
  const { auth_username: username, auth_password: password } = data
  if (typeof username !== 'string' || username === '' || typeof password !== 'string' || password === '') {
    fail('EINVAL', 'iscsi connection info: auth_method CHAP without auth_username and auth_password')
  }
  return { paths, chap: { username, password } }
}

function pathOf(portal: unknown, target: unknown, lun: unknown): IscsiPath {
  if (typeof portal !== 'string' || !/^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/.test(portal)) {
    fail('EINVAL', `iscsi connection info: bad target_portal ${JSON.stringify(portal)}`)
  }
  if (typeof target !== 'string' || !isIqn(target)) fail('EINVAL', `iscsi connection info: bad target_iqn ${JSON.stringify(target)}`)
  const n = typeof lun === 'string' && /^\d+$/.test(lun) ? Number(lun) : lun
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 16383) fail('EINVAL', `iscsi connection info: bad target_lun ${JSON.stringify(lun)}`)
  return { portal, target, lun: n }
}
