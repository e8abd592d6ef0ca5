import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { parse as parseYaml } from 'yaml'
import { ConfigError } from '../errors/errors.js'
import { BLOCK_STORAGE_TYPES } from '../openstack/cinder.js'
import type { TlsOptions } from '../openstack/http.js'
import type { DomainRef, EndpointFilter, EndpointInterface, KeystoneCredentials, ProjectScope, UserRef } from '../openstack/keystone.js'

/** Everything the cinder backend needs to reach Keystone and Cinder. */
export interface OpenStackSettings {
  /** Where the settings came from, for logs and error lines (never a secret). */
  source: string
  authUrl: string
  credentials: KeystoneCredentials
  endpoint: EndpointFilter
  endpointOverride?: string
  tls: TlsOptions
  volumeType?: string
  availabilityZone?: string
  stateTransitionTimeoutSeconds: number
  maxMicroversion?: string
  /** Multi-store Glance: the id of the cinder store (its glance-api.conf section), which location URLs name. */
  glanceStore?: string
}

/** Command-line choices; flags win over every file and variable. */
export interface OpenStackSources {
  /** --os-cloud NAME (else OS_CLOUD). */
  osCloud?: string
  /** --glance-config FILE: use exactly Glance's cinder store account. */
  glanceConfig?: string
  /** Section of a multi-store glance-api.conf (default: the first cinder backend). */
  glanceBackend?: string
  overrides?: Partial<Pick<OpenStackSettings, 'endpointOverride' | 'volumeType' | 'availabilityZone' | 'maxMicroversion' | 'stateTransitionTimeoutSeconds'>> & { region?: string, interface?: EndpointInterface }
  env?: NodeJS.ProcessEnv
  /** Where ./clouds.yaml and ~/.config/openstack are looked up (tests). */
  cwd?: string
  home?: string
}

const DEFAULT_TIMEOUT_SECONDS = 300

/**
 * Builds the settings from --glance-config, else a clouds.yaml cloud
 * (--os-cloud or OS_CLOUD), else the OS_* variables; flags override.
 * Any mistake is a ConfigError with one line that names the source.
 */
export function openStackSettings(sources: OpenStackSources = {}): OpenStackSettings {
  const env = sources.env ?? process.env
  const cloudName = sources.osCloud ?? nonEmpty(env.OS_CLOUD)
  let settings: OpenStackSettings
  if (sources.glanceConfig !== undefined) settings = fromGlanceConfig(sources.glanceConfig, sources.glanceBackend)
  else if (cloudName !== undefined) settings = fromCloud(cloudName, sources.cwd ?? process.cwd(), sources.home ?? os.homedir())
  else if (nonEmpty(env.OS_AUTH_URL) !== undefined) settings = fromCloudDict('OS_* variables', cloudFromEnv(env))
  else throw new ConfigError('no OpenStack credentials: give --os-cloud NAME, the OS_* variables or --glance-config FILE')
  const o = sources.overrides ?? {}
  return {
    ...settings,
    ...defined({ endpointOverride: o.endpointOverride, volumeType: o.volumeType, availabilityZone: o.availabilityZone, maxMicroversion: o.maxMicroversion, stateTransitionTimeoutSeconds: o.stateTransitionTimeoutSeconds }),
    endpoint: { ...settings.endpoint, ...defined({ region: o.region, interface: o.interface }) },
  }
}

// ---------------------------------------------------------------- clouds.yaml

function cloudsYamlPaths(cwd: string, home: string): string[] {
  return [path.join(cwd, 'clouds.yaml'), path.join(home, '.config/openstack/clouds.yaml'), '/etc/openstack/clouds.yaml']
}

