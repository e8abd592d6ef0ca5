import pino from 'pino'
import pretty from 'pino-pretty'

export type Logger = pino.Logger

/** JSON lines on stderr (or appended to `file`); human-readable when stderr is a terminal. */
export function createLogger(level: string, file?: string): Logger {
  const options = { level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }
  if (file !== undefined) return pino(options, pino.destination({ dest: file, append: true, mkdir: true, sync: true }))
  if (process.stderr.isTTY) return pino(options, pretty({ destination: 2, sync: true, translateTime: 'SYS:HH:MM:ss.l' }))
  return pino(options, pino.destination({ fd: 2, sync: true }))
}
