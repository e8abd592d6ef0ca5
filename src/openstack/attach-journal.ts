import { randomUUID } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import { CinderfsError } from '../errors/errors.js'
import { array, object, optionalString, string } from './json.js'

/** One attachment of ours, from just before its `POST /attachments` until it is deleted. */
export interface JournaledAttach {
  token: string
  volumeId: string
  /** Known once the POST answered; absent when a run died while Cinder was creating it. */
  attachmentId?: string
}

/**
 * Our attachments, on disk. Until an attachment is completed Cinder shows it
 * in no volume's attachment list (a reservation has no host at all), and a
 * completed one shows its host name to admins only, so a run killed while
 * attaching or attached can leave one that recovery cannot find by host name.
 * The entry is written before the POST, gets the attachment id as soon as
 * Cinder answers, and goes when the attachment is deleted (or the attach
 * failed and created none); what an earlier run left is what recovery
 * deletes. Each change replaces the file (write, fsync, rename), so a crash
 * leaves the old or the new state, never a torn one.
 */
export class AttachJournal {
  private readonly entries = new Map<string, JournaledAttach>()
  /** Tokens read from the file at start: an earlier run's, never one of this run's. */
  private readonly inherited = new Set<string>()
  private loading: Promise<void> | undefined
  private writing: Promise<void> = Promise.resolve()

  constructor(readonly file: string) {}

  /** Records an attach of `volumeId` about to start; resolves with its token once on disk. */
  async begin(volumeId: string): Promise<string> {
    const token = randomUUID()
    await this.change(() => { this.entries.set(token, { token, volumeId }) })
    return token
  }

  /** The attachment Cinder created for the attach `token`. */
  async named(token: string, attachmentId: string): Promise<void> {
    await this.change(() => {
      const entry = this.entries.get(token)
      if (entry !== undefined) this.entries.set(token, { ...entry, attachmentId })
    })
  }

  /** The attach created no attachment, or it is gone: nothing left to clean up. */
  async end(token: string): Promise<void> {
    await this.change(() => {
      this.entries.delete(token)
      this.inherited.delete(token)
    })
  }

  /** An attachment was deleted (a detach, or recovery): its entry, if any, goes. */
  async forgetAttachment(attachmentId: string): Promise<void> {
    await this.load()
    const token = [...this.entries.values()].find(e => e.attachmentId === attachmentId)?.token
    if (token !== undefined) await this.end(token)
  }

  /** Attaches an earlier run left unfinished. */
  async leftovers(): Promise<JournaledAttach[]> {
    await this.load()
    return [...this.inherited].flatMap(token => this.entries.get(token) ?? [])
  }

  private async change(apply: () => void): Promise<void> {
    await this.load()
    apply()
    // One write at a time, each with the state as it is when it runs.
    const write = this.writing.then(async () => this.write())
    this.writing = write.catch(() => undefined)
    await write
  }

  private async load(): Promise<void> {
    this.loading ??= this.read()
    await this.loading
  }

  private async read(): Promise<void> {
    let text: string
    try {
      text = await fs.readFile(this.file, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
      throw err
    }
    let entries: JournaledAttach[]
    try {
      entries = array(object(JSON.parse(text), 'attach journal').attaches, 'attaches').map(value => {
        const e = object(value, 'attach')
        const attachmentId = optionalString(e, 'attachmentId')
        return { token: string(e, 'token'), volumeId: string(e, 'volumeId'), ...(attachmentId === undefined ? {} : { attachmentId }) }
      })
    } catch (err) {
      // Guessing would risk leaking attachments or deleting the wrong ones: say so and stop.
      throw new CinderfsError('EIO', `attach journal ${this.file} is unreadable (${err instanceof Error ? err.message : String(err)}); move it away to start without it`)
    }
    for (const entry of entries) {
      this.entries.set(entry.token, entry)
      this.inherited.add(entry.token)
    }
  }

  private async write(): Promise<void> {
    if (this.entries.size === 0) {
      await fs.rm(this.file, { force: true })
      return
    }
    await fs.mkdir(path.dirname(this.file), { recursive: true, mode: 0o700 })
    const temporary = `${this.file}.tmp`
    const handle = await fs.open(temporary, 'w', 0o600)
    try {
      await handle.writeFile(JSON.stringify({ attaches: [...this.entries.values()] }))
      await handle.sync()
    } finally {
      await handle.close()
    }
    await fs.rename(temporary, this.file)
  }
}