function fromCloud(name: string, cwd: string, home: string): OpenStackSettings {
  const candidates = cloudsYamlPaths(cwd, home)
  for (const file of candidates) {
    let text: string
    try {
      text = fs.readFileSync(file, 'utf8')
    } catch {
      continue
    }
    let doc: unknown
    try {
      doc = parseYaml(text)
    } catch (err) {
      throw new ConfigError(`${file}: not valid YAML (${err instanceof Error ? err.message.split('\n')[0] : String(err)})`)
    }
    const cloud = dict(dict(doc).clouds)[name]
    if (cloud !== undefined) return fromCloudDict(`${file} cloud ${name}`, dict(cloud))
  }
  throw new ConfigError(`cloud ${name} is not in any clouds.yaml (looked in ${candidates.join(', ')})`)
}

/** The OS_* variables as the cloud dict clouds.yaml would hold. */
function cloudFromEnv(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const v = (...names: string[]): string | undefined => names.map(n => nonEmpty(env[n])).find(x => x !== undefined)
  return {
    auth_type: v('OS_AUTH_TYPE'),
    auth: {
      auth_url: v('OS_AUTH_URL'),
      username: v('OS_USERNAME'),
      user_id: v('OS_USER_ID'),
      password: v('OS_PASSWORD'),
      project_name: v('OS_PROJECT_NAME', 'OS_TENANT_NAME'),
      project_id: v('OS_PROJECT_ID', 'OS_TENANT_ID'),
      user_domain_name: v('OS_USER_DOMAIN_NAME'),
      user_domain_id: v('OS_USER_DOMAIN_ID'),
      project_domain_name: v('OS_PROJECT_DOMAIN_NAME'),
      project_domain_id: v('OS_PROJECT_DOMAIN_ID'),
      application_credential_id: v('OS_APPLICATION_CREDENTIAL_ID'),
      application_credential_name: v('OS_APPLICATION_CREDENTIAL_NAME'),
      application_credential_secret: v('OS_APPLICATION_CREDENTIAL_SECRET'),
      token: v('OS_TOKEN'),
    },
    region_name: v('OS_REGION_NAME'),
    interface: v('OS_INTERFACE', 'OS_ENDPOINT_TYPE'),
    cacert: v('OS_CACERT'),
    insecure: v('OS_INSECURE'),
    block_storage_api_version: v('OS_VOLUME_API_VERSION'),
    block_storage_endpoint_override: v('OS_BLOCK_STORAGE_ENDPOINT_OVERRIDE'),
  }
}

function fromCloudDict(source: string, cloud: Record<string, unknown>): OpenStackSettings {
  const auth = dict(cloud.auth)
  const get = (key: string): string | undefined => text(auth[key])
  const authUrl = get('auth_url')
  if (authUrl === undefined) throw new ConfigError(`${source}: auth_url is missing`)
  const version = text(cloud.block_storage_api_version) ?? text(cloud.volume_api_version)
  const insecure = cloud.verify === false || truthy(text(cloud.insecure))
  const cacert = text(cloud.cacert)
  return {
    source,
    authUrl,
    credentials: cloudCredentials(source, text(cloud.auth_type), get),
    endpoint: {
      serviceTypes: BLOCK_STORAGE_TYPES,
      interface: endpointInterface(source, text(cloud.interface) ?? 'public'),
      ...defined({ region: text(cloud.region_name) }),
    },
    tls: { insecure, ...defined({ caFile: cacert }) },
    stateTransitionTimeoutSeconds: DEFAULT_TIMEOUT_SECONDS,
    // "3" alone means no preference; "3.54" caps the microversion
    ...defined({ maxMicroversion: version?.includes('.') === true ? version : undefined, endpointOverride: text(cloud.block_storage_endpoint_override) }),
  }
}

