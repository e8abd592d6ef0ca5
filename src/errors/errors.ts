import os from 'node:os'

/** Errno names cinderfs reports to FUSE callers. */
export type ErrnoName =
  | 'EPERM' | 'ENOENT' | 'EIO' | 'EBADF' | 'EAGAIN' | 'ENOMEM' | 'EACCES' | 'EBUSY' | 'EEXIST'
  | 'ENOTDIR' | 'EISDIR' | 'EINVAL' | 'EFBIG' | 'ENOSPC' | 'EROFS' | 'ENAMETOOLONG' | 'ENOSYS'
  | 'ENOTEMPTY' | 'ENODATA' | 'ENOTSUP' | 'ETIMEDOUT' | 'EDQUOT' | 'ESTALE' | 'ERANGE'

/**
 * The one error type that crosses layers. Every layer throws this (or lets a
 * Node system error through); `toErrno` turns either into the negative errno
 * FUSE wants, in one place.
 */
export class CinderfsError extends Error {
  readonly code: ErrnoName
  readonly details: Record<string, unknown>

  constructor(code: ErrnoName, message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'CinderfsError'
    this.code = code
    this.details = details
  }
}

/** A configuration or command-line mistake: the CLI prints it as one line and exits 2. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ConfigError'
  }
}

export function fail(code: ErrnoName, message: string, details: Record<string, unknown> = {}, cause?: unknown): never {
  throw new CinderfsError(code, message, details, cause === undefined ? undefined : { cause })
}

const errnoNumbers: Record<string, number | undefined> = os.constants.errno

/** Negative errno for FUSE: typed errors by their code, Node system errors by theirs, anything else EIO. */
export function toErrno(err: unknown): number {
  const code = errorCode(err)
  const n = code === undefined ? undefined : errnoNumbers[code]
  return -(n ?? errnoNumbers.EIO ?? 5)
}

export function errorCode(err: unknown): string | undefined {
  if (err instanceof CinderfsError) return err.code
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') return err.code
  return undefined
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/** The error with what we were doing prepended; its code (what toErrno maps) unchanged. */
export function withContext(err: unknown, doing: string): unknown {
  if (err instanceof Error && errorCode(err) !== undefined) err.message = `${doing}: ${err.message}`
  return err
}
