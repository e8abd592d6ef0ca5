import { execFile } from 'node:child_process'

export interface Ran {
  code: number
  stdout: string
  stderr: string
}

/** Runs a bash command line the way a user types it; never throws, returns the exit code and output. */
export async function run(command: string, options: { timeoutMs?: number, env?: NodeJS.ProcessEnv } = {}): Promise<Ran> {
  return new Promise(resolve => {
    execFile('bash', ['-c', command], { timeout: options.timeoutMs ?? 300_000, maxBuffer: 64 * 1024 * 1024, env: options.env ?? process.env }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1
      resolve({ code, stdout, stderr })
    })
  })
}

/** Like run, but a non-zero exit is an error carrying stderr. */
export async function sh(command: string, options: { timeoutMs?: number } = {}): Promise<string> {
  const result = await run(command, options)
  if (result.code !== 0) throw new Error(`'${command}' exited ${result.code}: ${result.stderr.trim()}`)
  return result.stdout
}

export async function sha256(path: string): Promise<string> {
  return (await sh(`sha256sum '${path}'`)).split(' ')[0] ?? ''
}

/** Reads an extended attribute (the image's md5, sha512, volume id). */
export async function xattr(path: string, name: string): Promise<string> {
  return (await sh(`/usr/bin/python3 -c 'import os,sys; print(os.getxattr(sys.argv[1], sys.argv[2]).decode())' '${path}' '${name}'`)).trim()
}