function cloudCredentials(source: string, authType: string | undefined, get: (key: string) => string | undefined): KeystoneCredentials {
  const type = (authType ?? (get('application_credential_secret') !== undefined ? 'v3applicationcredential' : get('token') !== undefined && get('password') === undefined ? 'v3token' : 'password'))
    .replace(/^v3/, '').replace(/^applicationcredential$/, 'application_credential')
  const domain = (prefix: 'user' | 'project'): DomainRef => {
    const id = get(`${prefix}_domain_id`) ?? get('domain_id')
    if (id !== undefined) return { id }
    const name = get(`${prefix}_domain_name`) ?? get('domain_name')
    return name === undefined ? { id: 'default' } : { name }
  }
  const user = (): UserRef | undefined => {
    const id = get('user_id')
    if (id !== undefined) return { id }
    const name = get('username')
    return name === undefined ? undefined : { name, domain: domain('user') }
  }
  const project = (): ProjectScope | undefined => {
    const id = get('project_id')
    if (id !== undefined) return { id }
    const name = get('project_name')
    return name === undefined ? undefined : { name, domain: domain('project') }
  }
  const need = (key: string): string => {
    const value = get(key)
    if (value === undefined) throw new ConfigError(`${source}: ${key} is missing`)
    return value
  }
  switch (type) {
    case 'password': {
      const u = user()
      if (u === undefined) throw new ConfigError(`${source}: username or user_id is missing`)
      return { method: 'password', user: u, password: need('password'), ...defined({ project: project() }) }
    }
    case 'application_credential': {
      const secret = need('application_credential_secret')
      const id = get('application_credential_id')
      if (id !== undefined) return { method: 'application_credential', id, secret }
      const u = user()
      if (u === undefined) throw new ConfigError(`${source}: application_credential_id, or its name with a user, is missing`)
      return { method: 'application_credential', name: need('application_credential_name'), user: u, secret }
    }
    case 'token':
      return { method: 'token', token: need('token'), ...defined({ project: project() }) }
    default:
      throw new ConfigError(`${source}: auth_type ${authType ?? ''} is not supported (password, v3applicationcredential, v3token)`)
  }
}

// ----------------------------------------------------------- glance-api.conf

/** The cinder store options glance_store reads, from [glance_store] or a multi-store backend section. */
function fromGlanceConfig(file: string, backend: string | undefined): OpenStackSettings {
  let content: string
  try {
    content = fs.readFileSync(file, 'utf8')
  } catch (err) {
    throw new ConfigError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`)
  }
  const ini = parseIni(content)
  const section = backend ?? cinderBackendSection(ini)
  if (backend !== undefined && ini.get(backend) === undefined) throw new ConfigError(`${file}: no section [${backend}]`)
  const source = `${file} [${section}]`
  // multi-store: the backend's section, then [backend_defaults], then [glance_store]
  const get = (key: string): string | undefined => [section, 'backend_defaults', 'glance_store'].map(s => nonEmpty(ini.get(s)?.get(key))).find(x => x !== undefined)
  const authUrl = get('cinder_store_auth_address')
  const appId = get('cinder_store_application_credential_id')
  const appSecret = get('cinder_store_application_credential_secret')
  const need = (key: string): string => {
    const value = get(key)
    if (value === undefined) throw new ConfigError(`${source}: ${key} is not set; cinderfs needs Glance's cinder store service account (cinder_store_auth_address, _user_name, _password, _project_name)`)
    return value
  }
  if (authUrl === undefined) need('cinder_store_auth_address')
  const credentials: KeystoneCredentials = appId !== undefined && appSecret !== undefined
    ? { method: 'application_credential', id: appId, secret: appSecret }
    : {
        method: 'password',
        user: { name: need('cinder_store_user_name'), domain: { name: get('cinder_store_user_domain_name') ?? 'Default' } },
        password: need('cinder_store_password'),
        project: { name: need('cinder_store_project_name'), domain: { name: get('cinder_store_project_domain_name') ?? 'Default' } },
      }
  const [type = 'volumev3', name = '', iface = 'publicURL'] = (get('cinder_catalog_info') ?? 'volumev3::publicURL').split(':')
  const timeout = get('cinder_state_transition_timeout')
  const seconds = timeout === undefined ? DEFAULT_TIMEOUT_SECONDS : Number(timeout)
  if (!Number.isInteger(seconds) || seconds < 0) throw new ConfigError(`${source}: cinder_state_transition_timeout must be a whole number of seconds, not ${timeout ?? ''}`)
  const caFile = get('cinder_ca_certificates_file')
  return {
    source,
    authUrl: authUrl ?? '',
    credentials,
    endpoint: {
      serviceTypes: [type, ...BLOCK_STORAGE_TYPES.filter(t => t !== type)],
      interface: endpointInterface(source, iface.replace(/URL$/, '')),
      ...defined({ serviceName: nonEmpty(name), region: get('cinder_os_region_name') ?? get('os_region_name') }),
    },
    tls: { insecure: truthy(get('cinder_api_insecure')), ...defined({ caFile }) },
    stateTransitionTimeoutSeconds: seconds,
    ...defined({ volumeType: get('cinder_volume_type'), glanceStore: section === 'glance_store' ? undefined : section }),
  }
}

