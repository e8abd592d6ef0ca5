import fs from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import axios, { isAxiosError, type AxiosInstance, type Method } from 'axios'
import type { Logger } from 'pino'
import { CinderfsError, ConfigError, type ErrnoName } from '../errors/errors.js'
import { currentRetryWindow } from '../outage/retry-window.js'

export interface TlsOptions {
  /** PEM bundle to trust instead of Node's built-in CAs. */
  caFile?: string
  /** Skip certificate verification (operators' `insecure: true`). */
  insecure?: boolean
}

export interface HttpOptions {
  logger: Logger
  tls?: TlsOptions
  /** Per request, milliseconds. */
  timeoutMs?: number
  /** Extra attempts after a transient failure, outside a retry window (see withinRetryWindow). */
  retries?: number
  /** First retry delay; doubles per attempt. */
  retryDelayMs?: number
  /** Told of every attempt's outcome (metrics); never sees headers or bodies. */
  observe?: (call: { service: string, method: string, status: number | 'error', seconds: number }) => void
}

export interface HttpRequest {
  method: Method
  url: string
  /** Which OpenStack service answers (keystone, cinder, glance): a metric label. */
  service?: string
  headers?: Record<string, string>
  body?: unknown
  /** Safe to send twice. Only then are connection errors and 5xx retried: a create must never run twice. */
  idempotent: boolean
  /** Ids (volume, attachment) that log lines about this request carry. */
  context?: Record<string, string>
  /** Non-2xx statuses that are answers, not errors (300 from version discovery). */
  accept?: number[]
  /** Authenticates each attempt afresh; a 401 renews the credentials once and retries. */
  auth?: Authenticator
}

/**
 * Where a request's authentication headers come from. Asked before every
 * attempt, so a retry after minutes of 5xx never carries a token that
 * expired meanwhile.
 */
export interface Authenticator {
  headers(): Promise<Record<string, string>>
  /** The server answered 401 to these headers: forget them, so the next headers() authenticates again. */
  refused(headers: Record<string, string>): void
}

export interface HttpResponse {
  status: number
  data: unknown
  requestId: string | undefined
  header(name: string): string | undefined
}

const RETRY_DELAY_CAP_MS = 5000
/** Logged (warn) before each retry; tests wait for it. */
export const RETRYING_MESSAGE = 'openstack request failed, retrying'
/** Logged (info) when a 401 makes the request authenticate again. */
export const REAUTHENTICATING_MESSAGE = 'credentials refused (401), authenticating again'
/** Connection failures that prove the request never reached the server: safe to send again even when a second run would do harm. */
const NOT_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH'])

/**
 * Connections to one service: at most 16 at a time, at most 2 kept idle. An
 * eventlet cinder-api serves each keep-alive connection with one green
 * thread of a pool of 100 (wsgi_default_pool_size) until the client closes
 * it or client_socket_timeout (900 s) ends it: a burst of a few hundred
 * requests on as many sockets left 100 of them idle and the server unable
 * to accept the rest, so every client of that cinder-api hung.
 */
const agentOptions = { keepAlive: true, maxSockets: 16, maxFreeSockets: 2 }

/**
 * The one HTTP path to Keystone and Cinder: keep-alive connections, TLS
 * options, retries of idempotent requests, a debug line per request with
 * its x-openstack-request-id, and the HTTP → errno mapping. Headers and
 * bodies are never logged (they carry passwords and tokens).
 */
export class HttpClient {
  private readonly axios: AxiosInstance
  private readonly httpAgent = new http.Agent(agentOptions)
  private readonly httpsAgent: https.Agent
  private readonly logger: Logger
  private readonly retries: number
  private readonly retryDelayMs: number
  private readonly observe: HttpOptions['observe']

  constructor(options: HttpOptions) {
    this.logger = options.logger
    this.retries = options.retries ?? 3
    this.retryDelayMs = options.retryDelayMs ?? 250
    this.observe = options.observe
    this.httpsAgent = new https.Agent({
      ...agentOptions,
      ca: readCa(options.tls?.caFile),
      rejectUnauthorized: options.tls?.insecure !== true,
    })
    this.axios = axios.create({
      timeout: options.timeoutMs ?? 120_000,
      httpAgent: this.httpAgent,
      httpsAgent: this.httpsAgent,
      validateStatus: () => true,
      maxRedirects: 0,
    })
  }

