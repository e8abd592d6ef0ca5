import { createHash } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'

/** The daemon's files for one mount point, in a directory only its user can enter (/run/cinderfs as root). */
function runFileFor(mountpoint: string, suffix: string): string {
  const dir = process.getuid?.() === 0 ? '/run/cinderfs' : path.join(os.tmpdir(), `cinderfs-${process.getuid?.() ?? 0}`)
  const key = createHash('sha256').update(mountpoint).digest('hex').slice(0, 16)
  return path.join(dir, `${key}.${suffix}`)
}

/**
 * The cinder backend's journal of its attachments for one mount point and
 * host. It must outlive a reboot (what it names stays in Cinder), so it is
 * kept under /var/lib/cinderfs (as root), not /run.
 */
export function attachJournalFor(mountpoint: string, host: string): string {
  const dir = process.getuid?.() === 0 ? '/var/lib/cinderfs/attaching' : path.join(os.homedir(), '.local', 'share', 'cinderfs', 'attaching')
  const key = createHash('sha256').update(`${host}\0${mountpoint}`).digest('hex').slice(0, 16)
  return path.join(dir, `${key}.json`)
}

/** Where a running daemon records its pid, so `cinderfs unmount` can ask it to stop cleanly. */
export function pidFileFor(mountpoint: string): string {
  return runFileFor(mountpoint, 'pid')
}

/** The daemon's status socket (`cinderfs status`). */
export function statusSocketFor(mountpoint: string): string {
  return runFileFor(mountpoint, 'sock')
}

export async function writePidFile(mountpoint: string): Promise<void> {
  const file = pidFileFor(mountpoint)
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 })
  await fs.writeFile(file, `${process.pid}\n`)
}

export async function readPidFile(mountpoint: string): Promise<number | undefined> {
  const text = await fs.readFile(pidFileFor(mountpoint), 'utf8').catch(() => '')
  const pid = Number.parseInt(text, 10)
  return Number.isInteger(pid) && pid > 0 ? pid : undefined
}

export async function removePidFile(mountpoint: string): Promise<void> {
  await fs.rm(pidFileFor(mountpoint), { force: true })
}
