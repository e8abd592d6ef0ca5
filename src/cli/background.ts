import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Config } from '../config/config.js'

/** Where a mount helper's daemon logs when no --log-file is given: one file per mount point. */
export function defaultLogFile(mountpoint: string): string {
  const dir = process.getuid?.() === 0 ? '/var/log/cinderfs' : path.join(os.tmpdir(), `cinderfs-${process.getuid?.() ?? 0}`)
  const name = mountpoint.replace(/^\/+/, '').replace(/\//g, '-') || 'root'
  return path.join(dir, `${name}.log`)
}

/**
 * mount(8) waits for its helper, so the helper must return once the file
 * system is mounted while the daemon goes on: the same command runs again
 * in a detached child (its own session, logs to a file), which reports over
 * an IPC channel when it is mounted. If the child exits first, its exit code
 * and the end of its log are the helper's answer.
 */
export async function mountInBackground(config: Config, argv: string[], script: string): Promise<number> {
  const logFile = config.logFile ?? defaultLogFile(config.mountpoint)
  fs.mkdirSync(path.dirname(logFile), { recursive: true, mode: 0o700 })
  const log = fs.openSync(logFile, 'a', 0o600)
  const child = spawn(process.execPath, [script, ...argv, '--foreground', `--log-file=${logFile}`], {
    detached: true, stdio: ['ignore', 'ignore', log, 'ipc'], env: { ...process.env, PATH: withSystemPath(process.env.PATH) },
  })
  fs.closeSync(log)
  const outcome = await new Promise<{ mounted: true } | { mounted: false, code: number }>(resolve => {
    child.on('message', message => { if (message === 'mounted') resolve({ mounted: true }) })
    child.on('exit', (code, signal) => resolve({ mounted: false, code: code ?? (signal === null ? 1 : 128 + (os.constants.signals[signal] ?? 0)) }))
  })
  if (outcome.mounted) {
    child.disconnect()
    child.unref()
    return 0
  }
  const tail = fs.readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-5).join('\n')
  process.stderr.write(`cinderfs: the daemon exited with code ${outcome.code} before mounting ${config.mountpoint}; the end of ${logFile}:\n${tail}\n`)
  return outcome.code === 0 ? 1 : outcome.code
}

/**
 * mount(8) runs its helpers with little or no PATH, but the daemon runs
 * losetup, fusermount and systemd-notify: the standard directories are added.
 */
function withSystemPath(current: string | undefined): string {
  const dirs = (current ?? '').split(':').filter(d => d !== '')
  for (const dir of ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']) if (!dirs.includes(dir)) dirs.push(dir)
  return dirs.join(':')
}

/** In the daemon a helper started: tells it the mount is ready and lets it go. */
export function reportMounted(): void {
  if (process.send === undefined) return
  process.send('mounted', () => process.disconnect())
}
