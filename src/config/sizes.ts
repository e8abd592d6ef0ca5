import { ConfigError } from '../errors/errors.js'

const units: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }

/** Parses `512M`, `1G`, `65536` (binary units, an optional `i`/`B` suffix). */
export function parseSize(flag: string, text: string): number {
  const m = /^(\d+)([KMGT]?)(?:i?B)?$/i.exec(text.trim())
  const unit = m === null ? undefined : units[(m[2] ?? '').toUpperCase()]
  if (m === null || unit === undefined) throw new ConfigError(`${flag}: '${text}' is not a size (examples: 1048576, 512K, 1M, 2G)`)
  return Number(m[1]) * unit
}

export function formatSize(bytes: number): string {
  for (const [suffix, unit] of [['T', 1024 ** 4], ['G', 1024 ** 3], ['M', 1024 ** 2], ['K', 1024]] as const) {
    if (bytes >= unit && bytes % unit === 0) return `${bytes / unit}${suffix}`
  }
  return String(bytes)
}
