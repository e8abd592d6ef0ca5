/** Time as the core sees it: tests drive a fake one instead of sleeping. */
export interface Clock {
  now(): number
  /** Runs `callback` after `ms`; the returned function cancels it. Never keeps the process alive. */
  schedule(ms: number, callback: () => void): () => void
}

export const systemClock: Clock = {
  now: () => Date.now(),
  schedule: (ms, callback) => {
    const timer = setTimeout(callback, ms)
    timer.unref()
    return () => { clearTimeout(timer) }
  },
}
