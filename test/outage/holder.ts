// A file held open in a process of its own, driven one command per stdin line
// (JSON) and answering one line each: the outage tests keep handles open across
// a service restart, and a close that blocks for a minute must not tie up the
// test process's own I/O threads.
//   {"op":"open","path":P,"flags":"w"|"r"}   {"op":"copy","source":S,"pos":N,"len":N}
//   {"op":"read","pos":N,"len":N} → md5      {"op":"close"}
import { createHash } from 'node:crypto'
import fs from 'node:fs/promises'
import readline from 'node:readline'

type Command =
  | { op: 'open', path: string, flags: 'w' | 'r' }
  | { op: 'copy', source: string, pos: number, len: number }
  | { op: 'read', pos: number, len: number }
  | { op: 'close' }

let file: fs.FileHandle | undefined

async function handle(command: Command): Promise<Record<string, unknown>> {
  switch (command.op) {
    case 'open':
      file = await fs.open(command.path, command.flags)
      return {}
    case 'copy': {
      const source = await fs.open(command.source, 'r')
      try {
        const buffer = Buffer.alloc(command.len)
        await source.read(buffer, 0, command.len, command.pos)
        await opened().write(buffer, 0, command.len, command.pos)
      } finally {
        await source.close()
      }
      return {}
    }
    case 'read': {
      const buffer = Buffer.alloc(command.len)
      const { bytesRead } = await opened().read(buffer, 0, command.len, command.pos)
      return { md5: createHash('md5').update(buffer.subarray(0, bytesRead)).digest('hex') }
    }
    case 'close':
      await opened().close()
      file = undefined
      return {}
  }
}

function opened(): fs.FileHandle {
  if (file === undefined) throw Object.assign(new Error('no file open'), { code: 'EBADF' })
  return file
}

const lines = readline.createInterface({ input: process.stdin })
let queue = Promise.resolve()
lines.on('line', line => {
  queue = queue.then(async () => {
    try {
      process.stdout.write(JSON.stringify({ ok: true, ...await handle(JSON.parse(line) as Command) }) + '\n')
    } catch (err) {
      const e = err as NodeJS.ErrnoException
      process.stdout.write(JSON.stringify({ ok: false, code: e.code ?? 'EIO', message: e.message }) + '\n')
    }
  })
})
lines.on('close', () => { void queue.then(() => process.exit(0)) })
