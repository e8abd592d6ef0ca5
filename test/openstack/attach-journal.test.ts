// The journal of attaches in flight: what one run leaves, the next one reads back.
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { AttachJournal } from '../../src/openstack/attach-journal.js'

async function journalFile(t: Test): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cinderfs-journal-'))
  t.teardown(async () => fs.rm(dir, { recursive: true, force: true }))
  return path.join(dir, 'sub', 'journal.json')
}

t.test('a run that dies mid-attach leaves its attaches for the next run, named or not', async t => {
  const file = await journalFile(t)
  const dead = new AttachJournal(file)
  const named = await dead.begin('vol-a')
  await dead.named(named, 'att-a')
  await dead.begin('vol-b')
  const done = await dead.begin('vol-c')
  await dead.named(done, 'att-c')
  await dead.end(done)
  t.same(await dead.leftovers(), [], 'a run never counts its own attaches in flight as leftovers')

  const next = new AttachJournal(file)
  const left = await next.leftovers()
  t.same(left.map(e => [e.volumeId, e.attachmentId]), [['vol-a', 'att-a'], ['vol-b', undefined]], 'the cut-off attaches, the attachment id where Cinder had answered')
  const fresh = await next.begin('vol-d')
  await next.forgetAttachment('att-a')
  const b = left.find(e => e.volumeId === 'vol-b')
  if (b !== undefined) await next.end(b.token)
  t.same(await next.leftovers(), [], 'resolved leftovers go')
  t.same(await new AttachJournal(file).leftovers().then(l => l.map(e => e.volumeId)), ['vol-d'], 'the file keeps only what is still in flight')
  await next.end(fresh)
  await t.rejects(fs.stat(file), { code: 'ENOENT' }, 'nothing in flight: no file')
})

t.test('concurrent attaches all reach the file', async t => {
  const file = await journalFile(t)
  const journal = new AttachJournal(file)
  await Promise.all(Array.from({ length: 20 }, async (_, i) => journal.named(await journal.begin(`vol-${i}`), `att-${i}`)))
  const left = await new AttachJournal(file).leftovers()
  t.equal(left.length, 20, 'every attach is on disk')
  t.ok(left.every(e => e.attachmentId === e.volumeId.replace('vol', 'att')), 'each with its own attachment')
})

t.test('an unreadable journal stops the start with EIO instead of guessing', async t => {
  const file = await journalFile(t)
  await fs.mkdir(path.dirname(file), { recursive: true })
  await fs.writeFile(file, '{"attaches": [{"volumeId": 1}]}')
  await t.rejects(new AttachJournal(file).leftovers(), { code: 'EIO', message: /unreadable.*move it away/ })
})
