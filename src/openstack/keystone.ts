import type { Logger } from 'pino'
import { CinderfsError, ConfigError } from '../errors/errors.js'
import { HttpClient, httpStatus, type Authenticator, type HttpResponse } from './http.js'
import { array, object, optionalString, string, type Json } from './json.js'

export type DomainRef = { id: string } | { name: string }
export type UserRef = { id: string } | { name: string, domain: DomainRef }
export type ProjectScope = { id: string } | { name: string, domain: DomainRef }

export type KeystoneCredentials =
  | { method: 'password', user: UserRef, password: string, project?: ProjectScope }
  /** The scope is the credential's own; a credential named rather than by id needs its user. */
  | { method: 'application_credential', id: string, secret: string }
  | { method: 'application_credential', name: string, user: UserRef, secret: string }
  | { method: 'token', token: string, project?: ProjectScope }

export type EndpointInterface = 'public' | 'internal' | 'admin'

export interface EndpointFilter {
  /** In order of preference: the official type first, then its aliases. */
  serviceTypes: string[]
  serviceName?: string
  interface: EndpointInterface
  region?: string
}

export interface KeystoneOptions {
  /** Keystone's URL, with or without the trailing /v3. */
  authUrl: string
  credentials: KeystoneCredentials
  http: HttpClient
  logger: Logger
  /** Re-authenticate this long before the token expires (keystoneauth's 120 s; at most a quarter of the token's lifetime). */
  reauthMarginSeconds?: number
  /** Clock, replaceable in tests. */
  now?: () => number
}

export interface CatalogEndpoint {
  interface: string
  region: string | undefined
  url: string
}

export interface CatalogService {
  type: string
  name: string | undefined
  endpoints: CatalogEndpoint[]
}

export interface Token {
  id: string
  issuedAt: Date
  expiresAt: Date
  projectId: string | undefined
  userId: string
  catalog: CatalogService[]
}

/**
 * A Keystone v3 session: one token shared by every request, renewed before
 * it expires and once after a 401. The token and the secrets never reach a
 * log line.
 */
export class KeystoneClient {
  private readonly tokensUrl: string
  private readonly credentials: KeystoneCredentials
  private readonly http: HttpClient
  private readonly logger: Logger
  private readonly marginMs: number
  private readonly now: () => number
  private current: Token | undefined
  private pending: Promise<Token> | undefined

  constructor(options: KeystoneOptions) {
    this.tokensUrl = identityV3(options.authUrl) + '/auth/tokens'
    this.credentials = options.credentials
    this.http = options.http
    this.logger = options.logger
    this.marginMs = (options.reauthMarginSeconds ?? 120) * 1000
    this.now = options.now ?? Date.now
  }

  /** A valid token, authenticating only when there is none or it is about to expire. */
  async token(): Promise<Token> {
    const token = this.current
    if (token !== undefined && token.expiresAt.getTime() - this.now() > this.marginOf(token)) return token
    this.pending ??= this.authenticate().finally(() => { this.pending = undefined })
    return await this.pending
  }

  /** Forget a token the server refused (401), so the next token() authenticates again. */
  invalidate(token: Token): void {
    if (this.current === token) this.current = undefined
  }

  /** X-Auth-Token for HttpClient: a valid token per attempt, renewed once after a 401. */
  authenticator(): Authenticator {
    return {
      headers: async () => ({ 'X-Auth-Token': (await this.token()).id }),
      refused: headers => {
        if (this.current?.id === headers['X-Auth-Token']) this.current = undefined
      },
    }
  }

  /**
   * Runs `call` with a token; on a 401 authenticates again and retries once,
   * as keystoneauth does, so a revoked or expired token is transparent.
   */
  async withToken<T>(call: (token: Token) => Promise<T>): Promise<T> {
    const token = await this.token()
    try {
      return await call(token)
    } catch (err) {
      if (httpStatus(err) !== 401) throw err
      this.logger.info({ userId: token.userId, requestId: requestIdOf(err) }, 'token refused, authenticating again')
      this.invalidate(token)
      return await call(await this.token())
    }
  }

  /** The URL of a service from the token's catalog. */
  async endpoint(filter: EndpointFilter): Promise<string> {
    return findEndpoint((await this.token()).catalog, filter)
  }

  /** A token of 60 s (a short-lived cloud) must not count as expiring from the moment it is issued. */
  private marginOf(token: Token): number {
    return Math.min(this.marginMs, (token.expiresAt.getTime() - token.issuedAt.getTime()) / 4)
  }

