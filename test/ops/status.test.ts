import fs from 'node:fs/promises'
import path from 'node:path'
import t from 'tap'
import { statusSocketFor } from '../../src/cli/runtime.js'
import type { StatusReport } from '../../src/cli/status.js'
import { PROGRESS_MESSAGE } from '../../src/metrics/transfers.js'
import { needsBackend, randomFile, startDaemon, workspace, type Daemon } from '../helpers/daemon.js'
import { run, sh } from '../helpers/shell.js'

const MiB = 1024 * 1024
const cli = path.join(__dirname, '..', '..', '..', 'bin', 'cinderfs')

/** Waits for the daemon's progress line about `name` of `kind` (they come every 5 s while bytes move). */
async function progressLine(daemon: Daemon, kind: string, name: string): Promise<Record<string, unknown>> {
  for (let waited = 0; waited < 30_000; waited += 100) {
    const line = daemon.logs().split('\n').filter(l => l.includes(`"msg":"${PROGRESS_MESSAGE}"`)).map(l => JSON.parse(l) as Record<string, unknown>)
      .find(l => l.kind === kind && l.name === name)
    if (line !== undefined) return line
    await sh('sleep 0.1')
  }
  throw new Error(`no ${kind} progress line for ${name}`)
}

t.test('status and progress lines during a long copy and a long read; status refused without root', { skip: needsBackend('local') }, async t => {
  const ws = await workspace(t, 'local')
  // Sealed at close: the read then attaches read-only on its own.
  const daemon = await startDaemon(ws, ['--seal-delay', '0'])
  await sh(`cp '${await randomFile(8 * MiB)}' '${daemon.file('library.raw')}'`)

  // Both copies stay open, as a long cp would be mid-way.
  const upload = await fs.open(daemon.file('incoming.qcow2'), 'w')
  t.teardown(async () => upload.close().catch(() => undefined))
  await upload.write(Buffer.alloc(6 * MiB, 7), 0, 6 * MiB, 0)
  const reader = await fs.open(daemon.file('library.raw'), 'r')
  t.teardown(async () => reader.close().catch(() => undefined))
  await reader.read(Buffer.alloc(2 * MiB), 0, 2 * MiB, 0)

  const wrote = await progressLine(daemon, 'upload', '/incoming.qcow2')
  t.equal(wrote.bytes, 6 * MiB, 'the upload progress line has the bytes so far')
  t.type(wrote.mbPerSecond, 'number', 'and the rate')
  const read = await progressLine(daemon, 'read', '/library.raw')
  t.equal(read.size, 8 * MiB, 'the read progress line knows the size')
  t.type(read.etaSeconds, 'number', 'so it estimates the time left')

  const json = await run(`'${cli}' status '${ws.mountpoint}' --json`)
  t.equal(json.code, 0, `status --json exits 0 ${json.stderr}`)
  const report = JSON.parse(json.stdout) as StatusReport
  t.equal(report.mountpoint, ws.mountpoint)
  t.equal(report.pid, daemon.child.pid, 'the daemon answers')
  const up = report.transfers.find(x => x.kind === 'upload')
  t.match(up, { name: '/incoming.qcow2', bytes: 6 * MiB }, 'the upload with its bytes')
  t.ok((up?.bytesPerSecond ?? 0) > 0, 'and its rate')
  t.match(report.transfers.find(x => x.kind === 'read'), { name: '/library.raw', size: 8 * MiB }, 'the read with its size')
  // (Not the upload's: spawning `cinderfs status` flushes the test's open writable fd, which finalises the upload provisionally and releases its attachment.)
  t.ok(report.attachments.some(a => a.mode === 'ro' && a.transport === 'local'), 'the read\'s attachment')
  t.ok(report.cache.bytes > 0 && report.cache.budgetBytes === 512 * MiB, 'cache use')

  const table = await run(`'${cli}' status '${ws.mountpoint}'`)
  t.equal(table.code, 0)
  t.match(table.stdout, /^Uploads:\n\s+FILE\s+WRITTEN\s+RATE\s+ELAPSED\n\s+\/incoming\.qcow2\s+6\.0 MiB\s+[\d.]+ MB\/s/m, 'a table for a human')
  t.match(table.stdout, /^Cache: /m)

  const socket = statusSocketFor(ws.mountpoint)
  t.equal((await fs.stat(socket)).mode & 0o777, 0o600, 'the socket is 0600')
  t.equal((await fs.stat(path.dirname(socket))).mode & 0o777, 0o700, 'in a 0700 directory')
  const nobody = await run(`setpriv --reuid=nobody --regid=nogroup --clear-groups '${process.execPath}' '${cli}' status '${ws.mountpoint}'`)
  t.equal(nobody.code, 1, 'refused without root')
  t.match(nobody.stderr, /status needs root/)
  const direct = await run(`setpriv --reuid=nobody --regid=nogroup --clear-groups '${process.execPath}' -e "require('net').connect('${socket}').on('error', e => { console.log(e.code); process.exit(3) })"`)
  t.equal(direct.stdout.trim(), 'EACCES', 'and the socket itself refuses other users')
})
