import { spawn } from 'node:child_process'
import { constants as fsConstants } from 'node:fs'
import fs, { type FileHandle } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { fuseBinding, localOnly, loopsOf, needsBackend, randomFile, startDaemon, volumes, workspace, type Daemon } from '../helpers/daemon.js'
import { errorCode } from '../../src/errors/errors.js'
import { lifecycleMessages } from '../../src/image/lifecycle.js'
import { metricsPort } from '../helpers/prometheus.js'
import { run, sh, sha256, xattr } from '../helpers/shell.js'

/** The kernel page cache for sealed images is the fuse3 binding's (fuse-native never lets the kernel keep pages). */
const onFuse3 = fuseBinding === undefined || fuseBinding === 'fuse3'

interface Snapshot {
  /** Bytes returned to reads. */
  bytesRead: number
  /** Block reads from the attached device. */
  deviceReads: number
  /** Reads the block cache answered, hit or miss. */
  cacheReads: number
  /** Requests of exactly 1 MiB (between the 512 KiB and 1 MiB buckets), and of at most 128 KiB, by op. */
  mib: { read: number, write: number }
  upTo128K: { write: number, all: { write: number } }
}

/** The daemon's counters, from its Prometheus /metrics (every test daemon here serves it on a port of its own). */
async function snapshot(daemon: Daemon): Promise<Snapshot> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort(daemon.logs())}/metrics`)).text()
  const value = (name: string, labels = ''): number => {
    const line = text.split('\n').find(l => l.startsWith(`${name}${labels === '' ? '' : `{${labels}}`} `))
    return line === undefined ? 0 : Number(line.split(' ').at(-1))
  }
  const bucket = (op: string, le: string): number => value('cinderfs_fuse_request_size_bytes_bucket', `le="${le}",op="${op}"`)
  return {
    bytesRead: value('cinderfs_read_bytes_total'),
    deviceReads: value('cinderfs_device_reads_total'),
    cacheReads: value('cinderfs_cache_hits_total') + value('cinderfs_cache_misses_total'),
    mib: { read: bucket('read', '1048576') - bucket('read', '524288'), write: bucket('write', '1048576') - bucket('write', '524288') },
    upTo128K: { write: bucket('write', '131072'), all: { write: bucket('write', '+Inf') } },
  }
}

t.test('a re-read of a sealed image is served by the kernel: no request, no cache or device read', { skip: needsBackend() || (onFuse3 ? false : 'fuse3 binding only') }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws, ['--seal-delay', '0', '--metrics-addr', '127.0.0.1:0'])
  const source = await randomFile(8 * 1024 * 1024)
  await sh(`cp '${source}' '${daemon.file('sealed')}'`)
  // Only a sealed image (no writer can take it back) is left in the kernel's page cache.
  await daemon.logged(lifecycleMessages.sealed)
  const expected = await sha256(source)
  // The VMs here drop the whole page cache every few minutes (/proc/vmstat drop_pagecache;
  // once inside the first read, whose first 16 KiB were then read again): a pass with a
  // drop in it proves nothing either way and is run again.
  for (let pass = 1; ; pass++) {
    const drops = await pageCacheDrops()
    t.equal(await sha256(daemon.file('sealed')), expected, 'a read: the bytes')
    const first = await snapshot(daemon)
    t.equal(await sha256(daemon.file('sealed')), expected, 'a second read: the same bytes')
    const second = await snapshot(daemon)
    if (await pageCacheDrops() !== drops && pass < 5) {
      t.comment(`the page cache was dropped during pass ${pass}; again`)
      continue
    }
    t.equal(second.bytesRead, first.bytesRead, 'the second read sent the daemon no read request')
    t.equal(second.deviceReads, first.deviceReads, 'and read nothing from the device')
    t.equal(second.cacheReads, first.cacheReads, 'nor from the block cache')
    break
  }
  t.ok((await snapshot(daemon)).bytesRead >= 8 * 1024 * 1024, 'the first read went through the daemon')
})

/** How often the page cache was dropped (echo 1 > drop_caches) since boot, as /proc/vmstat counts it. */
async function pageCacheDrops(): Promise<string> {
  return /^drop_pagecache (\d+)$/m.exec(await fs.readFile('/proc/vmstat', 'utf8'))?.[1] ?? 'unknown'
}

t.test('a name replaced by rename is never read with the old bytes', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws)
  await sh(`head -c 3000000 /dev/urandom > '${ws.root}/old' && head -c 3000000 /dev/urandom > '${ws.root}/new'`)
  await sh(`cp '${ws.root}/old' '${daemon.file('image')}'`)
  t.equal(await sha256(daemon.file('image')), await sha256(`${ws.root}/old`), 'the old image is read (and cached)')
  // rsync's way: a temporary name, then rename over the old one.
  await sh(`cp '${ws.root}/new' '${daemon.file('.image.tmp')}' && mv '${daemon.file('.image.tmp')}' '${daemon.file('image')}'`)
  t.equal(await sha256(daemon.file('image')), await sha256(`${ws.root}/new`), 'a reader opening after the rename gets the new bytes')
  t.equal((await volumes(ws)).length, 1, 'the old volume is gone')
})

t.test('a name replaced by another host is never read with the old bytes once the change is seen', { skip: localOnly('the other host writes through the local backend\'s API') }, async t => {
  const ws = await workspace(t)
  // The local backend takes its directory for one daemon, so the other host is this test, writing through the backend as a second cinderfs would.
  const daemon = await startDaemon(ws, ['--list-ttl', '1'])
  await sh(`head -c 2000000 /dev/urandom > '${ws.root}/old' && head -c 2000000 /dev/urandom > '${ws.root}/new'`)
  await sh(`cp '${ws.root}/old' '${daemon.file('image')}'`)
  const oldId = await xattr(daemon.file('image'), 'user.cinderfs.volume_id')
  t.equal(await sha256(daemon.file('image')), await sha256(`${ws.root}/old`), 'the old image is read (and cached)')

  const size = 2000000
  const volume = await ws.service.create({
    name: 'image-image', sizeGiB: 1,
    metadata: { image_size: String(size), image_owner: ws.imageOwner, cinderfs_renamed_at: String(Date.now() + 1000) },
  })
  const attachment = await ws.service.attach(volume.id, 'rw')
  await fs.copyFile(`${ws.root}/new`, String(attachment.connectionInfo.data.device_path), fs.constants.COPYFILE_FICLONE)
  await sh(`truncate -s 1G '${String(attachment.connectionInfo.data.device_path)}'`)
  await ws.service.detach(attachment)
  await ws.service.setReadOnly(volume.id, true)

  let seen = oldId
  for (let waited = 0; seen === oldId && waited < 20_000; waited += 200) {
    await sleep(200)
    seen = await xattr(daemon.file('image'), 'user.cinderfs.volume_id').catch(() => oldId)
  }
  t.equal(seen, volume.id, 'the mount sees the other host\'s volume under the name')
  t.equal(await sha256(daemon.file('image')), await sha256(`${ws.root}/new`), 'a reader opening now gets the new bytes')
})

t.test('unlink while open: the reader keeps reading; the volume goes at its close', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws)
  const source = await randomFile(5 * 1024 * 1024)
  await sh(`cp '${source}' '${daemon.file('doomed')}'`)
  const script = `import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
