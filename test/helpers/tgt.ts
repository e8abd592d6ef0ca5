import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import fs from 'node:fs'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { iscsiAddonPath } from '../../src/connectors/iscsi-binding.js'
import { needsRoot } from './requirements.js'
import { sh } from './shell.js'

/**
 * The initiators logged in to the rig's tgtd (scripts/openstack/up, control
 * port 0), one per session: what an iSCSI session leak check looks at.
 */
export async function rigInitiators(): Promise<string[]> {
  const out = await sh('tgtadm --lld iscsi --op show --mode target')
  return [...out.matchAll(/^\s*Initiator: (\S+)/gm)].map(m => m[1] ?? '')
}

/** Why the tests that run their own tgtd cannot run here, or false (tap's `skip`). */
export function needsTgt(): string | false {
  const root = needsRoot()
  if (root !== false) return 'needs root (tgtd, the userspace iSCSI target)'
  if (!fs.existsSync('/usr/sbin/tgtd')) return 'needs tgtd (Debian package tgt; scripts/setup installs it as root)'
  if (!fs.existsSync(iscsiAddonPath)) return `needs the libiscsi addon ${iscsiAddonPath} (install libiscsi-dev, run scripts/setup)`
  return false
}

export interface TgtTarget {
  tid: number
  iqn: string
  file: string
  chap?: { username: string, password: string }
  readOnly?: boolean
}

/**
 * A private tgtd on 127.0.0.1:<free port> with its own control port (so it
 * never meets the rig's tgtd or another test's), serving files as LUN 1 of
 * its targets. kill() stops it the hard way, start() brings it back with the
 * same portal and targets.
 */
export class Tgt {
  readonly portal: string
  private child: ChildProcess | undefined
  private readonly targets: TgtTarget[] = []

  private constructor(readonly port: number, readonly controlPort: number) {
    this.portal = `127.0.0.1:${port}`
  }

  static async start(owner: { teardown(fn: () => unknown): void }): Promise<Tgt> {
    let controlPort = 0
    do controlPort = 1000 + Math.floor(Math.random() * 30000) // tgtd takes up to 32767
    while (fs.existsSync(`/var/run/tgtd/socket.${controlPort}`))
    const tgt = new Tgt(await freePort(), controlPort)
    owner.teardown(() => tgt.kill())
    await tgt.start()
    return tgt
  }

  async start(): Promise<void> {
    // -f: in the foreground, so it is our child and its pid ours to kill
    const child = spawn('/usr/sbin/tgtd', ['-f', '-C', String(this.controlPort), '--iscsi', `portal=${this.portal}`], { stdio: ['ignore', 'ignore', 'pipe'] })
    this.child = child
    let said = ''
    child.stderr?.on('data', (chunk: Buffer) => { said = (said + chunk.toString()).slice(-2000) })
    for (let i = 0; ; i++) {
      if (child.exitCode !== null) throw new Error(`tgtd exited ${child.exitCode}: ${said}`)
      if (await this.answers()) break
      if (i > 200) throw new Error('tgtd did not answer on its control socket within 10 s')
      await sleep(50)
    }
    for (const target of this.targets) await this.define(target)
  }

  /** SIGKILL (tgtd ignores SIGTERM while it has targets): its sessions end with it. */
  async kill(): Promise<void> {
    const child = this.child
    this.child = undefined
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGKILL')
    await once(child, 'exit')
    fs.rmSync(`/var/run/tgtd/socket.${this.controlPort}`, { force: true })
    fs.rmSync(`/var/run/tgtd/socket.${this.controlPort}.lock`, { force: true })
  }

  /** SIGSTOP / SIGCONT: a target that stops answering while its connections stay open. */
  signal(name: 'SIGSTOP' | 'SIGCONT'): void {
    this.child?.kill(name)
  }

  async addTarget(target: TgtTarget): Promise<void> {
    this.targets.push(target)
    await this.define(target)
  }

  async adm(...args: string[]): Promise<string> {
    return await sh(['tgtadm', '-C', String(this.controlPort), '--lld', 'iscsi', ...args].join(' '))
  }

  private async define(t: TgtTarget): Promise<void> {
    await this.adm('--op new --mode target --tid', String(t.tid), '-T', t.iqn)
    await this.adm('--op new --mode logicalunit --tid', String(t.tid), '--lun 1 -b', t.file)
    if (t.readOnly === true) await this.adm('--op update --mode logicalunit --tid', String(t.tid), '--lun 1 --params readonly=1')
    await this.adm('--op bind --mode target --tid', String(t.tid), '-I ALL')
    if (t.chap !== undefined) {
      await this.adm('--op new --mode account --user', t.chap.username, '--password', t.chap.password).catch(() => undefined) // accounts are per daemon
      await this.adm('--op bind --mode account --tid', String(t.tid), '--user', t.chap.username)
    }
  }

  private async answers(): Promise<boolean> {
    try {
      await sh(`tgtadm -C ${this.controlPort} --op show --mode sys`)
      return true
    } catch {
      return false
    }
  }
}

async function freePort(): Promise<number> {
  const server = net.createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const address = server.address()
  server.close()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return address.port
}
