import type { Clock } from '../../src/model/clock.js'

/** A clock the test moves by hand: timers run only inside advance(). */
export class FakeClock implements Clock {
  private time = 1_700_000_000_000
  private timers: Array<{ at: number, callback: () => void, cancelled: boolean }> = []

  now(): number {
    return this.time
  }

  schedule(ms: number, callback: () => void): () => void {
    const timer = { at: this.time + ms, callback, cancelled: false }
    this.timers.push(timer)
    return () => { timer.cancelled = true }
  }

  /** Timers scheduled and not yet run or cancelled. */
  get pending(): number {
    return this.timers.filter(timer => !timer.cancelled).length
  }

  /** Moves time on and runs every timer that comes due, in order. */
  advance(ms: number): void {
    this.time += ms
    const due = this.timers.filter(timer => timer.at <= this.time).sort((a, b) => a.at - b.at)
    this.timers = this.timers.filter(timer => timer.at > this.time)
    for (const timer of due) if (!timer.cancelled) timer.callback()
  }
}
