import { newReadStream, type ReadStream } from '../cache/block-cache.js'
import { fail } from '../errors/errors.js'
import type { OpenImage } from './open-image.js'

/**
 * One open file: a reader, or a writer (which may also read). The image it
 * opened owns everything shared between handles; a handle holds only what
 * is its own.
 */
export type Handle =
  | { kind: 'read', id: number, image: OpenImage, stream: ReadStream }
  /** dirty: wrote or truncated since its last flush (only such a flush finalises). */
  | { kind: 'write', id: number, image: OpenImage, stream: ReadStream, dirty: boolean }

/** Handle numbers for FUSE: never 0 (fuse-native ignores a 0 fh). */
export class HandleTable {
  private readonly handles = new Map<number, Handle>()
  private next = 1

  open(image: OpenImage, kind: Handle['kind']): Handle {
    while (this.handles.has(this.next)) this.advance()
    const id = this.next
    this.advance()
    const handle: Handle = kind === 'write'
      ? { kind, id, image, stream: newReadStream(), dirty: false }
      : { kind, id, image, stream: newReadStream() }
    if (kind === 'write') image.writers++
    else image.readers++
    this.handles.set(id, handle)
    return handle
  }

  get(id: number): Handle {
    const handle = this.handles.get(id)
    if (handle === undefined) fail('EBADF', `no open file with handle ${id}`)
    return handle
  }

  writer(id: number): Extract<Handle, { kind: 'write' }> {
    const handle = this.get(id)
    if (handle.kind !== 'write') fail('EBADF', `handle ${id} is not open for writing`)
    return handle
  }

  close(id: number): Handle | undefined {
    const handle = this.handles.get(id)
    if (handle === undefined) return undefined
    this.handles.delete(id)
    if (handle.kind === 'write') handle.image.writers--
    else handle.image.readers--
    return handle
  }

  private advance(): void {
    this.next = this.next >= 0x7fffffff ? 1 : this.next + 1
  }
}
