import fs from 'node:fs/promises'
import path from 'node:path'
import type { AttachMode, ConnectionInfo } from '../model/volume.js'
import { fail, withContext } from '../errors/errors.js'
import type { BlockDevice, Connector } from './connector.js'
import { loadRbd, type RbdCluster, type RbdImage } from './rbd-binding.js'

export interface RbdConnectorOptions {
  /** Where `<cluster>.client.<user>.keyring` is, as os-brick looks for it. Default /etc/ceph. */
  keyringDir?: string
  /** A ceph.conf to read before the monitors Cinder sends (optional). */
  conf?: string
  /** librados settings for every connection; they override the defaults below. */
  radosOptions?: Record<string, string>
}

/** Where a Cinder rbd attachment points, parsed from its connection info. */
export interface RbdTarget {
  pool: string
  image: string
  cluster: string
  user: string
  /** `host:port,...` for librados' mon_host; empty when only a conf file knows the monitors. */
  monHost: string
}

// librados waits 300 s for an unreachable monitor by default, far beyond any FUSE timeout.
const defaultRadosOptions: Record<string, string> = { client_mount_timeout: '30' }

/**
 * Cinder's RBD driver (`driver_volume_type: rbd`) through librbd in userspace, as
 * os-brick does without local attach: no kernel device. Cinder never sends the
 * cephx key (OSSN-0085), so it comes from the host's keyring. One librados
 * connection per cluster and user (each costs ~26 threads) is shared by every
 * attached volume and closed with the last.
 */
export class RbdConnector implements Connector {
  readonly protocol = 'rbd'
  private readonly keyringDir: string
  private readonly conf: string | undefined
  private readonly radosOptions: Record<string, string>
  private readonly clusters = new Map<string, SharedCluster>()

  constructor(options: RbdConnectorOptions = {}) {
    this.keyringDir = options.keyringDir ?? '/etc/ceph'
    this.conf = options.conf
    this.radosOptions = { ...defaultRadosOptions, ...options.radosOptions }
  }

  async connect(info: ConnectionInfo, mode: AttachMode): Promise<BlockDevice> {
    if (info.driverVolumeType !== this.protocol) fail('EINVAL', `rbd connector given ${info.driverVolumeType} connection info`)
    const target = parseRbdConnectionInfo(info.data)
    const shared = await this.acquire(target)
    try {
      const cluster = await shared.connecting
      const readOnly = mode === 'ro'
      const open = async (): Promise<RbdImage> => {
        try {
          return await cluster.open(target.pool, target.image, { readOnly })
        } catch (err) {
          throw withContext(err, `opening rbd image ${target.pool}/${target.image}`)
        }
      }
      return new RbdDevice(`rbd:${target.pool}/${target.image}`, !readOnly, await open(), open, () => this.release(shared))
    } catch (err) {
      await this.release(shared)
      throw err
    }
  }

  /** The key for `client.<user>` from `<keyringDir>/<cluster>.client.<user>.keyring`. */
  async readKey(cluster: string, user: string): Promise<string> {
    const file = path.join(this.keyringDir, `${cluster}.client.${user}.keyring`)
    let text: string
    try {
      text = await fs.readFile(file, 'utf8')
    } catch (err) {
      throw withContext(err, `reading the Ceph keyring ${file} (Cinder does not send the key)`)
    }
    const key = keyringKey(text, `client.${user}`)
    if (key === undefined) fail('EACCES', `Ceph keyring ${file} has no key for client.${user}`, { file })
    return key
  }

  private async acquire(target: RbdTarget): Promise<SharedCluster> {
    // Two clusters are both called `ceph` more often than not: the monitors are part of the identity.
    const id = `${target.cluster}\0${target.user}\0${target.monHost}`
    let shared = this.clusters.get(id)
    if (shared === undefined) {
      const connecting = this.connectCluster(target)
      const created: SharedCluster = { id, refs: 0, connecting }
      this.clusters.set(id, created)
      shared = created
      connecting.catch(() => {
        // A failed connection is not cached: the next attach tries again.
        if (this.clusters.get(id) === created) this.clusters.delete(id)
      })
    }
    shared.refs++
    try {
      await shared.connecting
    } catch (err) {
      shared.refs--
      throw err
    }
    return shared
  }

  private async release(shared: SharedCluster): Promise<void> {
    if (--shared.refs > 0) return
    this.clusters.delete(shared.id)
    await (await shared.connecting).shutdown()
  }

