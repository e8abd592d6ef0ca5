import { execFile, spawnSync } from 'node:child_process'
import fs from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import path from 'node:path'
import { promisify } from 'node:util'
import { pino, type Logger } from 'pino'
import type { Test } from 'tap'
import { parse as parseYaml, stringify as toYaml } from 'yaml'
import { CinderVolumeService } from '../../src/backends/cinder.js'
import type { ConnectionInfo } from '../../src/model/volume.js'
import { openStackSettings, type OpenStackSources, type OpenStackSettings } from '../../src/config/openstack.js'
import { HttpClient } from '../../src/openstack/http.js'
import { KeystoneClient } from '../../src/openstack/keystone.js'
import { needsLoopDevices, needsRoot } from './requirements.js'

const run = promisify(execFile)
const scripts = path.resolve(__dirname, '../../../scripts/openstack')

/** Where scripts/openstack/up keeps its state (clouds.yaml, volume files). */
export const STATE_DIR = process.env.CINDERFS_OS_STATE ?? '/var/tmp/cinderfs-openstack'
/** Every test volume's (and test project's) name starts with this, so leftovers can be found. */
export const TEST_PREFIX = 'cinderfs-test-'
/** The clouds up writes into STATE_DIR/clouds.yaml. */
export const CLOUDS = { admin: 'cinderfs-admin', glance: 'cinderfs-glance', member: 'cinderfs-member' } as const

/** Why the real-OpenStack tests cannot run here, or false. */
export function needsOpenStack(): string | false {
  if (needsRoot() !== false) return 'needs root: scripts/openstack/up installs Debian packages, and cinder-volume attaches loop devices'
  return needsLoopDevices()
}

/**
 * Starts the rig through scripts/openstack/up (installing it on a fresh
 * machine) and stops it when the test file ends, unless it was already
 * running before: then it is left as it was.
 */
export async function useOpenStack(t: Test): Promise<void> {
  if (rigRunning()) return
  const started = Date.now()
  await run(path.join(scripts, 'up'), [], { maxBuffer: 16 << 20 })
  t.comment(`OpenStack rig started in ${((Date.now() - started) / 1000).toFixed(1)} s`)
  t.teardown(async () => {
    await run(path.join(scripts, 'down'), [], { maxBuffer: 16 << 20 })
  })
}

/** True when scripts/openstack/up --check finds every service running. */
export function rigRunning(): boolean {
  return spawnSync(path.join(scripts, 'up'), ['--check'], { stdio: 'ignore' }).status === 0
}

/** Settings for one of the rig's clouds, read through the real clouds.yaml search path (./clouds.yaml). */
export function cloudSettings(cloud: string, overrides: OpenStackSources['overrides'] = {}): OpenStackSettings {
  return openStackSettings({ osCloud: cloud, cwd: STATE_DIR, home: '/nonexistent', env: {}, overrides })
}

/** A logger that keeps every line, so tests can look at what was logged. */
export function capturingLogger(): { logger: Logger, lines: string[] } {
  const lines: string[] = []
  const logger = pino({ level: process.env.CINDERFS_TEST_LOG ?? 'debug' }, { write: (line: string) => { lines.push(line) } })
  return { logger, lines }
}

export function testName(what: string): string {
  return `${TEST_PREFIX}${what}-${Math.random().toString(36).slice(2, 8)}`
}

/** Loop devices still backed by the rig's volume files. */
export function rigLoopDevices(): string[] {
  const out = spawnSync('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE'], { encoding: 'utf8' }).stdout
  return out.split('\n').filter(line => line.includes(path.join(STATE_DIR, 'volumes') + '/')).map(line => line.trim())
}

/** Raw Cinder calls as the rig's admin (quotas, volume types, leftover checks). */
export interface AdminCinder {
  send(method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown): Promise<unknown>
  /** The same, to Keystone (identity v3: projects, users, roles). */
  identity(method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown): Promise<Record<string, unknown>>
  projectId(cloud: string): Promise<string>
  /** Ids of the projects isolatedCloud made that still exist. */
  testProjects(): Promise<string[]>
  /**
   * Test volumes (and their attachments) left in any project; with `since`,
   * only those created since then (the rig may be shared with other runs).
   */
  leftovers(since?: Date): Promise<{ volumes: string[], attachments: string[] }>
  close(): void
}

