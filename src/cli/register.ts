import type { Config } from '../config/config.js'
import { listAll } from '../backends/volume-service.js'
import { errorMessage } from '../errors/errors.js'
import { candidates, EXIT, exitCodeOf, formatDecision, isUnreachable, summarize, type Decision } from '../glance/registration.js'
import type { Logger } from '../log/logger.js'
import { openBackend, openRegistration } from './backend.js'

/**
 * `cinderfs register`: one pass over the backend's image volumes whose names
 * are Glance image ids. Prints one line per image and a summary on stdout;
 * stops at the first sign that Glance cannot be reached, before touching the
 * next image, so nothing is left half done.
 */
export async function runRegister(config: Config, dryRun: boolean, log: Logger, print: (line: string) => void): Promise<number> {
  const backend = await openBackend(config, log)
  let glance
  try {
    glance = await openRegistration(config, dryRun, log)
  } catch (err) {
    await backend.service.close()
    throw err
  }
  try {
    const volumes = candidates(await listAll(backend.service)).sort((a, b) => a.name.localeCompare(b.name))
    const decisions: Decision[] = []
    for (const [index, volume] of volumes.entries()) {
      try {
        decisions.push(await glance.registrar.register(volume))
        print(formatDecision(decisions[decisions.length - 1] as Decision))
      } catch (err) {
        const why = isUnreachable(err) ? `Glance at ${glance.endpoint} is unreachable` : 'Glance could not be asked'
        print(`${'failed'.padEnd(14)} ${volume.name.slice('image-'.length)} volume ${volume.id}: ${why} (${errorMessage(err)}); stopped, ${volumes.length - index - 1} more images not tried, nothing changed for this one`)
        print(summarize(decisions))
        return EXIT.failed
      }
    }
    print(summarize(decisions))
    return exitCodeOf(decisions)
  } finally {
    glance.close()
    await backend.service.close()
  }
}