  /**
   * Sends, retrying transient failures: a connection that was refused (the
   * request never left, so even a create may go again), and for idempotent
   * requests any connection error or 5xx. Inside a retry window the retries
   * go on until the window is used up; outside one, `retries` times.
   */
  async send(request: HttpRequest): Promise<HttpResponse> {
    const windowMs = currentRetryWindow()
    const deadline = windowMs === undefined ? undefined : Date.now() + windowMs
    const mayRetry = (attempt: number): boolean => deadline === undefined
      ? attempt < this.retries
      : Date.now() + this.delayOf(attempt) < deadline
    let renewed = false
    for (let attempt = 0; ; attempt++) {
      const started = Date.now()
      const auth = await request.auth?.headers() ?? {}
      let response: HttpResponse
      try {
        response = await this.once(request, auth)
      } catch (err) {
        this.observed(request, 'error', started)
        const failure = connectionError(request, err)
        const code = failure.details.code
        // One retry whatever the window: a keep-alive socket the server had just closed is the common case.
        if (!((request.idempotent || (typeof code === 'string' && NOT_SENT.has(code))) && (attempt === 0 || mayRetry(attempt)))) throw failure
        await this.pause(request, attempt, failure)
        continue
      }
      this.observed(request, response.status, started)
      const ok = (response.status >= 200 && response.status < 300) || request.accept?.includes(response.status) === true
      const line = { ...request.context, method: request.method, path: pathOf(request.url), status: response.status, ms: Date.now() - started, requestId: response.requestId }
      if (ok) {
        this.logger.debug(line, 'openstack request')
        return response
      }
      if (response.status === 401 && request.auth !== undefined && !renewed) {
        // An expired or revoked token: renew once (keystoneauth does the same); a second 401 is an answer.
        renewed = true
        request.auth.refused(auth)
        this.logger.info(line, REAUTHENTICATING_MESSAGE)
        attempt--
        continue
      }
      const failure = responseError(request, response)
      if (response.status >= 500 && request.idempotent && mayRetry(attempt)) {
        await this.pause(request, attempt, failure)
        continue
      }
      this.logger.debug({ ...line, err: failure }, 'openstack request failed')
      throw failure
    }
  }

  close(): void {
    this.httpAgent.destroy()
    this.httpsAgent.destroy()
  }

  private observed(request: HttpRequest, status: number | 'error', started: number): void {
    this.observe?.({ service: request.service ?? 'openstack', method: request.method.toUpperCase(), status, seconds: (Date.now() - started) / 1000 })
  }

  private async once(request: HttpRequest, auth: Record<string, string>): Promise<HttpResponse> {
    const reply = await this.axios.request({
      method: request.method,
      url: request.url,
      headers: { Accept: 'application/json', ...request.headers, ...auth },
      data: request.body,
    })
    const header = (name: string): string | undefined => {
      const value: unknown = reply.headers[name.toLowerCase()]
      return typeof value === 'string' ? value : undefined
    }
    return { status: reply.status, data: reply.data, requestId: header('x-openstack-request-id'), header }
  }

  private delayOf(attempt: number): number {
    return Math.min(this.retryDelayMs * 2 ** attempt, RETRY_DELAY_CAP_MS)
  }

  private async pause(request: HttpRequest, attempt: number, failure: CinderfsError): Promise<void> {
    const delayMs = this.delayOf(attempt)
    this.logger.warn({ ...request.context, method: request.method, path: pathOf(request.url), requestId: failure.details.requestId, attempt: attempt + 1, delayMs, err: failure.message }, RETRYING_MESSAGE)
    await new Promise(resolve => setTimeout(resolve, delayMs))
  }
}

/** The HTTP status behind an error from HttpClient, if there was a response. */
export function httpStatus(err: unknown): number | undefined {
  if (!(err instanceof CinderfsError)) return undefined
  const status = err.details.status
  return typeof status === 'number' ? status : undefined
}

function readCa(caFile: string | undefined): Buffer | undefined {
  if (caFile === undefined) return undefined
  try {
    return fs.readFileSync(caFile)
  } catch (err) {
    throw new ConfigError(`cannot read the CA bundle ${caFile}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`)
  }
}

function pathOf(url: string): string {
  try {
    return new URL(url).pathname
  } catch {
    return url
  }
}

// Cinder status conflicts come back as 400 with the status in the text
// ("status must be available or downloading to reserve, but the current status is in-use").
const STATUS_CONFLICT = /status must be|must be available|current status|is attached|in-use|is in use|still has|is busy|already/i
const QUOTA = /quota|limit exceeded|exceeds allowed/i

/** The single HTTP → errno mapping. */
function errnoFor(status: number, message: string): ErrnoName {
  if (status === 401 || status === 403) return 'EACCES'
  if (status === 404) return 'ENOENT'
  if (status === 413 || (status === 400 && QUOTA.test(message))) return 'EDQUOT'
  if (status === 409 || (status === 400 && STATUS_CONFLICT.test(message))) return 'EBUSY'
  return 'EIO'
}

function responseError(request: HttpRequest, response: HttpResponse): CinderfsError {
  const message = bodyMessage(response.data) ?? `HTTP ${response.status}`
  return new CinderfsError(errnoFor(response.status, message),
    `${request.method.toUpperCase()} ${pathOf(request.url)}: ${response.status} ${message}`,
    { ...request.context, status: response.status, requestId: response.requestId })
}

function connectionError(request: HttpRequest, err: unknown): CinderfsError {
  // Never keep the AxiosError as cause: its config holds the token and body.
  const code = isAxiosError(err) ? err.code : undefined
  const reason = code ?? (err instanceof Error ? err.message : String(err))
  return new CinderfsError('EIO', `${request.method.toUpperCase()} ${pathOf(request.url)}: ${reason}`, { ...request.context, code })
}

/** Cinder says {"badRequest": {"message": ...}}, Keystone {"error": {"message": ...}}, Glance {"message": ...}. */
function bodyMessage(data: unknown): string | undefined {
  if (typeof data === 'string') return data.trim().slice(0, 300) || undefined
  if (typeof data !== 'object' || data === null) return undefined
  if ('message' in data && typeof data.message === 'string') return data.message.replace(/<br \/>/g, ' ').replace(/\s+/g, ' ').trim().slice(0, 300)
  for (const value of Object.values(data)) {
    if (typeof value === 'object' && value !== null && 'message' in value && typeof value.message === 'string') return value.message
  }
  return undefined
}
