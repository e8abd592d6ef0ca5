import t from 'tap'
import type { FileStat } from '../../src/fs/types.js'
import { InodeTable, rootIno } from '../../src/fuse/inodes.js'

const stat: FileStat = { mode: 0o100644, uid: 0, gid: 0, size: 1, nlink: 1, blocks: 1, blksize: 4096, mtimeMs: 0 }

t.test('one inode per volume: a name that comes to mean another volume gets another inode', async t => {
  const table = new InodeTable()
  const old = table.bind('image', 'vol-a', stat, true)
  table.lookedUp(old)
  t.not(old.ino, rootIno, 'never the root\'s number')
  t.equal(table.bind('image', 'vol-a', stat, true), old, 'the same volume keeps its inode')
  const replaced = table.bind('image', 'vol-b', stat, true)
  t.not(replaced.ino, old.ino, 'the replacing volume has an inode of its own')
  t.equal(old.name, undefined, 'the old inode lost the name')
  t.equal(table.named('image'), replaced, 'the name leads to the new inode')
  t.equal(table.get(old.ino), old, 'the old inode lives while the kernel holds a lookup')
  table.forget(old.ino, 1)
  t.equal(table.get(old.ino), undefined, 'and goes at the forget')
})

t.test('rename moves the name; the replaced inode lives on while open; unused inodes go', async t => {
  const table = new InodeTable()
  const a = table.bind('a', 'vol-a', stat, true)
  const b = table.bind('b', 'vol-b', stat, true)
  table.lookedUp(a)
  table.lookedUp(b)
  table.opened(b)
  table.rename('a', 'b')
  t.equal(table.named('b'), a, 'b now leads to a\'s inode (same number)')
  t.equal(table.named('a'), undefined, 'a leads nowhere')
  table.forget(b.ino, 1)
  t.equal(table.get(b.ino), b, 'the replaced inode stays while a file is open on it')
  table.closed(b)
  t.equal(table.get(b.ino), undefined, 'and goes at its last close')
  const unused = table.bind('c', 'vol-c', stat, true)
  table.dropIfUnused(unused)
  t.equal(table.get(unused.ino), undefined, 'an inode nobody took a lookup on is dropped')
  t.equal(table.size, 1, 'only a\'s inode is left')
})
