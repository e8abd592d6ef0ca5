import { ConfigError } from '../errors/errors.js'

/** A Cinder API microversion such as 3.54 (major 3, minor 54). */
export interface Microversion {
  major: number
  minor: number
}

export function parseMicroversion(text: string): Microversion {
  const match = /^(\d+)\.(\d+)$/.exec(text.trim())
  if (match === null) throw new ConfigError(`not a microversion: ${text} (expected e.g. 3.54)`)
  return { major: Number(match[1]), minor: Number(match[2]) }
}

export function formatMicroversion(v: Microversion): string {
  return `${v.major}.${v.minor}`
}

export function compareMicroversions(a: Microversion, b: Microversion): number {
  return a.major - b.major || a.minor - b.minor
}

/**
 * The version both sides speak: the highest the client wants, capped by the
 * server's maximum; undefined when that is below the server's minimum.
 */
export function negotiate(client: Microversion, server: { min: Microversion, max: Microversion }): Microversion | undefined {
  const chosen = compareMicroversions(client, server.max) <= 0 ? client : server.max
  return compareMicroversions(chosen, server.min) >= 0 ? chosen : undefined
}
