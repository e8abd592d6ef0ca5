// Outages of the real Keystone + Cinder while mounts keep running: cinder-api
// stopped, cinder-volume stopped, Keystone tokens of 30 s. Scenarios that share
// an outage run side by side, each on a mount and project of its own, so the
// whole file costs one cinder-api restart, one cinder-volume restart and two
// Keystone restarts. Every wait is for an event (a log message the daemon
// exports, a state polled with a deadline), never a fixed sleep.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'
import t from 'tap'
import { lifecycleMessages } from '../../src/image/lifecycle.js'
import { CLEANUP_DEFERRED_MESSAGE, CLEANUP_DONE_MESSAGE, CLEANUP_LEFT_MESSAGE } from '../../src/janitor/janitor.js'
import { RETRYING_MESSAGE } from '../../src/openstack/http.js'
import { attachmentsOf, loopsOf, randomFile, startDaemon, volumes, workspace, type Daemon, type Workspace } from '../helpers/daemon.js'
import { openStackSuite, STATE_DIR } from '../helpers/openstack.js'
import { needsFuse } from '../helpers/requirements.js'
import { run, sh, xattr } from '../helpers/shell.js'

const MiB = 1024 * 1024
const GiB = 1024 * MiB
/** Keystone's token lifetime during this file: several expire in it. */
const TOKEN_SECONDS = 30
const scripts = path.resolve(__dirname, '../../../scripts/openstack')
const suite = openStackSuite(t)
const skip = suite.skip === false ? needsFuse() : suite.skip
const AUTHENTICATED = 'authenticated to Keystone'

// ------------------------------------------------------------------ helpers

async function service(action: 'stop' | 'start', name: 'cinder-api' | 'cinder-volume'): Promise<void> {
  await sh(`'${scripts}/service' ${action} ${name}`, { timeoutMs: 180_000 })
}

/** Runs scripts/openstack/up with this token lifetime (undefined: the default); only Keystone restarts. */
async function tokenLifetime(seconds: number | undefined): Promise<void> {
  const env = { ...process.env }
  if (seconds === undefined) delete env.CINDERFS_OS_TOKEN_EXPIRATION
  else env.CINDERFS_OS_TOKEN_EXPIRATION = String(seconds)
  const up = await run(`'${scripts}/up'`, { env, timeoutMs: 600_000 })
  if (up.code !== 0) throw new Error(`scripts/openstack/up failed: ${up.stderr.trim().split('\n').slice(-3).join(' | ')}`)
}

