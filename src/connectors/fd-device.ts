import fs from 'node:fs'
import { promisify } from 'node:util'
import { fail } from '../errors/errors.js'
import type { BlockDevice } from './connector.js'

const read = promisify(fs.read)
const write = promisify(fs.write)
const fdatasync = promisify(fs.fdatasync)
const close = promisify(fs.close)

/** A block device or image file reached through a file descriptor. */
export class FdBlockDevice implements BlockDevice {
  private current: number
  private closed = false

  constructor(
    readonly path: string,
    private readonly fd: number,
    readonly writable: boolean,
    size: number,
    private readonly measure: () => Promise<number>,
  ) {
    this.current = size
  }

  get size(): number {
    return this.current
  }

  async refreshSize(): Promise<number> {
    this.current = await this.measure()
    return this.current
  }

  async read(buffer: Buffer, offset: number, length: number, position: number): Promise<number> {
    this.checkOpen()
    if (position >= this.current) return 0
    const n = Math.min(length, this.current - position)
    const { bytesRead } = await read(this.fd, buffer, offset, n, position)
    return bytesRead
  }

  async write(buffer: Buffer, offset: number, length: number, position: number): Promise<number> {
    this.checkOpen()
    if (!this.writable) fail('EROFS', `${this.path} is attached read-only`)
    // A block device clips writes at its end; refuse instead of losing the tail.
    if (position + length > this.current) fail('EFBIG', `write of ${length} bytes at ${position} passes the end of ${this.path} (${this.current} bytes)`)
    let done = 0
    while (done < length) {
      const { bytesWritten } = await write(this.fd, buffer, offset + done, length - done, position + done)
      if (bytesWritten === 0) fail('EIO', `${this.path} accepted no bytes at ${position + done}`)
      done += bytesWritten
    }
    return done
  }

  async flush(): Promise<void> {
    this.checkOpen()
    if (this.writable) await fdatasync(this.fd)
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await close(this.fd)
  }

  private checkOpen(): void {
    if (this.closed) fail('EBADF', `${this.path} is closed`)
  }
}
