import type { Logger } from '../log/logger.js'

/** Log messages tests and operators look for. */
export const PROGRESS_MESSAGE = 'transfer progress'
export const FINISHED_MESSAGE = 'transfer finished'

export type TransferKind = 'upload' | 'read'

/** One long copy as `cinderfs status` and the progress lines show it. */
export interface TransferView {
  kind: TransferKind
  name: string
  bytes: number
  /** The file's size when known (reads); an upload's final size is not known before it closes. */
  size?: number
  seconds: number
  bytesPerSecond: number
  /** Estimated seconds left, when the size is known. */
  etaSeconds?: number
}

interface Transfer {
  kind: TransferKind
  name: string
  bytes: number
  size?: number
  startedAt: number
  /** Bytes at the last progress line: a copy that stalled logs nothing new. */
  loggedBytes: number
  logged: boolean
}

export interface TransfersOptions {
  logger: Logger
  /** Between progress lines of one copy; a copy shorter than this logs none. */
  intervalMs?: number
}

/**
 * Open file handles that move bytes, by FUSE handle: each upload and each
 * read gets a progress line every few seconds while bytes move (bytes,
 * MB/s, time left when the size is known), and a closing line if it ran
 * long enough to have logged one.
 */
export class Transfers {
  private readonly transfers = new Map<number, Transfer>()
  private readonly log: Logger
  private readonly timer: NodeJS.Timeout

  constructor(options: TransfersOptions) {
    this.log = options.logger.child({ component: 'progress' })
    this.timer = setInterval(() => this.report(), options.intervalMs ?? 5000)
    this.timer.unref()
  }

  begin(handle: number, kind: TransferKind, name: string, size?: number): void {
    this.transfers.set(handle, { kind, name, bytes: 0, startedAt: Date.now(), loggedBytes: 0, logged: false, ...(size === undefined ? {} : { size }) })
  }

  sized(handle: number, size: number): void {
    const transfer = this.transfers.get(handle)
    if (transfer !== undefined) transfer.size = size
  }

  add(handle: number, bytes: number): void {
    const transfer = this.transfers.get(handle)
    if (transfer !== undefined) transfer.bytes += bytes
  }

  end(handle: number): void {
    const transfer = this.transfers.get(handle)
    if (transfer === undefined) return
    this.transfers.delete(handle)
    if (transfer.logged) this.log.info(line(transfer), FINISHED_MESSAGE)
  }

  list(): TransferView[] {
    return [...this.transfers.values()].map(view)
  }

  /** Uploads running now and the bytes they have written. */
  uploads(): { count: number, bytes: number } {
    let count = 0
    let bytes = 0
    for (const t of this.transfers.values()) {
      if (t.kind !== 'upload') continue
      count++
      bytes += t.bytes
    }
    return { count, bytes }
  }

  close(): void {
    clearInterval(this.timer)
  }

  private report(): void {
    for (const transfer of this.transfers.values()) {
      if (transfer.bytes === transfer.loggedBytes) continue
      transfer.loggedBytes = transfer.bytes
      transfer.logged = true
      this.log.info(line(transfer), PROGRESS_MESSAGE)
    }
  }
}

function view(t: Transfer): TransferView {
  const seconds = Math.max(0.001, (Date.now() - t.startedAt) / 1000)
  const bytesPerSecond = t.bytes / seconds
  const eta = t.size !== undefined && bytesPerSecond > 0 ? Math.max(0, (t.size - t.bytes) / bytesPerSecond) : undefined
  return { kind: t.kind, name: t.name, bytes: t.bytes, ...(t.size === undefined ? {} : { size: t.size }), seconds, bytesPerSecond, ...(eta === undefined ? {} : { etaSeconds: eta }) }
}

function line(t: Transfer): Record<string, unknown> {
  const v = view(t)
  return {
    kind: v.kind, name: v.name, bytes: v.bytes, size: v.size, seconds: Math.round(v.seconds),
    mbPerSecond: Number((v.bytesPerSecond / 1e6).toFixed(1)), etaSeconds: v.etaSeconds === undefined ? undefined : Math.round(v.etaSeconds),
  }
}