export async function adminCinder(): Promise<AdminCinder> {
  const { logger } = capturingLogger()
  const http = new HttpClient({ logger })
  const keystone = (cloud: string): KeystoneClient => {
    const settings = cloudSettings(cloud)
    return new KeystoneClient({ authUrl: settings.authUrl, credentials: settings.credentials, http, logger })
  }
  const admin = keystone(CLOUDS.admin)
  const base = await admin.endpoint(cloudSettings(CLOUDS.admin).endpoint)
  const identityUrl = cloudSettings(CLOUDS.admin).authUrl.replace(/\/+$/, '')
  const identity: AdminCinder['identity'] = async (method, path, body) =>
    await admin.withToken(async token => (await http.send({ method, url: identityUrl + path, headers: { 'X-Auth-Token': token.id }, body, idempotent: method !== 'POST' })).data as Record<string, unknown>)
  const send: AdminCinder['send'] = async (method, path, body) => await admin.withToken(async token => (await http.send({
    method,
    url: base + path,
    headers: { 'X-Auth-Token': token.id, 'OpenStack-API-Version': 'volume 3.54' },
    body,
    idempotent: method !== 'POST',
  })).data)
  return {
    send,
    identity,
    projectId: async cloud => (await keystone(cloud).token()).projectId ?? '',
    testProjects: async () => ((await identity('GET', '/projects')).projects as { id: string, name: string }[]).filter(p => p.name.startsWith(TEST_PREFIX)).map(p => p.id),
    leftovers: async since => {
      const reply = await send('GET', `/volumes/detail?all_tenants=1&name~=${TEST_PREFIX}`) as { volumes: { id: string, created_at: string, attachments: { attachment_id: string }[] }[] }
      // Cinder's timestamps are UTC without a zone
      const left = reply.volumes.filter(v => since === undefined || new Date(`${v.created_at}Z`) >= since)
      return {
        volumes: left.map(v => v.id),
        attachments: left.flatMap(v => v.attachments.map(a => a.attachment_id)),
      }
    },
    close: () => { http.close() },
  }
}

/**
 * Sets up a test file that needs the rig: the reason to skip (or false),
 * the rig started before the first test, and an admin client for quotas,
 * volume types and leftover checks.
 */
export function openStackSuite(t: Test): { skip: string | false, admin: () => AdminCinder } {
  const skip = needsOpenStack()
  let admin: AdminCinder | undefined
  if (skip === false) {
    t.before(async () => {
      await useOpenStack(t)
      admin = await adminCinder()
    })
    t.teardown(() => { admin?.close() })
  }
  return {
    skip,
    admin: () => {
      if (admin === undefined) throw new Error('the rig is not up')
      return admin
    },
  }
}

/** A cinder backend for one of the rig's clouds, closed when the test ends; `lines` holds its logs. */
export function testService(t: Test, options: { cloud?: string, host?: string } & OpenStackSources['overrides'] = {}): { service: CinderVolumeService, lines: string[] } {
  const { logger, lines } = capturingLogger()
  const { cloud, host, ...overrides } = options
  const service = new CinderVolumeService({
    settings: cloudSettings(cloud ?? CLOUDS.glance, overrides),
    logger,
    host: host ?? 'cinderfs-test-host',
  })
  t.teardown(() => service.close())
  return { service, lines }
}

export function devicePath(info: ConnectionInfo): string {
  const device = info.data.device_path
  if (typeof device !== 'string') throw new Error('no device_path in connection_info')
  return device
}

/** Writes `text` at `position` of a device and syncs, as the data path would. */
export async function writeAt(device: string, text: string, position = 0): Promise<void> {
  const handle = await fs.open(device, 'r+')
  try {
    await handle.write(Buffer.from(text), 0, text.length, position)
    await handle.datasync()
  } finally {
    await handle.close()
  }
}

export async function readAt(device: string, length: number, position = 0): Promise<string> {
  const handle = await fs.open(device, 'r')
  try {
    const buffer = Buffer.alloc(length)
    await handle.read(buffer, 0, length, position)
    return buffer.toString()
  } finally {
    await handle.close()
  }
}

interface ListedVolume { id: string, name: string, attachments: { attachment_id: string, host_name: string | null }[] }

/** A project's volumes with their attachments, in one request (Cinder lists up to 1,000). */
async function projectVolumes(admin: AdminCinder, projectId: string): Promise<ListedVolume[]> {
  return ((await admin.send('GET', `/volumes/detail?all_tenants=1&project_id=${projectId}`)) as { volumes: ListedVolume[] }).volumes
}

