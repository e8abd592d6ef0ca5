import fs from 'node:fs/promises'
import net from 'node:net'
import path from 'node:path'
import { errorMessage } from '../errors/errors.js'
import type { Logger } from '../log/logger.js'
import type { TransferView } from '../metrics/transfers.js'

/** What `cinderfs status` shows: what the daemon is doing now. Never a secret (no connection info, no credentials). */
export interface StatusReport {
  pid: number
  mountpoint: string
  backend: string
  startedAt: string
  transfers: TransferView[]
  attachments: Array<{ volumeId: string, attachmentId: string, mode: string, transport: string, seconds: number }>
  cache: { bytes: number, budgetBytes: number, hits: number, misses: number, evictions: number }
}

export interface StatusServer {
  close(): Promise<void>
}

/**
 * Answers every connection with one JSON report and closes it. The socket is
 * mode 0600 in a 0700 directory: only root (the daemon's user) may ask.
 */
export async function serveStatus(socket: string, report: () => StatusReport, logger: Logger): Promise<StatusServer> {
  await fs.mkdir(path.dirname(socket), { recursive: true, mode: 0o700 })
  // A socket file left by a daemon that died would make listen fail with EADDRINUSE.
  await fs.rm(socket, { force: true })
  const server = net.createServer(connection => {
    connection.on('error', () => undefined)
    connection.end(`${JSON.stringify(report())}\n`)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(socket, () => {
      server.off('error', reject)
      resolve()
    })
  })
  await fs.chmod(socket, 0o600)
  return {
    close: async () => {
      await new Promise<void>(resolve => server.close(() => resolve()))
      await fs.rm(socket, { force: true }).catch((err: unknown) => logger.warn({ socket, err: errorMessage(err) }, 'could not remove the status socket'))
    },
  }
}

export async function queryStatus(socket: string): Promise<StatusReport> {
  const text = await new Promise<string>((resolve, reject) => {
    let data = ''
    const connection = net.createConnection(socket)
    connection.setEncoding('utf8')
    connection.on('data', (chunk: string) => { data += chunk })
    connection.on('end', () => resolve(data))
    connection.on('error', reject)
  })
  return JSON.parse(text) as StatusReport
}

/** The report as tables for a human. */
export function formatStatus(r: StatusReport): string {
  const lines = [`cinderfs on ${r.mountpoint}: pid ${r.pid}, ${r.backend} backend, since ${r.startedAt}`, '']
  const table = (title: string, header: string[], rows: string[][]): void => {
    lines.push(`${title}: ${rows.length === 0 ? 'none' : ''}`.trimEnd())
    if (rows.length === 0) return
    const all = [header, ...rows]
    const widths = header.map((_, i) => Math.max(...all.map(row => (row[i] ?? '').length)))
    for (const row of all) lines.push(`  ${row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  ').trimEnd()}`)
  }
  const rate = (t: TransferView): string => `${(t.bytesPerSecond / 1e6).toFixed(1)} MB/s`
  const uploads = r.transfers.filter(t => t.kind === 'upload')
  const reads = r.transfers.filter(t => t.kind === 'read')
  table('Uploads', ['FILE', 'WRITTEN', 'RATE', 'ELAPSED'], uploads.map(t => [t.name, human(t.bytes), rate(t), duration(t.seconds)]))
  table('Reads', ['FILE', 'READ', 'SIZE', 'RATE', 'ELAPSED', 'LEFT'], reads.map(t => [
    t.name, human(t.bytes), t.size === undefined ? '?' : human(t.size), rate(t), duration(t.seconds), t.etaSeconds === undefined ? '?' : duration(t.etaSeconds),
  ]))
  table('Attachments', ['VOLUME', 'ATTACHMENT', 'MODE', 'TRANSPORT', 'HELD'], r.attachments.map(a => [a.volumeId, a.attachmentId, a.mode, a.transport, duration(a.seconds)]))
  const c = r.cache
  lines.push(`Cache: ${human(c.bytes)} of ${human(c.budgetBytes)}, ${c.hits} hits, ${c.misses} misses, ${c.evictions} evictions`)
  return `${lines.join('\n')}\n`
}

function duration(seconds: number): string {
  const s = Math.round(seconds)
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`
}

function human(bytes: number): string {
  for (const [suffix, unit] of [['TiB', 1024 ** 4], ['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (bytes >= unit) return `${(bytes / unit).toFixed(1)} ${suffix}`
  }
  return `${bytes} B`
}
