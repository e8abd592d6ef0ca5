import { errorCode, errorMessage, CinderfsError } from '../errors/errors.js'
import type { Logger } from '../log/logger.js'
import { currentRetryWindow, withinRetryWindow } from '../outage/retry-window.js'

/** Logged (warn) when a cleanup step fails and is kept for a later attempt; tests wait for it. */
export const CLEANUP_DEFERRED_MESSAGE = 'cleanup failed; will retry'
/** Logged (info) when a kept cleanup step finally succeeds. */
export const CLEANUP_DONE_MESSAGE = 'deferred cleanup done'
/** Logged (error) at stop, once per step still pending: the next start's recovery does it. */
export const CLEANUP_LEFT_MESSAGE = 'cleanup not done; left for recovery at the next start'

/** One cleanup step: what it is for the logs, and one attempt at it (it throws when it must be tried again). */
export interface CleanupStep {
  volumeId: string
  /** The call, for logs: `detach`, `delete volume`, `seal`, `update metadata`. */
  call: string
  attachmentId?: string
  /** A prerequisite of the volume's other steps (a detach: a delete or seal fails while attached): it runs before them. */
  first?: boolean
  run(): Promise<void>
}

export interface PendingCleanup {
  volumeId: string
  call: string
  attachmentId?: string
  attempts: number
  since: Date
  lastError: string
}

export interface JanitorOptions {
  logger: Logger
  /** First delay before a failed step is tried again; doubles per failure. */
  firstDelayMs?: number
  /** The longest delay between two attempts. */
  maxDelayMs?: number
  /** At stop, how long steps Cinder refused (a 4xx answer) are still tried: a refusal rarely ends within the outage window. */
  refusedGraceMs?: number
}

interface Entry extends PendingCleanup {
  step: CleanupStep
  /** The last attempt was answered with a refusal (4xx), not cut off by an outage. */
  refused: boolean
}

/**
 * Cleanup steps that failed (a detach, a delete, a seal while Cinder was
 * down or refused) are kept here and tried again with backoff while the
 * daemon runs. Steps of one volume run in the order they were deferred (a
 * volume's detach before its delete, before its seal). Nothing here needs a
 * journal of its own: every step repeats work whose intent Cinder already
 * records (the attachment's host, the volume's `cinderfs_state` and host
 * metadata), so what a crash or a stop leaves pending, the next start's
 * recovery finds and does.
 */
export class Janitor {
  /** Per volume, the steps still to do, oldest first. */
  private readonly pending = new Map<string, Entry[]>()
  private readonly timers = new Map<string, NodeJS.Timeout>()
  private readonly running = new Map<string, Promise<void>>()
  private readonly log: Logger
  private readonly firstDelayMs: number
  private readonly maxDelayMs: number
  private readonly refusedGraceMs: number
  private stopped = false

  constructor(options: JanitorOptions) {
    this.log = options.logger.child({ component: 'janitor' })
    this.firstDelayMs = options.firstDelayMs ?? 1000
    this.maxDelayMs = options.maxDelayMs ?? 30_000
    this.refusedGraceMs = options.refusedGraceMs ?? 5000
  }

  /**
   * Tries the step now (within the caller's retry window, if it has one);
   * when it fails (or an earlier step of the same volume is still pending)
   * keeps it for later. Never throws: the caller's own error is what its
   * user needs to see. Resolves true when the step is done.
   */
  async attempt(step: CleanupStep): Promise<boolean> {
    // A prerequisite, or a step the janitor's own run of this volume needs (a delete's detach), is tried now.
    if (this.pending.has(step.volumeId) && !this.running.has(step.volumeId) && step.first !== true) {
      this.keep(step, 'an earlier cleanup of this volume is pending')
      return false
    }
    try {
      await (currentRetryWindow() === undefined ? once(step) : step.run())
      return true
    } catch (err) {
      this.keep(step, err)
      return false
    }
  }

  /** How many steps are waiting (the pending-cleanups gauge). */
  get size(): number {
    let n = 0
    for (const entries of this.pending.values()) n += entries.length
    return n
  }

  /** What is still to do, for logs and metrics. */
  list(): PendingCleanup[] {
    return [...this.pending.values()].flat().map(({ step: _step, refused: _refused, ...rest }) => ({ ...rest }))
  }

  /** Tries a volume's pending steps now (a new attach of it must not race its old attachment's delete). */
  async runNow(volumeId: string): Promise<void> {
    if (!this.pending.has(volumeId)) return
    this.unschedule(volumeId)
    await this.run(volumeId)
  }