  private async connectCluster(target: RbdTarget): Promise<RbdCluster> {
    if (target.monHost === '' && this.conf === undefined) {
      fail('EINVAL', 'rbd connection info has no monitors and no ceph.conf is configured')
    }
    const key = await this.readKey(target.cluster, target.user)
    try {
      return await loadRbd().connect({
        user: target.user,
        cluster: target.cluster,
        key,
        ...(this.conf === undefined ? {} : { conf: this.conf }),
        ...(target.monHost === '' ? {} : { monHost: target.monHost }),
        options: this.radosOptions,
      })
    } catch (err) {
      throw withContext(err, `connecting to Ceph cluster ${target.cluster} at ${target.monHost || this.conf} as client.${target.user}`)
    }
  }
}

interface SharedCluster {
  readonly id: string
  /** Devices using it, and attaches waiting for it. */
  refs: number
  readonly connecting: Promise<RbdCluster>
}

class RbdDevice implements BlockDevice {
  private closed = false

  constructor(
    readonly path: string,
    readonly writable: boolean,
    private image: RbdImage,
    private readonly reopen: () => Promise<RbdImage>,
    private readonly release: () => Promise<void>,
  ) {}

  get size(): number {
    return this.image.size()
  }

  async refreshSize(): Promise<number> {
    if (this.writable) return await this.image.refreshSize()
    // A read-only handle has no header watch, so librbd never learns of an
    // extend: a fresh handle reads the header anew.
    const fresh = await this.reopen()
    if (this.closed) {
      await fresh.close()
      fail('EBADF', `${this.path} was closed during refreshSize`)
    }
    const stale = this.image
    this.image = fresh
    await stale.close()
    return fresh.size()
  }

  read(buffer: Buffer, offset: number, length: number, position: number): Promise<number> {
    return this.image.read(buffer, offset, length, position)
  }

  write(buffer: Buffer, offset: number, length: number, position: number): Promise<number> {
    return this.image.write(buffer, offset, length, position)
  }

  flush(): Promise<void> {
    return this.image.flush()
  }

  async close(): Promise<void> {
    // A second close must not release the shared connection a second time.
    if (this.closed) fail('EBADF', `${this.path} is already closed`)
    this.closed = true
    try {
      await this.image.close()
    } finally {
      await this.release()
    }
  }
}

/** Cinder's rbd connection info (`cinder/volume/drivers/rbd.py` initialize_connection). */
export function parseRbdConnectionInfo(data: Record<string, unknown>): RbdTarget {
  const { name, hosts = [], ports = [], auth_username: user, cluster_name: cluster = 'ceph' } = data
  const slash = typeof name === 'string' ? name.indexOf('/') : -1
  if (typeof name !== 'string' || slash <= 0 || slash === name.length - 1) {
    fail('EINVAL', `rbd connection info: name must be pool/image, got ${JSON.stringify(name)}`)
  }
  if (typeof user !== 'string' || user === '') fail('EINVAL', 'rbd connection info: auth_username is missing')
  if (typeof cluster !== 'string' || cluster === '') fail('EINVAL', 'rbd connection info: bad cluster_name')
  if (!Array.isArray(hosts) || !Array.isArray(ports) || hosts.length !== ports.length) {
    fail('EINVAL', 'rbd connection info: hosts and ports must be lists of the same length')
  }
  const monitors = hosts.map((host: unknown, i: number) => {
    const port: unknown = ports[i]
    if (typeof host !== 'string' || (typeof port !== 'string' && typeof port !== 'number')) {
      fail('EINVAL', `rbd connection info: bad monitor ${JSON.stringify(host)}:${JSON.stringify(port)}`)
    }
    return `${host.includes(':') ? `[${host}]` : host}:${port}`
  })
  return { pool: name.slice(0, slash), image: name.slice(slash + 1), cluster, user, monHost: monitors.join(',') }
}

/** The `key = ...` of `[entity]` in a Ceph keyring (INI). */
export function keyringKey(text: string, entity: string): string | undefined {
  let section = ''
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    const header = /^\[(.+)\]$/.exec(line)
    if (header !== null) section = header[1].trim()
    const key = /^key\s*=\s*(\S+)/.exec(line)
    if (key !== null && section === entity) return key[1]
  }
  return undefined
}