/** Every attachment Cinder shows on a project's volumes, as `volume name: attachment id (host)`. */
export async function projectAttachments(admin: AdminCinder, projectId: string): Promise<string[]> {
  return (await projectVolumes(admin, projectId)).flatMap(v => v.attachments.map(a => `${v.name}: ${a.attachment_id} (${a.host_name ?? '?'})`))
}

/** A project of its own for one test, with the glance account in it (see isolatedCloud). */
export interface IsolatedCloud {
  /** The cloud's name in `dir`/clouds.yaml: run cinderfs there with --os-cloud this. */
  cloud: string
  /** Where that clouds.yaml is (the daemon's working directory). */
  dir: string
  projectId: string
  /** A backend for the project, as the daemon builds it. */
  service: CinderVolumeService
  /** Every attachment Cinder shows on the project's volumes, in one request, as `volume name: attachment id (host)`. */
  attachments(): Promise<string[]>
  /** Deletes the project's volumes (their attachments first) and the project; resolves with how many volumes were left. */
  remove(): Promise<number>
}

/**
 * A fresh project in which the glance account has its roles, and a
 * clouds.yaml in `dir` naming it: a mount over it lists only what the test
 * made, whatever else runs on the rig, and removing the project's volumes
 * cleans up after the test whatever names it used.
 */
export async function isolatedCloud(dir: string): Promise<IsolatedCloud> {
  const admin = await adminCinder()
  const idOf = async (collection: 'users' | 'roles', name: string): Promise<string> => {
    const found = (await admin.identity('GET', `/${collection}?name=${name}`))[collection] as { id: string }[]
    if (found[0] === undefined) throw new Error(`Keystone has no ${collection.slice(0, -1)} ${name}`)
    return found[0].id
  }
  const name = testName('project')
  const project = (await admin.identity('POST', '/projects', { project: { name, domain_id: 'default', description: 'cinderfs test (deleted when the test ends)' } })).project as { id: string }
  const glance = await idOf('users', 'glance')
  for (const role of ['admin', 'member']) await admin.identity('PUT', `/projects/${project.id}/users/${glance}/roles/${await idOf('roles', role)}`)

  const glanceCloud = (parseYaml(await fs.readFile(path.join(STATE_DIR, 'clouds.yaml'), 'utf8')) as { clouds: Record<string, { auth: Record<string, string> }> }).clouds[CLOUDS.glance]
  if (glanceCloud === undefined) throw new Error(`${STATE_DIR}/clouds.yaml has no cloud ${CLOUDS.glance}`)
  const cloud = 'cinderfs-test'
  await fs.writeFile(path.join(dir, 'clouds.yaml'), toYaml({ clouds: { [cloud]: { ...glanceCloud, auth: { ...glanceCloud.auth, project_name: name } } } }), { mode: 0o600 })
  const service = new CinderVolumeService({
    settings: openStackSettings({ osCloud: cloud, cwd: dir, home: '/nonexistent', env: {} }),
    logger: capturingLogger().logger,
    host: 'cinderfs-test-cleanup',
  })
  return {
    cloud, dir, projectId: project.id, service,
    attachments: async () => await projectAttachments(admin, project.id),
    remove: async () => {
      const left = await projectVolumes(admin, project.id)
      // All at once, then one listing a second until none is left: a poll per volume of hundreds loads cinder-api for minutes.
      // A volume Cinder will not delete yet (still creating, a reservation) goes through the backend's delete, which waits.
      await Promise.all(left.map(async volume => {
        for (const a of volume.attachments) {
          await service.detach({ id: a.attachment_id, volumeId: volume.id, mode: 'rw', connectionInfo: { driverVolumeType: '', data: {} } })
        }
        await admin.send('DELETE', `/volumes/${volume.id}`).catch(async () => { await service.delete(volume.id) })
      }))
      for (let waited = 0; (await projectVolumes(admin, project.id)).length > 0; waited += 1000) {
        if (waited > 300_000) throw new Error(`project ${name}: volumes still there 300 s after their delete`)
        await sleep(1000)
      }
      await admin.identity('DELETE', `/projects/${project.id}`)
      await service.close()
      admin.close()
      return left.length
    },
  }
}
