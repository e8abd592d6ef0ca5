import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { pino } from 'pino'
import { AttachmentManager } from '../../src/attachments/attachment-manager.js'
import { LocalVolumeService } from '../../src/backends/local.js'
import type { VolumeService } from '../../src/backends/volume-service.js'
import { BlockCache } from '../../src/cache/block-cache.js'
import { LocalConnector } from '../../src/connectors/local.js'
import { ConnectorRegistry } from '../../src/connectors/registry.js'
import { CinderfsError } from '../../src/errors/errors.js'
import { ImageFs } from '../../src/fs/image-fs.js'
import { Janitor } from '../../src/janitor/janitor.js'
import { ImageLifecycle } from '../../src/image/lifecycle.js'
import { ImageStore } from '../../src/store/image-store.js'
import { FakeClock } from './fake-clock.js'

type Method = Exclude<keyof VolumeService, 'kind'>

/**
 * A VolumeService that counts the calls made to the one it wraps (a call
 * more per image is a round trip more on a real cloud), and fails a method
 * on demand.
 */
export class CountingService implements VolumeService {
  readonly kind: string
  readonly calls = new Map<string, number>()
  private readonly failing = new Map<string, CinderfsError>()

  constructor(private readonly inner: VolumeService) {
    this.kind = inner.kind
  }

  /** Calls since the last reset, by method, without the zeros. */
  counts(): Record<string, number> {
    return Object.fromEntries([...this.calls].filter(([, n]) => n > 0).sort(([a], [b]) => a.localeCompare(b)))
  }

  reset(): void {
    this.calls.clear()
  }

  /** The next calls of `method` fail with `error` until healed. */
  failNext(method: Method, error: CinderfsError): void {
    this.failing.set(method, error)
  }

  heal(): void {
    this.failing.clear()
  }

  private async call<T>(method: Method, work: () => Promise<T>): Promise<T> {
    this.calls.set(method, (this.calls.get(method) ?? 0) + 1)
    const failure = this.failing.get(method)
    if (failure !== undefined) throw failure
    return work()
  }

  create: VolumeService['create'] = async r => this.call('create', async () => this.inner.create(r))
  get: VolumeService['get'] = async id => this.call('get', async () => this.inner.get(id))
  list: VolumeService['list'] = async o => this.call('list', async () => this.inner.list(o))
  rename: VolumeService['rename'] = async (id, name) => this.call('rename', async () => this.inner.rename(id, name))
  replace: VolumeService['replace'] = async (id, name, m) => this.call('replace', async () => this.inner.replace(id, name, m))
  updateMetadata: VolumeService['updateMetadata'] = async (id, c) => this.call('updateMetadata', async () => this.inner.updateMetadata(id, c))
  setReadOnly: VolumeService['setReadOnly'] = async (id, ro) => this.call('setReadOnly', async () => this.inner.setReadOnly(id, ro))
  extend: VolumeService['extend'] = async (id, size, attached) => this.call('extend', async () => this.inner.extend(id, size, attached))
  delete: VolumeService['delete'] = async id => this.call('delete', async () => this.inner.delete(id))
  attach: VolumeService['attach'] = async (id, mode) => this.call('attach', async () => this.inner.attach(id, mode))
  detach: VolumeService['detach'] = async a => this.call('detach', async () => this.inner.detach(a))
  listOwnAttachments: VolumeService['listOwnAttachments'] = async () => this.call('listOwnAttachments', async () => this.inner.listOwnAttachments())
  capacity: VolumeService['capacity'] = async () => this.call('capacity', async () => this.inner.capacity())
  close: VolumeService['close'] = async () => this.inner.close()
}

export interface Core {
  fs: ImageFs
  service: CountingService
  /** The backend itself, uncounted, for looking at volumes. */
  local: LocalVolumeService
  attachments: AttachmentManager
  lifecycle: ImageLifecycle
  store: ImageStore
  janitor: Janitor
  clock: FakeClock
  dir: string
}

interface TapLike {
  teardown(fn: () => unknown): void
}

export const sealDelayMs = 10_000

/**
 * The whole core of a mount (fs → lifecycle → store / upload / cache →
 * attachments → connector) over the embedded backend on plain files: no
 * FUSE, no root, no loop devices. `dir` reuses a backend directory (a
 * restart after a simulated crash).
 */
export async function core(t: TapLike, options: { dir?: string, host?: string } = {}): Promise<Core> {
  const dir = options.dir ?? await fs.mkdtemp(path.join(os.tmpdir(), 'cinderfs-core-'))
  const logger = pino({ level: 'silent' })
  const host = options.host ?? 'core-test'
  const local = await LocalVolumeService.open({ dir, host, useLoopDevices: false, logger })
  const service = new CountingService(local)
  const clock = new FakeClock()
  const janitor = new Janitor({ logger })
  const attachments = new AttachmentManager({ service, connectors: new ConnectorRegistry([new LocalConnector({ allowRegularFiles: true })]), idleDetachMs: 60_000, logger, janitor })
  const cache = new BlockCache({ budgetBytes: 16 * 1024 * 1024, blockSize: 1024 * 1024, readaheadBytes: 4 * 1024 * 1024 })
  const owner = { uid: 0, gid: 0 }
  const store = new ImageStore({ service, logger, listTtlMs: 60_000, owner, clock })
  const lifecycle = new ImageLifecycle({ service, store, attachments, cache, logger, imageOwner: 'test-owner', host, ...owner, janitor, apiRetryWindowMs: 60_000, clock })
  const imageFs = new ImageFs({
    service, store, lifecycle, attachments, cache, logger, clock, readOnly: false,
    writeBuffer: 64 * 1024 * 1024, sealDelayMs, ...owner, apiRetryWindowMs: 60_000,
  })
  t.teardown(async () => {
    // Also ends what a simulated crash left running in this process (hash workers of an open upload).
    await imageFs.shutdown().catch(() => undefined)
    await attachments.detachAll()
    await local.close()
    if (options.dir === undefined) await fs.rm(dir, { recursive: true, force: true })
  })
  return { fs: imageFs, service, local, attachments, lifecycle, store, janitor, clock, dir }
}
