import { AsyncLocalStorage } from 'node:async_hooks'

/**
 * How long one backend call made inside `withinRetryWindow` keeps retrying
 * transient failures (a refused connection, a 5xx) before it fails. Carried
 * with the async context rather than through every VolumeService method, so
 * only the callers that can wait (an upload, whose writes sit in the bounded
 * write buffer meanwhile) ride out a service restart; everything else (a
 * reader's first open, the janitor's attempts) keeps failing fast.
 */
const windows = new AsyncLocalStorage<number>()

export function withinRetryWindow<T>(windowMs: number, work: () => Promise<T>): Promise<T> {
  return windows.run(windowMs, work)
}

/** The window of the calling context in milliseconds, or undefined outside any. */
export function currentRetryWindow(): number | undefined {
  return windows.getStore()
}