  private async authenticate(): Promise<Token> {
    let response: HttpResponse
    try {
      response = await this.http.send({ service: 'keystone', method: 'POST', url: this.tokensUrl, body: { auth: authBody(this.credentials) }, idempotent: true })
    } catch (err) {
      if (err instanceof CinderfsError && err.code === 'EACCES') {
        throw new CinderfsError('EACCES', `Keystone refused the credentials of ${describe(this.credentials)}: ${err.message}`, err.details)
      }
      throw err
    }
    const id = response.header('x-subject-token')
    if (id === undefined) throw new CinderfsError('EIO', 'Keystone answered without X-Subject-Token', { requestId: response.requestId })
    const token = parseToken(id, response.data)
    this.current = token
    this.logger.info({ userId: token.userId, projectId: token.projectId, expiresAt: token.expiresAt.toISOString(), requestId: response.requestId }, 'authenticated to Keystone')
    return token
  }
}

/** Normalises `http://host:5000`, `.../v3` and `.../v3/` to `.../v3`. */
function identityV3(authUrl: string): string {
  const base = authUrl.replace(/\/+$/, '')
  return /\/v3$/.test(base) ? base : `${base}/v3`
}

function findEndpoint(catalog: CatalogService[], filter: EndpointFilter): string {
  for (const type of filter.serviceTypes) {
    for (const service of catalog) {
      if (service.type !== type) continue
      if (filter.serviceName !== undefined && service.name !== filter.serviceName) continue
      const endpoint = service.endpoints.find(e => e.interface === filter.interface && (filter.region === undefined || e.region === filter.region))
      if (endpoint !== undefined) return endpoint.url
    }
  }
  const where = filter.region === undefined ? '' : ` in region ${filter.region}`
  throw new ConfigError(`no ${filter.interface} endpoint of type ${filter.serviceTypes.join('/')}${filter.serviceName === undefined ? '' : ` named ${filter.serviceName}`}${where} in the Keystone catalog`)
}

function authBody(credentials: KeystoneCredentials): Json {
  switch (credentials.method) {
    case 'password':
      return withScope({ methods: ['password'], password: { user: { ...userRef(credentials.user), password: credentials.password } } }, credentials.project)
    case 'token':
      return withScope({ methods: ['token'], token: { id: credentials.token } }, credentials.project)
    case 'application_credential': {
      const ref = 'id' in credentials
        ? { id: credentials.id }
        : { name: credentials.name, user: userRef(credentials.user) }
      return { identity: { methods: ['application_credential'], application_credential: { ...ref, secret: credentials.secret } } }
    }
  }
}

function withScope(identity: Json, project: ProjectScope | undefined): Json {
  if (project === undefined) return { identity }
  const scope = 'id' in project ? { id: project.id } : { name: project.name, domain: project.domain }
  return { identity, scope: { project: scope } }
}

function userRef(user: UserRef): Json {
  return 'id' in user ? { id: user.id } : { name: user.name, domain: user.domain }
}

/** Who is authenticating, for error lines: names and ids only, never a secret. */
function describe(credentials: KeystoneCredentials): string {
  if (credentials.method === 'token') return 'the given token'
  if (credentials.method === 'application_credential') return `application credential ${'id' in credentials ? credentials.id : credentials.name}`
  return `user ${'id' in credentials.user ? credentials.user.id : credentials.user.name}`
}

function requestIdOf(err: unknown): unknown {
  return err instanceof CinderfsError ? err.details.requestId : undefined
}

function parseToken(id: string, data: unknown): Token {
  const body = object(object(data, 'token reply').token, 'token')
  const project = body.project === undefined ? undefined : object(body.project, 'project')
  const expiresAt = new Date(string(body, 'expires_at'))
  const issued = optionalString(body, 'issued_at')
  return {
    id,
    issuedAt: issued === undefined ? new Date(Math.min(Date.now(), expiresAt.getTime())) : new Date(issued),
    expiresAt,
    projectId: project === undefined ? undefined : string(project, 'id'),
    userId: string(object(body.user, 'user'), 'id'),
    catalog: array(body.catalog ?? [], 'catalog').map(entry => {
      const service = object(entry, 'catalog entry')
      return {
        type: string(service, 'type'),
        name: optionalString(service, 'name'),
        endpoints: array(service.endpoints ?? [], 'endpoints').map(e => {
          const endpoint = object(e, 'endpoint')
          return { interface: string(endpoint, 'interface'), region: optionalString(endpoint, 'region_id') ?? optionalString(endpoint, 'region'), url: string(endpoint, 'url') }
        }),
      }
    }),
  }
}
