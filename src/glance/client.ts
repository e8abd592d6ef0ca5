import type { Logger } from 'pino'
import { CinderfsError } from '../errors/errors.js'
import type { HttpClient, HttpResponse } from '../openstack/http.js'
import { array, object, optionalString, stringMap, type Json } from '../openstack/json.js'
import type { EndpointFilter, KeystoneClient } from '../openstack/keystone.js'

/** The service types Glance is listed under. */
export const IMAGE_SERVICE_TYPES = ['image']

/** Zed's media type for image PATCH; application/json-patch+json gets a 415. */
const JSON_PATCH = 'application/openstack-images-v2.1-json-patch'

export interface GlanceOptions {
  keystone: KeystoneClient
  http: HttpClient
  logger: Logger
  endpoint: EndpointFilter
  /** Use this URL (`http://host:9292`) instead of the catalog's. */
  endpointOverride?: string
}

export interface GlanceLocation {
  url: string
  metadata: Record<string, string>
}

export interface GlanceImage {
  id: string
  status: string
  /** null while queued (no data yet). */
  size: number | null
  checksum: string | null
  osHashAlgo: string | null
  osHashValue: string | null
  diskFormat: string | null
  containerFormat: string | null
  /** Empty when Glance hides them (show_multiple_locations = False). */
  locations: GlanceLocation[]
}

/** What Glance records unverified when a location makes a queued image active. */
export interface ValidationData {
  checksum: string
  osHashAlgo: 'sha512'
  osHashValue: string
}

/**
 * Glance v2, the calls a migration needs: show an image, add a location, and
 * remove one. Every change is one json-patch PATCH, which Glance applies
 * whole or not at all.
 */
export class GlanceClient {
  readonly base: string
  private readonly options: GlanceOptions

  private constructor(options: GlanceOptions, base: string) {
    this.options = options
    this.base = base
  }

  /** Finds Glance in the catalog (or the override). Does no request to Glance itself. */
  static async connect(options: GlanceOptions): Promise<GlanceClient> {
    const url = options.endpointOverride ?? await options.keystone.endpoint(options.endpoint)
    const base = url.replace(/\/+$/, '').replace(/\/v2$/, '') + '/v2'
    options.logger.debug({ endpoint: base }, 'using Glance')
    return new GlanceClient(options, base)
  }

  /** ENOENT when Glance does not know the image (or it was deleted). */
  async image(imageId: string): Promise<GlanceImage> {
    const reply = await this.call('GET', `/images/${imageId}`, { imageId })
    return parseImage(reply.data)
  }

  /** Appends a location; `validation` only for a queued image (it turns active). */
  async addLocation(imageId: string, location: GlanceLocation, validation?: ValidationData): Promise<GlanceImage> {
    const value: Json = { url: location.url, metadata: location.metadata }
    if (validation !== undefined) {
      value.validation_data = { checksum: validation.checksum, os_hash_algo: validation.osHashAlgo, os_hash_value: validation.osHashValue }
    }
    const reply = await this.call('PATCH', `/images/${imageId}`, { imageId }, [{ op: 'add', path: '/locations/-', value }])
    return parseImage(reply.data)
  }

  /**
   * Removes the location at `index`. Glance deletes the data behind it (the
   * file, or the volume), and refuses to remove the last one.
   */
  async removeLocation(imageId: string, index: number): Promise<GlanceImage> {
    const reply = await this.call('PATCH', `/images/${imageId}`, { imageId }, [{ op: 'remove', path: `/locations/${index}` }])
    return parseImage(reply.data)
  }

  private async call(method: 'GET' | 'PATCH', path: string, context: Record<string, string>, patch?: Json[]): Promise<HttpResponse> {
    return await this.options.keystone.withToken(token => this.options.http.send({
      method,
      url: this.base + path,
      headers: patch === undefined ? { 'X-Auth-Token': token.id } : { 'X-Auth-Token': token.id, 'Content-Type': JSON_PATCH },
      body: patch,
      // a PATCH that reached Glance may have applied: never send it twice
      idempotent: method === 'GET',
      context,
    }))
  }
}

function nullableString(obj: Json, key: string): string | null {
  return optionalString(obj, key) ?? null
}

function parseImage(data: unknown): GlanceImage {
  const image = object(data, 'image')
  const id = optionalString(image, 'id')
  const status = optionalString(image, 'status')
  if (id === undefined || status === undefined) throw new CinderfsError('EIO', 'unexpected reply from Glance: an image without id or status')
  return {
    id,
    status,
    size: typeof image.size === 'number' ? image.size : null,
    checksum: nullableString(image, 'checksum'),
    osHashAlgo: nullableString(image, 'os_hash_algo'),
    osHashValue: nullableString(image, 'os_hash_value'),
    diskFormat: nullableString(image, 'disk_format'),
    containerFormat: nullableString(image, 'container_format'),
    locations: array(image.locations ?? [], 'locations').map(l => {
      const location = object(l, 'location')
      return { url: optionalString(location, 'url') ?? '', metadata: stringMap(location.metadata) }
    }),
  }
}
