import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { CinderfsError } from '../errors/errors.js'

const run = promisify(execFile)

async function losetup(args: string[]): Promise<string> {
  try {
    const { stdout } = await run('losetup', args, { timeout: 30_000 })
    return stdout.trim()
  } catch (err) {
    const stderr = typeof err === 'object' && err !== null && 'stderr' in err ? String(err.stderr).trim() : ''
    throw new CinderfsError('EIO', `losetup ${args.join(' ')} failed: ${stderr || String(err)}`, { args }, { cause: err })
  }
}

/**
 * Attaches `file` to a free loop device (read-only for `ro`), with direct I/O
 * so the backing file's pages are not cached twice. Returns /dev/loopN.
 */
export async function attachLoop(file: string, readOnly: boolean): Promise<string> {
  const args = ['--find', '--show', '--direct-io=on']
  if (readOnly) args.push('--read-only')
  return losetup([...args, file])
}

export async function detachLoop(device: string): Promise<void> {
  await losetup(['--detach', device])
}

/** Tells the loop device that its backing file grew. */
export async function refreshLoopCapacity(device: string): Promise<void> {
  await losetup(['--set-capacity', device])
}

/** Loop devices whose backing file is `file` (left behind by a crash, for example). */
export async function loopsBackedBy(file: string): Promise<string[]> {
  const out = await losetup(['--associated', file, '--noheadings', '--output', 'NAME'])
  return out === '' ? [] : out.split('\n').map(line => line.trim()).filter(line => line !== '')
}
