import type { MetricsSnapshot } from './daemon.js'

export interface Run {
  seconds: number
  /** Cores other sessions used during the run. */
  other: number
  /** False when the run started without the box going quiet first. */
  quiet: boolean
  /** Daemon CPU seconds (all threads) during the run. */
  cpu?: number
  /** Daemon VmHWM during the run, bytes. */
  rss?: number
  metrics?: MetricsSnapshot
}

export interface Row {
  id: number
  setup: string
  workload: string
  state: string
  kind: 'read' | 'write' | 'latency'
  /** Bytes moved per run (0 for latency rows). */
  bytes: number
  /** The raw baseline this row provides ... */
  key?: string
  /** ... or the one it is compared with. */
  ref?: string
  /** Least acceptable ratio to the baseline (issue 2's targets). */
  target?: number
  runs: Run[]
  redone: number
}

const MiB = 1024 ** 2
const GiB = 1024 ** 3
/** Issue 2: peak RSS at most the cache budget plus this. */
export const rssAllowance = 150 * MiB

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid] ?? 0 : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2
}

export function mbps(row: Row, run: Run): number {
  return row.bytes / 1e6 / run.seconds
}

export function medianMbps(row: Row): number {
  return median(row.runs.map(run => mbps(row, run)))
}

function ratio(row: Row, baselines: Row[]): number | undefined {
  if (row.ref === undefined) return undefined
  const base = baselines.find(b => b.key === row.ref)
  return base === undefined ? undefined : medianMbps(row) / medianMbps(base)
}

function histogram(sizes: Record<string, number>): string {
  const total = Object.values(sizes).reduce((a, b) => a + b, 0)
  if (total === 0) return ''
  return Object.entries(sizes).sort((a, b) => b[1] - a[1]).slice(0, 3)
    .map(([size, count]) => `${size} ${(100 * count / total).toFixed(count === total ? 0 : 1)}%`).join(', ')
}

function requests(row: Row): string {
  const sum = (pick: (m: MetricsSnapshot) => Record<string, number>): Record<string, number> => {
    const out: Record<string, number> = {}
    for (const run of row.runs) for (const [k, v] of Object.entries(run.metrics === undefined ? {} : pick(run.metrics))) out[k] = (out[k] ?? 0) + v
    return out
  }
  const parts: string[] = []
  const reads = histogram(sum(m => m.readSizes))
  const writes = histogram(sum(m => m.writeSizes))
  if (reads !== '') parts.push(`read ${reads}`)
  if (writes !== '') parts.push(`write ${writes}`)
  const served = row.runs.reduce((a, run) => a + (run.metrics?.bytesRead ?? 0), 0)
  const device = row.runs.reduce((a, run) => a + (run.metrics?.deviceBytes ?? 0), 0)
  if (served > 0 && row.bytes > 0) parts.push(`device ${(device / served).toFixed(2)}× of served`)
  return parts.join('; ')
}

function rssOk(row: Row, budget: number): boolean | undefined {
  const peaks = row.runs.map(run => run.rss).filter((r): r is number => r !== undefined)
  return peaks.length === 0 ? undefined : Math.max(...peaks) <= budget + rssAllowance
}

function targetText(row: Row, baselines: Row[], budget: number): string {
  const parts: string[] = []
  const r = ratio(row, baselines)
  if (row.target !== undefined && r !== undefined) parts.push(`≥${row.target.toFixed(2)}×: ${r >= row.target ? 'ok' : '**MISS**'}`)
  const rss = rssOk(row, budget)
  if (rss !== undefined) parts.push(`RSS ${rss ? 'ok' : '**MISS**'}`)
  return parts.join(', ')
}

/** A markdown table, as in /work/shared/reference/fuse-perf/NOTES.md. */
export function formatRows(rows: Row[], baselines: Row[], budget: number): string {
  const lines = [
    '| # | Setup | Workload | Cache state | MB/s min / **median** / max | × raw | Requests seen by daemon | Daemon CPU s/GiB | Peak RSS MiB | Other-load cores per run | Target |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for (const row of rows) {
    const values = row.runs.map(run => row.kind === 'latency' ? run.seconds * 1000 : mbps(row, run))
    const fmt = (v: number): string => row.kind === 'latency' ? v.toFixed(1) : v.toFixed(0)
    const speed = `${row.kind === 'latency' ? 'ms: ' : ''}${fmt(Math.min(...values))} / **${fmt(median(values))}** / ${fmt(Math.max(...values))}`
    const r = ratio(row, baselines)
    const cpus = row.runs.map(run => run.cpu).filter((c): c is number => c !== undefined)
    const cpu = cpus.length === 0 ? '' : row.bytes > 0 ? median(cpus).toFixed(2) : `${median(cpus).toFixed(2)} s`
    const peaks = row.runs.map(run => run.rss).filter((p): p is number => p !== undefined)
    const rss = peaks.length === 0 ? '' : (Math.max(...peaks) / MiB).toFixed(0)
    const perGiB = row.bytes > 0 && cpus.length > 0 ? (median(cpus) / (row.bytes / GiB)).toFixed(2) : cpu
    const load = row.runs.map(run => `${run.other.toFixed(2)}${run.quiet ? '' : '*'}`).join(', ') + (row.redone > 0 ? ` (${row.redone} redone)` : '')
    lines.push(`| ${row.id} | ${row.setup} | ${row.workload} | ${row.state} | ${speed} | ${r === undefined ? '' : `${r.toFixed(2)}×`} | ${requests(row)} | ${perGiB} | ${rss} | ${load} | ${targetText(row, baselines, budget)} |`)
  }
  return lines.join('\n')
}

/** One line per target: what was asked, what came out. */
export function formatTargets(rows: Row[], baselines: Row[], budget: number): string {
  const misses: string[] = []
  for (const row of rows) {
    const r = ratio(row, baselines)
    if (row.target !== undefined && r !== undefined && r < row.target) {
      misses.push(`#${row.id} ${row.workload} (${row.state}, ${row.setup}): ${r.toFixed(2)}× raw, target ${row.target.toFixed(2)}×`)
    }
    if (rssOk(row, budget) === false) {
      const peak = Math.max(...row.runs.map(run => run.rss ?? 0))
      misses.push(`#${row.id} ${row.workload} (${row.state}): peak RSS ${(peak / MiB).toFixed(0)} MiB > budget ${(budget / MiB).toFixed(0)} + 150 MiB`)
    }
  }
  return misses.length === 0 ? 'Targets (cold read ≥ 0.5× raw, write ≥ 0.25× raw, RSS ≤ budget + 150 MiB): all met.'
    : ['Targets missed (cold read ≥ 0.5× raw, write ≥ 0.25× raw, RSS ≤ budget + 150 MiB):', ...misses.map(m => `- ${m}`)].join('\n')
}
