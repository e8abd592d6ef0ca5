import type { Config } from '../config/config.js'
import { listAll } from '../backends/volume-service.js'
import { errorMessage } from '../errors/errors.js'
import { candidates, EXIT, exitCodeOf, formatDecision, isUnreachable, summarize, type Decision } from '../glance/registration.js'
import type { Logger } from '../log/logger.js'
import { Janitor } from '../janitor/janitor.js'
import { fileNameOf } from '../store/names.js'
import { openBackend, openRegistration } from './backend.js'

/**
 * `cinderfs register`: one pass over the backend's image volumes whose names
 * are Glance image ids. Prints one line per image and a summary on stdout;
 * stops at the first sign that Glance cannot be reached, before touching the
 * next image, so nothing is left half done.
 */
export async function runRegister(config: Config, options: { dryRun: boolean, imageIds: string[] }, log: Logger, print: (line: string) => void): Promise<number> {
  // A one-shot command: a failed cleanup is only logged (the janitor's retries end with the process).
  const backend = await openBackend(config, log, new Janitor({ logger: log }))
  let glance
  try {
    glance = await openRegistration(config, options.dryRun, log)
  } catch (err) {
    await backend.service.close()
    throw err
  }
  try {
    const wanted = new Set(options.imageIds.map(id => id.toLowerCase()))
    const volumes = candidates(await listAll(backend.service))
      .filter(v => wanted.size === 0 || wanted.has(imageIdOf(v.name)))
      .sort((a, b) => a.name.localeCompare(b.name))
    let missing = 0
    for (const id of wanted) {
      if (volumes.some(v => imageIdOf(v.name) === id)) continue
      missing++
      print(`${'no-volume'.padEnd(14)} ${id}: no complete image volume image-${id} in the backend; nothing done`)
    }
    const decisions: Decision[] = []
    for (const [index, volume] of volumes.entries()) {
      try {
        decisions.push(await glance.registrar.register(volume))
        print(formatDecision(decisions[decisions.length - 1] as Decision))
      } catch (err) {
        const why = isUnreachable(err) ? `Glance at ${glance.endpoint} is unreachable` : 'Glance could not be asked'
        print(`${'failed'.padEnd(14)} ${imageIdOf(volume.name)} volume ${volume.id}: ${why} (${errorMessage(err)}); stopped, ${volumes.length - index - 1} more images not tried, nothing changed for this one`)
        print(summarize(decisions))
        return EXIT.failed
      }
    }
    print(summarize(decisions) + (missing === 0 ? '' : `; ${missing} image ids without a volume`))
    const code = exitCodeOf(decisions)
    return code === EXIT.ok && missing > 0 ? EXIT.skipped : code
  } finally {
    glance.close()
    await backend.service.close()
  }
}

function imageIdOf(volumeName: string): string {
  return (fileNameOf(volumeName) ?? '').toLowerCase()
}