/** Polls `check` until it holds, for at most `seconds`. */
async function until(what: string, seconds: number, check: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + seconds * 1000
  while (!await check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${seconds} s waiting for: ${what}`)
    await new Promise(resolve => setTimeout(resolve, 250))
  }
}

type Entry = Record<string, unknown> & { msg?: string, time?: string }

/** The daemon's log lines with this message (and these fields). */
function logged(daemon: Daemon, msg: string, fields: Record<string, unknown> = {}): Entry[] {
  const out: Entry[] = []
  for (const line of daemon.logs().split('\n')) {
    if (!line.startsWith('{')) continue
    let entry: Entry
    try {
      entry = JSON.parse(line) as Entry
    } catch {
      continue // the line being written
    }
    if (entry.msg === msg && Object.entries(fields).every(([k, v]) => entry[k] === v)) out.push(entry)
  }
  return out
}

/** True when nothing of the workspace is attached, in Cinder or as a loop device. */
async function detachedAll(ws: Workspace): Promise<boolean> {
  return (await attachmentsOf(ws)).length === 0 && (await loopsOf(ws)).length === 0
}

function running(daemon: Daemon): boolean {
  return daemon.child.exitCode === null && daemon.child.signalCode === null
}

interface Held {
  send(command: Record<string, unknown>): Promise<{ ok: boolean, code?: string, md5?: string }>
}

/** A file held open by a process of its own (test/outage/holder.ts). */
async function hold(file: string, flags: 'w' | 'r'): Promise<Held> {
  const child = spawn(process.execPath, [path.join(__dirname, 'holder.js')], { stdio: ['pipe', 'pipe', 'inherit'] })
  t.teardown(() => { child.kill('SIGKILL') })
  const waiting: Array<(reply: { ok: boolean }) => void> = []
  readline.createInterface({ input: child.stdout }).on('line', line => { waiting.shift()?.(JSON.parse(line) as { ok: boolean }) })
  const held: Held = {
    send: async command => new Promise(resolve => {
      waiting.push(resolve)
      child.stdin.write(JSON.stringify(command) + '\n')
    }),
  }
  const opened = await held.send({ op: 'open', path: file, flags })
  if (!opened.ok) throw new Error(`could not open ${file}: ${JSON.stringify(opened)}`)
  return held
}

/** Mounts, each in a project of its own: the projects made side by side, the daemons one after the other (each authenticates at start). */
async function mounts(argsOf: string[][]): Promise<Array<{ ws: Workspace, daemon: Daemon }>> {
  const spaces = await Promise.all(argsOf.map(async () => workspace(t, 'cinder')))
  const out: Array<{ ws: Workspace, daemon: Daemon }> = []
  for (const [i, ws] of spaces.entries()) out.push({ ws, daemon: await startDaemon(ws, argsOf[i] ?? []) })
  return out
}

/**
 * A sparse source past 1 GiB: 8 MiB of random bytes at its start and 8 MiB
 * at its end, so writing the end grows the volume from 1 to 2 GiB.
 */
const SOURCE_SIZE = GiB + 16 * MiB
const HEAD = { pos: 0, len: 8 * MiB }
const TAIL = { pos: GiB + 8 * MiB, len: 8 * MiB }
async function sparseSource(): Promise<string> {
  const file = path.join(STATE_DIR, '..', `cinderfs-outage-source-${process.pid}`)
  const random = await randomFile(8 * MiB)
  await sh(`truncate -s ${SOURCE_SIZE} '${file}' && dd if='${random}' of='${file}' bs=1M conv=notrunc status=none && dd if='${random}' of='${file}' bs=1M seek=${TAIL.pos / MiB} conv=notrunc status=none`)
  t.teardown(() => fs.rmSync(file, { force: true }))
  return file
}

// ------------------------------------------------------------ the scenarios

t.test(`outages: cinder-api and cinder-volume restarts, tokens of ${TOKEN_SECONDS} s`, { skip }, async t => {
  const started = Date.now()
  const phase = (what: string): void => { t.comment(`${((Date.now() - started) / 1000).toFixed(0)} s: ${what}`) }
  // Keystone with short tokens for this file; the default again afterwards (if the rig still runs).
  await tokenLifetime(TOKEN_SECONDS)
  phase(`Keystone issues tokens of ${TOKEN_SECONDS} s`)
  t.teardown(async () => {
    if (fs.existsSync(path.join(STATE_DIR, 'run', 'keystone.pid'))) await tokenLifetime(undefined)
  })
  t.teardown(async () => {
    // a failed test must not leave the rig half stopped
    if (fs.existsSync(path.join(STATE_DIR, 'run', 'postgres.pid'))) {
      await service('start', 'cinder-api')
      await service('start', 'cinder-volume')
    }
  })
  const source = await sparseSource()
  const small = await randomFile(2 * MiB)
  // Scenarios that do not disturb each other share a mount.
  const [rides, past, idle, sigterm, volumeDown] = await mounts([
    ['--idle-detach', '1'], // the default --api-retry-window (60 s); later the long upload and read
    ['--api-retry-window', '3', '--cinder-state-timeout', '20'], // later the create while cinder-volume is down
    ['--idle-detach', '1', '--seal-delay', '0'], // its cold image must be sealed and detached before the outage
    ['--idle-detach', '1', '--api-retry-window', '5'],
    ['--idle-detach', '1'],
  ])
  if (rides === undefined || past === undefined || idle === undefined || sigterm === undefined || volumeDown === undefined) throw new Error('a mount is missing')
  const [long, createDown] = [rides, past]
  t.teardown(() => {
    // a failure is explained by the daemons' logs: keep them
    if (t.passing()) return
    for (const [name, m] of Object.entries({ rides, past, idle, sigterm, volumeDown })) {
      const file = path.join(os.tmpdir(), `cinderfs-outage-${name}.log`)
      fs.writeFileSync(file, m.daemon.logs())
      t.comment(`logs of the ${name} mount: ${file}`)
    }
  })

  // Before any outage: images to read, readers holding them, uploads under way.
  await Promise.all([
    sh(`cp '${small}' '${idle.daemon.file('held')}' && cp '${small}' '${idle.daemon.file('cold')}'`),
    sh(`cp '${small}' '${sigterm.daemon.file('held')}'`),
    sh(`cp '${small}' '${volumeDown.daemon.file('held')}'`),
    sh(`dd if='${source}' of='${long.daemon.file('read')}' bs=1M count=16 status=none`),
  ])
  const [riding, failing, idleReader, sigtermReader, volumeDownReader, longUpload, longReader] = await Promise.all([
    hold(rides.daemon.file('image'), 'w'),
    hold(past.daemon.file('image'), 'w'),
    hold(idle.daemon.file('held'), 'r'),
    hold(sigterm.daemon.file('held'), 'r'),
    hold(volumeDown.daemon.file('held'), 'r'),
    hold(long.daemon.file('image'), 'w'),
    hold(long.daemon.file('read'), 'r'),
  ])
  for (const [held, what] of [[riding, 'rides'], [failing, 'past'], [longUpload, 'long']] as const) {
    t.ok((await held.send({ op: 'copy', source, ...HEAD })).ok, `${what}: the first 8 MiB are written`)
  }
  await idle.daemon.logged(lifecycleMessages.sealed, { times: 2 })
  phase('mounted, images made, files held open')
  const ridesVolume = await xattr(rides.daemon.file('image'), 'user.cinderfs.volume_id')
  for (const reader of [idleReader, sigtermReader, volumeDownReader]) t.ok((await reader.send({ op: 'read', pos: 0, len: MiB })).ok, 'a reader attached its image')
  const longRead = await longReader.send({ op: 'read', pos: 0, len: MiB })
  const expectedHead = (await sh(`head -c ${MiB} '${source}' | md5sum`)).split(' ')[0]
  t.equal(longRead.md5, expectedHead, 'long read: the first MiB')

  // ------------------------------------------------- cinder-api stopped
  await service('stop', 'cinder-api')
  phase('cinder-api stopped')
  const apiStopped = Date.now()
  // writes past 1 GiB: the grow needs Cinder now
  t.ok((await riding.send({ op: 'copy', source, ...TAIL })).ok, 'rides: the write past 1 GiB waits in the write buffer')
  const ridingClose = riding.send({ op: 'close' })
  t.ok((await failing.send({ op: 'copy', source, ...TAIL })).ok, 'past: so does this one')
  const [failedClose, coldRead] = await Promise.all([
    failing.send({ op: 'close' }),
    run(`head -c 1 '${idle.daemon.file('cold')}'`),
    (async () => {
      await idleReader.send({ op: 'close' })
      await until('the idle detach to fail and be kept', 30, () => logged(idle.daemon, CLEANUP_DEFERRED_MESSAGE, { call: 'detach' }).length > 0)
    })(),
    until('the grow to retry', 30, () => logged(rides.daemon, RETRYING_MESSAGE, { volumeId: ridesVolume }).length > 0),
  ])
  t.notOk(failedClose.ok, 'past the window: close fails')
  t.equal(failedClose.code, 'EIO', 'with EIO')
  t.ok(logged(past.daemon, CLEANUP_DEFERRED_MESSAGE).length > 0, 'past the window: its cleanup is kept for later')
  t.match(coldRead.stderr, /Input\/output error/, 'a cold read fails fast with EIO')

  // SIGTERM while a cleanup is pending: a bounded stop that says what is left
  await sigtermReader.send({ op: 'close' })
  await until('the idle detach to fail and be kept', 30, () => logged(sigterm.daemon, CLEANUP_DEFERRED_MESSAGE, { call: 'detach' }).length > 0)
  const sigtermStarted = Date.now()
  const code = await sigterm.daemon.stop()
  t.not(code, null, `SIGTERM: the daemon exited by itself, in ${((Date.now() - sigtermStarted) / 1000).toFixed(1)} s`)
  t.ok(logged(sigterm.daemon, CLEANUP_LEFT_MESSAGE, { call: 'detach' }).length > 0, 'and logged the detach it left for recovery')

  await service('start', 'cinder-api')
  phase('cinder-api started')
  const apiBack = Date.now()
  t.comment(`cinder-api was stopped for ${((apiBack - apiStopped) / 1000).toFixed(1)} s`)

  const ridden = await ridingClose
  t.ok(ridden.ok, 'rides: close succeeds once cinder-api is back within the window')
  const readBack = run(`cmp '${source}' '${rides.daemon.file('image')}'`)
  await Promise.all([
    until('the failed upload to leave nothing', 60, async () => (await volumes(past.ws)).length === 0 && await detachedAll(past.ws)),
    until('the idle detach to be done', 60, async () => detachedAll(idle.ws)),
  ])
  t.pass('past the window: within a minute no volume, attachment or loop device is left')
  t.ok(running(past.daemon), 'and its daemon still runs')
  t.pass('idle detach during the outage: done once cinder-api is back')
  t.ok(logged(idle.daemon, CLEANUP_DONE_MESSAGE, { call: 'detach' }).length > 0, 'by the janitor')
  t.equal((await run(`head -c 1 '${idle.daemon.file('cold')}' | wc -c`)).stdout.trim(), '1', 'the cold read works again')

  phase('cinder-api outage: all checked but the restart after SIGTERM')
  const again = await startDaemon(sigterm.ws, ['--idle-detach', '1'])
  await until('recovery to delete the attachment the stopped daemon left', 60, async () => detachedAll(sigterm.ws))
  t.pass('SIGTERM: the next start finished the cleanup')
  t.ok(running(again), 'and serves')

  // --------------------------------------------- cinder-volume stopped
  await service('stop', 'cinder-volume')
  phase('cinder-volume stopped')
  const volumeStopped = new Date().toISOString()
  const [cp] = await Promise.all([
    run(`cp '${small}' '${createDown.daemon.file('image')}'`),
    (async () => {
      await volumeDownReader.send({ op: 'close' })
      // Cinder answers 500 once its RPC to cinder-volume times out; keep failing until a token was renewed in between.
      await until('a detach attempt with a renewed token', 240, () => {
        const first = logged(volumeDown.daemon, CLEANUP_DEFERRED_MESSAGE, { call: 'detach' })[0]
        if (first?.time === undefined) return false
        const renewed = logged(volumeDown.daemon, AUTHENTICATED).find(e => (e.time ?? '') > (first.time ?? ''))
        return renewed !== undefined && logged(volumeDown.daemon, CLEANUP_DEFERRED_MESSAGE, { call: 'detach' }).some(e => (e.time ?? '') > (renewed.time ?? ''))
      })
    })(),
  ])
  t.not(cp.code, 0, 'cp while cinder-volume is down fails')
  t.ok(logged(createDown.daemon, CLEANUP_DEFERRED_MESSAGE, { call: 'delete volume' }).some(e => (e.time ?? '') > volumeStopped), 'and the delete of its unfinished volume is kept for later')
  const refused = logged(volumeDown.daemon, CLEANUP_DEFERRED_MESSAGE, { call: 'detach' })
  t.ok(refused.some(e => e.status === 500), 'the detach got 500s')
  t.notOk(refused.some(e => e.status === 401), 'never a 401: each attempt had a valid token')
  await service('start', 'cinder-volume')
  phase('cinder-volume started')
  await Promise.all([
    until('the detach to be done', 120, async () => detachedAll(volumeDown.ws)),
    until('the unfinished volume to be deleted', 120, async () => (await volumes(createDown.ws)).length === 0),
  ])
  t.pass('a detach across token renewals while cinder-volume answered 500: done once it is back')
  t.pass('the volume created while cinder-volume was down: deleted once Cinder allowed it')
  t.ok(running(volumeDown.daemon) && running(createDown.daemon), 'both daemons still run')

  phase('cinder-volume outage: all checked')
  // ----------------------- a long upload and a long read, across expiries
  t.ok((await longUpload.send({ op: 'copy', source, ...TAIL })).ok, 'long upload: the write past 1 GiB, minutes after the first')
  t.ok((await longUpload.send({ op: 'close' })).ok, 'completes')
  const expected = (await sh(`md5sum '${source}'`)).split(' ')[0]
  t.equal(await xattr(long.daemon.file('image'), 'user.cinderfs.md5'), expected, 'with the source\'s md5')
  const rest = await longReader.send({ op: 'read', pos: MiB, len: 15 * MiB })
  t.equal(rest.md5, (await sh(`tail -c +${MiB + 1} '${source}' | head -c ${15 * MiB} | md5sum`)).split(' ')[0], 'long read: the rest, minutes after the first MiB')
  t.ok((await longReader.send({ op: 'close' })).ok)
  await until('the long read\'s idle detach', 60, async () => detachedAll(long.ws))
  t.ok(logged(long.daemon, AUTHENTICATED).length >= 2, `the long mount authenticated ${logged(long.daemon, AUTHENTICATED).length} times (tokens of ${TOKEN_SECONDS} s)`)

  phase('long upload and read checked')
  // the copy that rode out the cinder-api outage equals its source
  t.equal((await readBack).code, 0, 'rides: the copy equals the source')
  await until('the read-back to be detached', 30, async () => detachedAll(rides.ws))
  t.pass('and nothing of it stays attached')
})