  /**
   * At stop: keeps trying everything for at most `timeoutMs` (an outage may
   * end meanwhile) or, when every step left was refused by Cinder (another
   * host holds the volume), for the refusal grace only; then logs each step
   * still pending, one line each, and gives up on them (the next start's
   * recovery does them). Resolves with how many are left.
   */
  async drain(timeoutMs: number): Promise<number> {
    const started = Date.now()
    const deadline = (): number => started + ([...this.pending.values()].flat().every(e => e.refused) ? Math.min(timeoutMs, this.refusedGraceMs) : timeoutMs)
    while (this.pending.size > 0 && Date.now() < deadline()) {
      const volumes = [...this.pending.keys()]
      for (const volumeId of volumes) this.unschedule(volumeId)
      await Promise.all(volumes.map(async volumeId => this.run(volumeId)))
      if (this.pending.size === 0) break
      const wait = Math.min(this.firstDelayMs, Math.max(0, deadline() - Date.now()))
      await new Promise(resolve => setTimeout(resolve, wait))
    }
    this.stopped = true
    for (const volumeId of [...this.pending.keys()]) this.unschedule(volumeId)
    const left = this.list()
    for (const entry of left) this.log.error({ volumeId: entry.volumeId, call: entry.call, attachmentId: entry.attachmentId, attempts: entry.attempts, since: entry.since.toISOString(), err: entry.lastError }, CLEANUP_LEFT_MESSAGE)
    return left.length
  }

  private keep(step: CleanupStep, err: unknown): void {
    const entries = this.pending.get(step.volumeId) ?? []
    const entry: Entry = { step, volumeId: step.volumeId, call: step.call, attempts: 1, since: new Date(), lastError: reason(err), refused: refusal(err), ...(step.attachmentId === undefined ? {} : { attachmentId: step.attachmentId }) }
    // A prerequisite goes before the volume's other steps, as does a step that failed inside one of them.
    if (step.first === true || this.running.has(step.volumeId)) entries.unshift(entry)
    else entries.push(entry)
    this.pending.set(step.volumeId, entries)
    this.logFailure(entry, err)
    if (this.stopped) return
    if (!this.running.has(step.volumeId)) this.schedule(step.volumeId, this.firstDelayMs)
  }

  private schedule(volumeId: string, delayMs: number): void {
    if (this.stopped || this.timers.has(volumeId)) return
    const timer = setTimeout(() => {
      this.timers.delete(volumeId)
      void this.run(volumeId)
    }, delayMs)
    timer.unref()
    this.timers.set(volumeId, timer)
  }

  private unschedule(volumeId: string): void {
    const timer = this.timers.get(volumeId)
    if (timer !== undefined) clearTimeout(timer)
    this.timers.delete(volumeId)
  }

  /** Runs the volume's steps in order until one fails; that one is tried again later. */
  private async run(volumeId: string): Promise<void> {
    const inFlight = this.running.get(volumeId)
    if (inFlight !== undefined) return inFlight
    const work = (async () => {
      for (let entry = this.pending.get(volumeId)?.[0]; entry !== undefined; entry = this.pending.get(volumeId)?.[0]) {
        try {
          await once(entry.step)
        } catch (err) {
          entry.attempts++
          entry.lastError = reason(err)
          entry.refused = refusal(err)
          this.logFailure(entry, err)
          this.schedule(volumeId, Math.min(this.firstDelayMs * 2 ** (entry.attempts - 1), this.maxDelayMs))
          return
        }
        this.log.info({ volumeId, call: entry.call, attachmentId: entry.attachmentId, attempts: entry.attempts, pending: this.size - 1 }, CLEANUP_DONE_MESSAGE)
        const rest = (this.pending.get(volumeId) ?? []).filter(e => e !== entry)
        if (rest.length === 0) this.pending.delete(volumeId)
        else this.pending.set(volumeId, rest)
      }
    })().finally(() => { this.running.delete(volumeId) })
    this.running.set(volumeId, work)
    return work
  }

  /** One line per failure: the volume, the call, Cinder's request id and what happens next. */
  private logFailure(entry: Entry, err: unknown): void {
    const details = err instanceof CinderfsError ? err.details : {}
    this.log.warn({
      volumeId: entry.volumeId, call: entry.call, attachmentId: entry.attachmentId, attempt: entry.attempts,
      requestId: details.requestId, status: details.status, errno: errorCode(err), err: reason(err), pending: this.size,
      next: this.stopped ? 'left for recovery at the next start' : 'will retry',
    }, CLEANUP_DEFERRED_MESSAGE)
  }
}

/**
 * One attempt, without the HTTP layer's own retries: the janitor's backoff
 * is the retry, and a stopped cinder-volume makes each 5xx take Cinder's RPC
 * timeout (a minute), so a few quick retries per attempt would only multiply it.
 */
async function once(step: CleanupStep): Promise<void> {
  await withinRetryWindow(0, step.run)
}

/** Cinder answered no (a 4xx other than an expired token, a timeout or throttling): waiting out an outage will not change it. */
function refusal(err: unknown): boolean {
  const status = err instanceof CinderfsError ? err.details.status : undefined
  return typeof status === 'number' && status >= 400 && status < 500 && ![401, 408, 429].includes(status)
}

function reason(err: unknown): string {
  return typeof err === 'string' ? err : errorMessage(err)
}
