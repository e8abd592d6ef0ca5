import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { ConfigError, errorMessage } from '../errors/errors.js'
import { isMounted, unmountLazily } from '../fuse/mount.js'
import { createLogger } from '../log/logger.js'
import { parseCommand } from './args.js'
import { runMount } from './daemon.js'
import { runRegister } from './register.js'
import { usage } from './help.js'
import { readPidFile } from './runtime.js'
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
    case 'mount': {
      const log = createLogger(command.config.logLevel)
      try {
        return await runMount(command.config, log)
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
