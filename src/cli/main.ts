import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { ConfigError, errorMessage } from '../errors/errors.js'
import { isMounted, unmountLazily } from '../fuse/mount.js'
import { execFile } from 'node:child_process'
import { createLogger, type Logger } from '../log/logger.js'
import { parseCommand } from './args.js'
import { mountInBackground, reportMounted } from './background.js'
import { runMount } from './daemon.js'
import { runRegister } from './register.js'
import { runDoctor } from './doctor.js'
import { usage } from './help.js'
import { readPidFile, statusSocketFor } from './runtime.js'
import { formatStatus, queryStatus } from './status.js'
import { processAlive } from '../system/process.js'

async function main(argv: string[]): Promise<number> {
  let command
  try {
    command = parseCommand(argv)
  } catch (err) {
    return usageError(err)
  }
  switch (command.kind) {
    case 'help':
      process.stdout.write(usage)
      return 0
    case 'version':
      process.stdout.write(`${version()}\n`)
      return 0
    case 'unmount':
      return unmount(command.mountpoint)
    case 'status':
      return status(command.mountpoint, command.json)
    case 'doctor':
      return runDoctor(command.config, command.mountpoint, process.stdout)
    case 'mount': {
      if (command.background) return mountInBackground(command.config, argv, process.argv[1] ?? '')
      const log = createLogger(command.config.logLevel, command.config.logFile)
      try {
        return await runMount(command.config, log, () => {
          reportMounted()
          notifySystemd(log)
        })
      } catch (err) {
        if (err instanceof ConfigError) return usageError(err)
        log.fatal({ err: errorMessage(err) }, 'mount failed')
        return 1
      }
    }
    case 'register': {
      const log = createLogger(command.config.logLevel)
      try {
        return await runRegister(command.config, { dryRun: command.dryRun, imageIds: command.imageIds }, log, line => { process.stdout.write(`${line}\n`) })
      } catch (err) {
        if (err instanceof ConfigError) return usageError(err)
        process.stderr.write(`cinderfs register: ${errorMessage(err)}\n`)
        return 1
      }
    }
  }
}

/** Type=notify: tell systemd we are mounted (NotifyAccess=all lets systemd-notify speak for us). */
function notifySystemd(log: Logger): void {
  if (process.env.NOTIFY_SOCKET === undefined) return
  execFile('systemd-notify', ['--ready', `--pid=${process.pid}`], err => {
    if (err !== null) log.warn({ err: errorMessage(err) }, 'systemd-notify --ready failed')
  })
}

/** What the daemon on MOUNTPOINT does now, from its root-only socket. */
async function status(mountpoint: string, json: boolean): Promise<number> {
  if (process.geteuid?.() !== 0) {
    process.stderr.write('cinderfs: status needs root: the daemon answers only on a socket root can open\n')
    return 1
  }
  let report
  try {
    report = await queryStatus(statusSocketFor(mountpoint))
  } catch (err) {
    process.stderr.write(`cinderfs: no cinderfs daemon answers for ${mountpoint} (${errorMessage(err)})\n`)
    return 1
  }
  process.stdout.write(json ? `${JSON.stringify(report, null, 2)}\n` : formatStatus(report))
  return 0
}

function usageError(err: unknown): number {
  process.stderr.write(`cinderfs: ${errorMessage(err)}\n`)
  return 2
}

/** Asks the daemon to stop (it detaches everything); clears a mount whose daemon is gone. */
async function unmount(mountpoint: string): Promise<number> {
  const pid = await readPidFile(mountpoint)
  if (pid !== undefined && processAlive(pid)) {
    process.kill(pid, 'SIGTERM')
    for (let waited = 0; processAlive(pid); waited += 100) {
      if (waited > 120_000) {
        process.stderr.write(`cinderfs: daemon ${pid} did not stop within 120 s\n`)
        return 1
      }
      await sleep(100)
    }
    return 0
  }
  if (!await isMounted(mountpoint)) {
    process.stderr.write(`cinderfs: ${mountpoint} is not mounted\n`)
    return 2
  }
  await unmountLazily(mountpoint)
  return 0
}

function version(): string {
  const pkg: unknown = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8'))
  return typeof pkg === 'object' && pkg !== null && 'version' in pkg ? `cinderfs ${String(pkg.version)}` : 'cinderfs'
}

// Exit explicitly: worker threads or timers of a stopped mount must not keep the process alive.
main(process.argv.slice(2)).then(code => process.exit(code), (err: unknown) => {
  process.stderr.write(`cinderfs: ${errorMessage(err)}\n`)
  process.exit(1)
})