head = os.read(fd, 1 << 20)
os.unlink(sys.argv[1])
print(os.path.exists(sys.argv[1]))
rest = bytes()
while chunk := os.read(fd, 1 << 20):
    rest += chunk
os.close(fd)
print(len(head + rest))`
  const out = await sh(`/usr/bin/python3 -c '${script}' '${daemon.file('doomed')}'`)
  t.equal(out, `False\n${5 * 1024 * 1024}\n`, 'gone from the directory at once, yet every byte read through the open file')
  for (let waited = 0; (await volumes(ws)).length > 0 && waited < 10_000; waited += 100) await sleep(100)
  t.same(await volumes(ws), [], 'the volume was deleted after the close')
  t.equal(await sh(`ls -A '${ws.mountpoint}'`), '', 'nothing left in the directory')
})

/** Opens a FIFO for writing once a reader holds it (ENXIO until then), or gives up after `ms`. */
async function openWriter(fifo: string, ms: number): Promise<FileHandle | undefined> {
  for (let waited = 0; waited < ms; waited += 20) {
    try {
      return await fs.open(fifo, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK)
    } catch (error) {
      if (errorCode(error) !== 'ENXIO') throw error
    }
    await sleep(20)
  }
  return undefined
}

// fuse3 only: libfuse2 never answers the kernel's interrupt, so under fuse-native the killed reader waits out the attach.
t.test('a reader killed while its read waits for a slow attach leaves nothing stuck', { skip: localOnly('the slow attach is a FIFO in the local backend\'s directory') || (onFuse3 ? false : 'fuse3 binding only: libfuse2 does not answer interrupts') }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws, ['--list-ttl', '3600', '--idle-detach', '0', '--seal-delay', '0'])
  const source = await randomFile(4 * 1024 * 1024)
  await sh(`cp '${source}' '${daemon.file('slow')}'`)
  await daemon.logged(lifecycleMessages.sealed)
  const id = await xattr(daemon.file('slow'), 'user.cinderfs.volume_id')
  // The attach reads the volume's record: as a FIFO it blocks until we feed it.
  const record = path.join(ws.localDir, `${id}.json`)
  await fs.rename(record, `${record}.real`)
  await sh(`mkfifo '${record}'`)
  const reader = spawn('dd', [`if=${daemon.file('slow')}`, 'of=/dev/null', 'bs=1M', 'iflag=direct'], { stdio: 'ignore' })
  let exitedYet = false
  const exited = new Promise(resolve => reader.on('exit', () => { exitedYet = true; resolve(undefined) }))
  // The attach has begun once the daemon holds the FIFO open for reading: only then does a writer's open succeed.
  const feed = await openWriter(record, 10_000)
  t.ok(feed !== undefined, 'the first read makes the daemon attach (it reads the volume\'s record)')
  t.notOk(exitedYet, 'the reader waits while the attach hangs')
  reader.kill('SIGKILL')
  const goneBeforeAttach = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)])
  t.ok(goneBeforeAttach, 'the reader is gone at once, though its read is still waiting for the attach')
  // The record is a file again for every later read; the attach that holds the FIFO gets the record once.
  await fs.rename(record, `${record}.fifo`)
  await fs.copyFile(`${record}.real`, record)
  if (feed !== undefined) {
    await feed.writeFile(await fs.readFile(`${record}.real`))
    await feed.close()
  }
  await exited
  await fs.rm(`${record}.fifo`)
  t.equal(await sha256(daemon.file('slow')), await sha256(source), 'a new reader reads the whole image')
  t.equal(await daemon.stop(), 0, 'the daemon stops cleanly')
  t.same(await loopsOf(ws), [], 'no loop device left')
})

t.test('mmap and O_DIRECT reads of an image; 1 MiB requests', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws, ['--metrics-addr', '127.0.0.1:0'])
  const source = await randomFile(16 * 1024 * 1024)
  await sh(`dd if='${source}' of='${daemon.file('image')}' bs=1M status=none`)
  const mmap = `import mmap, hashlib, sys
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    print(hashlib.sha256(m[:]).hexdigest())`
  t.equal((await sh(`/usr/bin/python3 -c '${mmap}' '${daemon.file('image')}'`)).trim(), await sha256(source), 'mmap reads the bytes')
  t.equal((await sh(`dd if='${daemon.file('image')}' bs=1M iflag=direct status=none | sha256sum`)).split(' ')[0], await sha256(source), 'dd iflag=direct reads the bytes')
  t.equal((await run(`dd if='${daemon.file('image')}' of=/dev/null bs=4096 skip=3 count=1 iflag=direct status=none`)).code, 0, 'an aligned 4 KiB O_DIRECT read works')
  const seen = await snapshot(daemon)
  if (onFuse3) {
    t.ok(seen.mib.write >= 8, `writes arrived as 1 MiB requests (${seen.mib.write})`)
    t.ok(seen.mib.read >= 8, `reads arrived as 1 MiB requests (${seen.mib.read})`)
  } else {
    t.equal(seen.upTo128K.write, seen.upTo128K.all.write, 'fuse-native: requests of at most 128 KiB (libfuse2)')
  }
})
