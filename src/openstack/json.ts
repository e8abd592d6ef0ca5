import { CinderfsError } from '../errors/errors.js'

/**
 * Checked reads of JSON from OpenStack APIs: a reply that lacks a field we
 * rely on fails with one clear EIO instead of a TypeError three layers later.
 */
export type Json = Record<string, unknown>

function malformed(what: string): CinderfsError {
  return new CinderfsError('EIO', `unexpected reply from OpenStack: ${what}`)
}

export function object(value: unknown, what: string): Json {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw malformed(`${what} is not an object`)
  return value as Json
}

export function member(value: unknown, key: string): Json {
  return object(object(value, 'body')[key], key)
}

export function array(value: unknown, what: string): unknown[] {
  if (!Array.isArray(value)) throw malformed(`${what} is not a list`)
  return value
}

export function string(obj: Json, key: string): string {
  const value = obj[key]
  if (typeof value !== 'string') throw malformed(`${key} is not a string`)
  return value
}

export function optionalString(obj: Json, key: string): string | undefined {
  const value = obj[key]
  return typeof value === 'string' ? value : undefined
}

export function number(obj: Json, key: string): number {
  const value = obj[key]
  if (typeof value !== 'number') throw malformed(`${key} is not a number`)
  return value
}

/** String-valued map such as Cinder metadata; non-string values are dropped. */
export function stringMap(value: unknown): Record<string, string> {
  if (typeof value !== 'object' || value === null) return {}
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(value)) if (typeof v === 'string') out[k] = v
  return out
}
