/** Request counters and size histograms, logged on SIGUSR2 and at unmount (the bench reads them). */
export class Metrics {
  private readonly ops = new Map<string, number>()
  private readonly errors = new Map<string, number>()
  private readonly sizes = { read: new Map<number, number>(), write: new Map<number, number>() }
  bytesRead = 0
  bytesWritten = 0

  op(name: string): void {
    this.ops.set(name, (this.ops.get(name) ?? 0) + 1)
  }

  error(name: string, errno: number): void {
    const key = `${name}:${-errno}`
    this.errors.set(key, (this.errors.get(key) ?? 0) + 1)
  }

  /** Request length in power-of-two KiB buckets (a 128 KiB read lands in "128K"). */
  request(kind: 'read' | 'write', length: number): void {
    const bucket = 2 ** Math.ceil(Math.log2(Math.max(1, length)))
    const histogram = this.sizes[kind]
    histogram.set(bucket, (histogram.get(bucket) ?? 0) + 1)
    if (kind === 'read') this.bytesRead += length
    else this.bytesWritten += length
  }

  snapshot(): Record<string, unknown> {
    const label = (bytes: number): string => bytes >= 1024 ? `${bytes / 1024}K` : `${bytes}B`
    const histogram = (m: Map<number, number>) => Object.fromEntries([...m].sort((a, b) => a[0] - b[0]).map(([k, v]) => [label(k), v]))
    return {
      ops: Object.fromEntries(this.ops),
      errors: Object.fromEntries(this.errors),
      readSizes: histogram(this.sizes.read),
      writeSizes: histogram(this.sizes.write),
      bytesRead: this.bytesRead,
      bytesWritten: this.bytesWritten,
    }
  }
}
