import fs from 'node:fs'
import path from 'node:path'
import { pino } from 'pino'
import { HttpClient } from '../../src/openstack/http.js'
import { KeystoneClient } from '../../src/openstack/keystone.js'
import { cloudSettings, CLOUDS, STATE_DIR } from './openstack.js'

/** What scripts/openstack/up configures: the old library's store and the Cinder store. */
export const GLANCE = {
  url: 'http://127.0.0.1:9292',
  fileStore: 'file1',
  cinderStore: 'cinder1',
  config: path.join(STATE_DIR, 'etc/glance/glance-api.conf'),
  dataDir: path.join(STATE_DIR, 'glance/images'),
  /** The test driver appends {"volume", "source"} per clone. */
  cloneLog: path.join(STATE_DIR, 'log/clones.jsonl'),
} as const

/** The name of the volumes volumeFromImage makes. */
export const FROM_IMAGE = 'cinderfs-test-from-image'

export interface ImageRecord {
  id: string
  status: string
  size: number | null
  checksum: string | null
  os_hash_value: string | null
  locations: Array<{ url: string, metadata: Record<string, string> }>
}

/** Raw Glance v2 and Cinder calls as the rig's glance account, the way an operator's client makes them. */
export class GlanceApi {
  private readonly http = new HttpClient({ logger: pino({ level: 'silent' }) })
  private readonly keystone = new KeystoneClient({ authUrl: cloudSettings(CLOUDS.glance).authUrl, credentials: cloudSettings(CLOUDS.glance).credentials, http: this.http, logger: pino({ level: 'silent' }) })

  async token(): Promise<string> {
    return (await this.keystone.token()).id
  }

  async projectId(): Promise<string> {
    return (await this.keystone.token()).projectId ?? ''
  }

  private async fetch(url: string, init: RequestInit = {}): Promise<Response> {
    const headers = { 'X-Auth-Token': await this.token(), ...(init.headers as Record<string, string> | undefined) }
    return fetch(url, { ...init, headers })
  }

  /** Creates the image and uploads `file` into the file store, as `glance image-create --store file1` does. */
  async upload(name: string, file: string, diskFormat: string): Promise<string> {
    const created = await this.fetch(`${GLANCE.url}/v2/images`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name, disk_format: diskFormat, container_format: 'bare' }),
    })
    if (created.status !== 201) throw new Error(`image create: ${created.status} ${await created.text()}`)
    const { id } = await created.json() as { id: string }
    const put = await this.fetch(`${GLANCE.url}/v2/images/${id}/file`, {
      method: 'PUT',
      headers: { 'Content-Type': 'application/octet-stream', 'X-Image-Meta-Store': GLANCE.fileStore },
      body: fs.readFileSync(file),
    })
    if (put.status !== 204) throw new Error(`image upload: ${put.status} ${await put.text()}`)
    return id
  }

  async image(id: string): Promise<ImageRecord | undefined> {
    const reply = await this.fetch(`${GLANCE.url}/v2/images/${id}`)
    if (reply.status === 404) return undefined
    if (reply.status !== 200) throw new Error(`image show: ${reply.status}`)
    return await reply.json() as ImageRecord
  }

  /** The image's bytes as glance-api serves them (`glance image-download`). */
  async download(id: string): Promise<Buffer> {
    const reply = await this.fetch(`${GLANCE.url}/v2/images/${id}/file`)
    if (reply.status === 204) return Buffer.alloc(0)
    if (reply.status !== 200) throw new Error(`image download: ${reply.status} ${await reply.text()}`)
    return Buffer.from(await reply.arrayBuffer())
  }

  /**
   * Deletes the image, and with it (Glance does) the volumes of its cinder
   * locations: only once those are free, since glance-api detaches after a
   * download a moment after the last byte, and a delete of a volume still
   * attached fails with a 500.
   */
  async delete(id: string): Promise<void> {
    const base = `http://127.0.0.1:8776/v3/${await this.projectId()}`
    for (const location of (await this.image(id))?.locations ?? []) {
      const volumeId = /^cinder:\/\/(?:[^/]+\/)?([^/]+)$/.exec(location.url)?.[1]
      for (let i = 0; volumeId !== undefined && i < 240; i++) {
        const shown = await (await this.fetch(`${base}/volumes/${volumeId}`)).json() as { volume?: { status: string } }
        if (shown.volume === undefined || shown.volume.status === 'available') break
        await new Promise(resolve => setTimeout(resolve, 500))
      }
    }
    const reply = await this.fetch(`${GLANCE.url}/v2/images/${id}`, { method: 'DELETE' })
    if (reply.status !== 204 && reply.status !== 404) throw new Error(`image delete: ${reply.status}`)
  }

  /** `cinder create --image`: a new volume from the image; resolves with its id once it is available. */
  async volumeFromImage(imageId: string): Promise<string> {
    const base = `http://127.0.0.1:8776/v3/${await this.projectId()}`
    const created = await this.fetch(`${base}/volumes`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ volume: { size: 1, name: FROM_IMAGE, imageRef: imageId } }),
    })
    if (created.status !== 202) throw new Error(`volume create: ${created.status} ${await created.text()}`)
    const { volume } = await created.json() as { volume: { id: string } }
    for (let i = 0; i < 600; i++) {
      const shown = await (await this.fetch(`${base}/volumes/${volume.id}`)).json() as { volume: { status: string } }
      if (shown.volume.status === 'available') return volume.id
      if (shown.volume.status.startsWith('error')) throw new Error(`volume from image: status ${shown.volume.status}`)
      await new Promise(resolve => setTimeout(resolve, 500))
    }
    throw new Error('volume from image: not available after 300 s')
  }

  close(): void {
    this.http.close()
  }
}
