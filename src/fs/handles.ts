import type { Lease } from '../attachments/attachment-manager.js'
import { newReadStream, type BlockSource, type ReadStream } from '../cache/block-cache.js'
import { fail } from '../errors/errors.js'
import type { ImageEntry } from '../store/image-store.js'
import type { Upload } from '../upload/upload.js'

/** One open file. */
export interface Handle {
  id: number
  entry: ImageEntry
  writable: boolean
  /** Set when the file was being uploaded by us when opened. */
  upload?: Upload
  /** The handle wrote or truncated since its last flush. */
  dirty: boolean
  lease?: Lease
  leasing?: Promise<Lease>
  source?: BlockSource
  stream: ReadStream
}

/** Handle numbers for FUSE: never 0 (fuse-native ignores a 0 fh). */
export class HandleTable {
  private readonly handles = new Map<number, Handle>()
  private next = 1

  open(entry: ImageEntry, writable: boolean, upload: Upload | undefined): Handle {
    while (this.handles.has(this.next)) this.next = this.next >= 0x7fffffff ? 1 : this.next + 1
    const handle: Handle = { id: this.next, entry, writable, dirty: false, stream: newReadStream() }
    if (upload !== undefined) handle.upload = upload
    this.handles.set(handle.id, handle)
    this.next = this.next >= 0x7fffffff ? 1 : this.next + 1
    return handle
  }

  get(id: number): Handle {
    const handle = this.handles.get(id)
    if (handle === undefined) fail('EBADF', `no open file with handle ${id}`)
    return handle
  }

  close(id: number): Handle | undefined {
    const handle = this.handles.get(id)
    this.handles.delete(id)
    return handle
  }

  get size(): number {
    return this.handles.size
  }
}
