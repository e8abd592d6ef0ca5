import path from 'node:path'
import { fail } from '../errors/errors.js'

/**
 * An addon of native/ (built by scripts/setup), loaded on first use so a host
 * without its system library runs every other transport; ENOSYS saying what
 * to install when it is not built.
 */
export function nativeAddon<T>(dir: string, name: string, packages: string): { path: string, load: () => T } {
  const file = path.join(__dirname, '..', '..', '..', 'native', dir, 'build', 'Release', `${name}.node`)
  let loaded: T | undefined
  return {
    path: file,
    load: () => {
      if (loaded !== undefined) return loaded
      try {
        loaded = require(file) as T
      } catch (err) {
        fail('ENOSYS', `the ${dir} addon is not built (${file}): install ${packages}, then run scripts/setup`, {}, err)
      }
      return loaded
    },
  }
}
