/** Runs async work one piece at a time, in the order it was asked for (a lock without reentry). */
export class Serial {
  private tail: Promise<void> = Promise.resolve()

  async run<T>(work: () => Promise<T>): Promise<T> {
    const previous = this.tail
    let done = (): void => undefined
    this.tail = new Promise<void>(resolve => { done = resolve })
    await previous
    try {
      return await work()
    } finally {
      done()
    }
  }
}