/** [glance_store] for a single store; else the first `name:cinder` of enabled_backends. */
function cinderBackendSection(ini: Map<string, Map<string, string>>): string {
  const enabled = ini.get('DEFAULT')?.get('enabled_backends')
  if (enabled === undefined) return 'glance_store'
  const cinder = enabled.split(',').map(e => e.trim().split(':')).filter(([, kind]) => kind?.trim() === 'cinder').map(([n]) => n?.trim() ?? '')
  const preferred = ini.get('glance_store')?.get('default_backend')
  return cinder.find(n => n === preferred) ?? cinder[0] ?? 'glance_store'
}

/** oslo.config's INI dialect: [section], key = value, # and ; comments, indented continuation lines. */
function parseIni(content: string): Map<string, Map<string, string>> {
  const sections = new Map<string, Map<string, string>>()
  let current: Map<string, string> | undefined
  let lastKey: string | undefined
  for (const raw of content.split(/\r?\n/)) {
    if (/^\s*([#;]|$)/.test(raw)) continue
    const header = /^\[([^\]]+)\]\s*$/.exec(raw)
    if (header !== null) {
      const name = header[1] ?? ''
      current = sections.get(name) ?? new Map<string, string>()
      sections.set(name, current)
      lastKey = undefined
      continue
    }
    if (/^\s/.test(raw) && current !== undefined && lastKey !== undefined) {
      current.set(lastKey, `${current.get(lastKey) ?? ''}\n${raw.trim()}`)
      continue
    }
    const pair = /^([^=:]+?)\s*[=:]\s*(.*)$/.exec(raw)
    if (pair === null || current === undefined) continue
    lastKey = pair[1] ?? ''
    current.set(lastKey, pair[2] ?? '')
  }
  return sections
}

// -------------------------------------------------------------------- helpers

function endpointInterface(source: string, value: string): EndpointInterface {
  if (value === 'public' || value === 'internal' || value === 'admin') return value
  throw new ConfigError(`${source}: interface ${value} is not public, internal or admin`)
}

function dict(value: unknown): Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? value as Record<string, unknown> : {}
}

function text(value: unknown): string | undefined {
  if (typeof value === 'number') return String(value)
  return typeof value === 'string' ? nonEmpty(value) : undefined
}

function nonEmpty(value: string | undefined): string | undefined {
  const trimmed = value?.trim()
  return trimmed === undefined || trimmed === '' ? undefined : trimmed
}

function truthy(value: string | undefined): boolean {
  return value !== undefined && /^(true|yes|on|1)$/i.test(value)
}

/** The entries whose value is not undefined (optional fields stay absent, not undefined). */
function defined<T extends Record<string, unknown>>(values: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(values).filter(([, v]) => v !== undefined)) as { [K in keyof T]?: Exclude<T[K], undefined> }
}
