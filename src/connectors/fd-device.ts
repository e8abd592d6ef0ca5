import fs from 'node:fs'
import { promisify } from 'node:util'
import { fail } from '../errors/errors.js'
import { directIoAlignment, isDirectIoAligned, roundUpToAlignment } from '../memory/aligned-blocks.js'
import type { BlockDevice } from './connector.js'

const read = promisify(fs.read)
const write = promisify(fs.write)
const fdatasync = promisify(fs.fdatasync)
const close = promisify(fs.close)

/**
 * A block device or image file reached through a file descriptor; with a
 * second one opened O_DIRECT, aligned reads (the block cache's) and writes
 * (the uploads' windows) skip the page cache: the cache above holds what is
 * worth keeping, and an image being written is not read back soon. Linux
 * keeps the two coherent (a direct write invalidates cached pages; a direct
 * read writes dirty ones first), and fdatasync on either flushes the device.
 */
export class FdBlockDevice implements BlockDevice {
  private current: number
  private closed = false

  constructor(
    readonly path: string,
    private readonly fd: number,
    readonly writable: boolean,
    size: number,
    private readonly measure: () => Promise<number>,
    private readonly directFd?: number,
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
    // O_DIRECT reads whole 4 KiB units; the block cache's blocks have room for the rounded-up tail.
    const span = roundUpToAlignment(n)
    const direct = this.directFdFor(buffer, offset, span, position)
    if (direct !== undefined) {
      const { bytesRead } = await read(direct, buffer, offset, span, position)
      return Math.min(bytesRead, n)
    }
    const { bytesRead } = await read(this.fd, buffer, offset, n, position)
    return bytesRead
  }

  async write(buffer: Buffer, offset: number, length: number, position: number): Promise<number> {
    this.checkOpen()
    if (!this.writable) fail('EROFS', `${this.path} is attached read-only`)
    // A block device clips writes at its end; refuse instead of losing the tail.
    if (position + length > this.current) fail('EFBIG', `write of ${length} bytes at ${position} passes the end of ${this.path} (${this.current} bytes)`)
    const fd = this.directFdFor(buffer, offset, length, position) ?? this.fd
    let done = 0
    while (done < length) {
      const { bytesWritten } = await write(fd, buffer, offset + done, length - done, position + done)
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
    if (this.directFd !== undefined) await close(this.directFd)
    await close(this.fd)
  }

  /** The O_DIRECT descriptor, when `span` bytes of `buffer` from `offset`, at `position`, meet its alignment. */
  private directFdFor(buffer: Buffer, offset: number, span: number, position: number): number | undefined {
    const aligned = position % directIoAlignment === 0 && span % directIoAlignment === 0 &&
      offset + span <= buffer.length && isDirectIoAligned(buffer, offset)
    return aligned ? this.directFd : undefined
  }

  private checkOpen(): void {
    if (this.closed) fail('EBADF', `${this.path} is closed`)
  }
}
