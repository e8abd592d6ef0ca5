import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import { formatSize, parseSize } from '../../src/config/sizes.js'
import { cliPath, Daemon, isMounted, metricsDelta, type MetricsSnapshot } from './daemon.js'
import { loadAverage, otherCores, peakRss, processCpu, resetPeakRss, sampleCpu } from './proc.js'
import { formatRows, formatTargets, type Row, type Run } from './report.js'

/*
 * The benchmark of issue 2 (not a test): raw device, then cinderfs reads and
 * writes of one image, cold and warm, medians of N runs gated on a quiet box.
 * Launched by scripts/bench, which made the work directory and removes it.
 */

const usage = `usage: scripts/bench [--size 2G] [--reps 3] [--cache-size 512M] [--block-size 1M]
                    [--compare-block-sizes 256K,1M,4M|none] [--quiet-cores 0.10] [--quiet-wait 60]
                    [--redo-cores 0.25] [--max-redo 2] [--only raw,write,read,latency,blocksize]
                    [--daemon-node-args '--cpu-prof'] [--json FILE] [--bindings fuse3,fuse-native]
                    [--images 10000] (list: ls -l of that many images) [--small 200] (small: 64 KiB images)
Every flag has an environment twin: BENCH_SIZE, BENCH_REPS, BENCH_CACHE_SIZE, ... (upper case, _ for -).
Needs root for loop devices and drop_caches; without root the raw target is a plain sparse file and
"cold" means its pages were dropped with dd iflag=nocache.`

interface Options {
  workdir: string
  size: number
  reps: number
  cacheSize: string
  blockSize: string
  compareBlockSizes: string[]
  quietCores: number
  quietWaitSeconds: number
  redoCores: number
  maxRedo: number
  only: Set<string>
  nodeArgs: string[]
  json: string | undefined
  bindings: string[]
  images: number
  small: number
}

const groups = ['raw', 'hash', 'write', 'read', 'latency', 'small', 'list', 'blocksize']
const MiB = 1024 ** 2
const GiB = 1024 ** 3

function parseOptions(argv: string[]): Options {
  const flags = {
    workdir: { type: 'string' }, size: { type: 'string' }, reps: { type: 'string' }, 'cache-size': { type: 'string' },
    'block-size': { type: 'string' }, 'compare-block-sizes': { type: 'string' }, 'quiet-cores': { type: 'string' },
    'quiet-wait': { type: 'string' }, 'redo-cores': { type: 'string' }, 'max-redo': { type: 'string' }, only: { type: 'string' },
    'daemon-node-args': { type: 'string' }, json: { type: 'string' }, bindings: { type: 'string' }, images: { type: 'string' },
    small: { type: 'string' }, help: { type: 'boolean', short: 'h' },
  } as const
  const { values } = parseArgs({ args: argv, options: flags, strict: true })
  if (values.help === true) {
    process.stdout.write(`${usage}\n`)
    process.exit(0)
  }
  const get = (name: Exclude<keyof typeof flags, 'help'>, fallback: string): string =>
    values[name] ?? process.env[`BENCH_${name.toUpperCase().replace(/-/g, '_')}`] ?? fallback
  const number = (name: 'reps' | 'quiet-cores' | 'quiet-wait' | 'redo-cores' | 'max-redo' | 'images' | 'small', fallback: string): number => {
    const n = Number(get(name, fallback))
    if (!Number.isFinite(n) || n < 0) refuse(`--${name}: '${get(name, fallback)}' is not a number`)
    return n
  }
  const workdir = get('workdir', '')
  if (workdir === '') refuse('--workdir is required (scripts/bench makes one)')
  const size = parseSize('--size', get('size', '2G'))
  if (size < GiB || size % MiB !== 0) refuse('--size: at least 1G, in whole MiB')
  const cacheSize = get('cache-size', '512M')
  const blockSize = get('block-size', '1M')
  parseSize('--cache-size', cacheSize)
  parseSize('--block-size', blockSize)
  const compare = get('compare-block-sizes', '256K,1M,4M')
  const compareBlockSizes = compare === 'none' || compare === '' ? [] : compare.split(',')
  for (const bs of compareBlockSizes) parseSize('--compare-block-sizes', bs)
  const only = new Set(get('only', groups.join(',')).split(','))
  for (const g of only) if (!groups.includes(g)) refuse(`--only: '${g}' is not one of ${groups.join(', ')}`)
  const nodeArgs = get('daemon-node-args', '').split(' ').filter(a => a !== '')
  const bindings = get('bindings', 'fuse3,fuse-native').split(',')
  for (const b of bindings) if (b !== 'fuse3' && b !== 'fuse-native') refuse(`--bindings: '${b}' is not fuse3 or fuse-native`)
  return {
    workdir, size, reps: Math.max(1, Math.floor(number('reps', '3'))), cacheSize, blockSize, compareBlockSizes,
    quietCores: number('quiet-cores', '0.10'), quietWaitSeconds: number('quiet-wait', '60'), redoCores: number('redo-cores', '0.25'),
    maxRedo: Math.floor(number('max-redo', '2')), only, nodeArgs, json: get('json', '') || undefined,
    bindings, images: Math.floor(number('images', '10000')), small: Math.floor(number('small', '200')),
  }
}

function refuse(message: string): never {
  process.stderr.write(`bench: ${message}\n`)
  process.exit(2)
}

function say(message: string): void {
  process.stderr.write(`bench: ${message}\n`)
}

function hasCommand(name: string): boolean {
  return spawnSync('bash', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0
}

/** Everything the run needs, checked before anything is created. */
function preflight(o: Options, root: boolean): void {
  if (process.platform !== 'linux') refuse('needs Linux (FUSE, /proc)')
  const missing = ['dd', 'cat', 'cp', 'sync', 'rm', 'fusermount', ...(root ? ['losetup'] : [])].filter(c => !hasCommand(c))
  if (missing.length > 0) refuse(`missing commands: ${missing.join(', ')} (scripts/setup installs them)`)
  if (!fs.existsSync('/dev/fuse')) refuse('/dev/fuse does not exist (no FUSE in this kernel or container)')
  if (!fs.existsSync(cliPath)) refuse(`${cliPath} is missing: run scripts/setup`)
  if (root && !fs.existsSync('/dev/loop-control')) refuse('no /dev/loop-control: loop devices are unavailable')
  const stat = fs.statfsSync(o.workdir)
  const needed = 4 * o.size + GiB
  if (stat.bavail * stat.bsize < needed) {
    refuse(`${o.workdir} has ${formatSize(stat.bavail * stat.bsize)} free; the run needs ${(needed / GiB).toFixed(1)} GiB (source, raw device, two images)`)
  }
}

/** Children we wait for; Ctrl-C stops them. */
let current: ChildProcess | undefined

async function run(argv: string[]): Promise<void> {
  const [command, ...args] = argv
  if (command === undefined) throw new Error('empty command')
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  current = child
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject)
    child.once('exit', (c, signal) => resolve(signal === null ? c : 128))
  })
  current = undefined
  if (code !== 0) throw new Error(`${argv.join(' ')} failed (${String(code)}): ${stderr.trim()}`)
}

const shell = (script: string, ...args: string[]): string[] => ['bash', '-c', script, 'bench', ...args]

class Bench {
  private readonly root = process.getuid?.() === 0
  private readonly src: string
  private readonly rawFile: string
  private rawDevice = ''
  private readonly localDir: string
  private readonly mnt: string
  private readonly logFile: string
  private daemon: Daemon
  private binding: string
  private nextRow = 1
  readonly rows: Row[] = []
  readonly blockRows: Row[] = []
  readonly notes: string[] = []
  /** Name (in the mount) of the finalised image the read rows read. */
  private readImage: string | undefined

  constructor(private readonly o: Options) {
    this.src = path.join(o.workdir, 'source.bin')
    this.rawFile = path.join(o.workdir, 'raw.img')
    this.localDir = path.join(o.workdir, 'volumes')
    this.mnt = path.join(o.workdir, 'mnt')
    this.logFile = path.join(o.workdir, 'cinderfs.log')
    this.binding = o.bindings[0] ?? 'fuse3'
    this.daemon = this.newDaemon(o.blockSize)
  }

  private newDaemon(blockSize: string): Daemon {
    return new Daemon({ mountpoint: this.mnt, localDir: this.localDir, logFile: this.logFile, cacheSize: this.o.cacheSize, blockSize, nodeArgs: this.o.nodeArgs, fuseBinding: this.binding })
  }

  /** The rows that follow run on `binding`'s daemon (a fresh one; the images stay in the local directory). */
  async useBinding(binding: string): Promise<void> {
    await this.daemon.stop()
    this.binding = binding
    this.daemon = this.newDaemon(this.o.blockSize)
  }

  get isRoot(): boolean {
    return this.root
  }

  get budget(): number {
    return parseSize('--cache-size', this.o.cacheSize)
  }

  async prepare(): Promise<void> {
    fs.mkdirSync(this.localDir)
    fs.mkdirSync(this.mnt)
    say(`writing ${formatSize(this.o.size)} of random bytes to ${this.src}`)
    await run(['dd', 'if=/dev/urandom', `of=${this.src}`, 'bs=1M', `count=${this.o.size / MiB}`, 'iflag=fullblock', 'status=none'])
    await run(['truncate', '-s', String(this.o.size), this.rawFile])
    if (this.root) {
      // The same loop setup as the local backend's attachments (src/backends/loop-devices.ts).
      const out = spawnSync('losetup', ['--find', '--show', '--direct-io=on', this.rawFile], { encoding: 'utf8' })
      if (out.status !== 0) throw new Error(`losetup failed: ${out.stderr.trim()}`)
      this.rawDevice = out.stdout.trim()
    } else {
      this.rawDevice = this.rawFile
    }
  }

  /** Best effort, in order; never throws. Runs on success, failure and Ctrl-C. */
  async cleanup(): Promise<void> {
    current?.kill('SIGTERM')
    const attempt = async (what: string, work: () => Promise<void> | void): Promise<void> => {
      try {
        await work()
      } catch (err) {
        say(`cleanup: ${what}: ${err instanceof Error ? err.message : String(err)}`)
      }
    }
    await attempt('stopping cinderfs', async () => this.daemon.stop())
    await attempt('unmounting', () => { if (isMounted(this.mnt)) spawnSync('fusermount', ['-u', '-z', this.mnt]) })
    await attempt('detaching loop devices', () => {
      if (!this.root) return
      const files = [this.rawFile, ...(fs.existsSync(this.localDir) ? fs.readdirSync(this.localDir).filter(f => f.endsWith('.img')).map(f => path.join(this.localDir, f)) : [])]
      for (const file of files) {
        const out = spawnSync('losetup', ['--associated', file, '--noheadings', '--output', 'NAME'], { encoding: 'utf8' })
        for (const device of out.stdout.split('\n').map(l => l.trim()).filter(l => l !== '')) {
          const detached = spawnSync('losetup', ['--detach', device], { encoding: 'utf8' })
          if (detached.status !== 0) say(`cleanup: losetup --detach ${device}: ${detached.stderr.trim()}`)
        }
      }
    })
    await attempt('removing files', () => {
      for (const entry of fs.readdirSync(this.o.workdir)) {
        if (entry === 'mnt' && isMounted(this.mnt)) continue
        fs.rmSync(path.join(this.o.workdir, entry), { recursive: true, force: true })
      }
    })
  }

  private async dropCaches(): Promise<void> {
    await run(['sync'])
    if (this.root) {
      fs.writeFileSync('/proc/sys/vm/drop_caches', '3')
      return
    }
    const files = [this.rawFile, ...fs.readdirSync(this.localDir).filter(f => f.endsWith('.img')).map(f => path.join(this.localDir, f))]
    for (const file of files) await run(['dd', `if=${file}`, 'iflag=nocache', 'count=0', 'status=none'])
  }

  private ourPids(): number[] {
    const pids = [process.pid]
    if (this.daemon.pid !== undefined) pids.push(this.daemon.pid)
    return pids
  }

  /** Waits (bounded) until other sessions use few cores; false when it gave up waiting. */
  private async waitQuiet(): Promise<boolean> {
    const deadline = Date.now() + this.o.quietWaitSeconds * 1000
    for (;;) {
      const before = sampleCpu(this.ourPids())
      await sleep(2000)
      const other = otherCores(before, sampleCpu(this.ourPids()))
      if (other < this.o.quietCores) return true
      if (Date.now() >= deadline) {
        say(`box not quiet (other sessions use ${other.toFixed(2)} cores); running anyway`)
        return false
      }
    }
  }

  /**
   * One table row: `reps` accepted runs of `work`. A run during which other
   * sessions used more than --redo-cores is done again (at most --max-redo times per run).
   */
  private async measure(
    table: Row[],
    row: Omit<Row, 'id' | 'runs' | 'redone'>,
    step: { prepare?: () => Promise<void>, work: () => Promise<void>, after?: () => Promise<void> },
  ): Promise<Row> {
    const full: Row = { ...row, id: this.nextRow++, runs: [], redone: 0 }
    say(`#${full.id} ${full.setup} | ${full.workload} | ${full.state}`)
    for (let rep = 0; rep < this.o.reps; rep++) {
      for (let attempt = 0; ; attempt++) {
        await step.prepare?.()
        const quiet = await this.waitQuiet()
        const pid = this.daemon.pid
        const before: MetricsSnapshot | undefined = pid === undefined ? undefined : await this.daemon.metrics()
        if (pid !== undefined) resetPeakRss(pid)
        const cpu0 = pid === undefined ? 0 : processCpu(pid)
        const s0 = sampleCpu(this.ourPids())
        const t0 = performance.now()
        await step.work()
        const seconds = (performance.now() - t0) / 1000
        const s1 = sampleCpu(this.ourPids())
        const result: Run = { seconds, other: otherCores(s0, s1), quiet }
        if (pid !== undefined && before !== undefined) {
          result.cpu = processCpu(pid) - cpu0
          result.rss = peakRss(pid)
          result.metrics = metricsDelta(before, await this.daemon.metrics())
        }
        await step.after?.()
        say(`  run ${rep + 1}: ${(full.bytes > 0 ? `${(full.bytes / 1e6 / seconds).toFixed(0)} MB/s` : `${(seconds * 1000).toFixed(1)} ms`)}, other load ${result.other.toFixed(2)} cores`)
        // Below ~1 s the 10 ms CPU ticks make the load figure meaningless; only longer runs are redone.
        if (seconds >= 1 && result.other > this.o.redoCores && attempt < this.o.maxRedo) {
          full.redone++
          say('  other sessions were busy during that run; again')
          continue
        }
        full.runs.push(result)
        break
      }
    }
    table.push(full)
    return full
  }

  private async restartDaemon(): Promise<void> {
    await this.daemon.stop()
    await this.dropCaches()
    await this.daemon.start()
  }

  private async ensureDaemon(): Promise<void> {
    if (!this.daemon.running) await this.daemon.start()
  }

  private async primeSource(): Promise<void> {
    await run(shell('cat "$1" > /dev/null', this.src))
  }

  async rawRows(): Promise<void> {
    const setup = this.root ? `raw loop device (direct-io=on) over a sparse file` : 'raw sparse file (not root: no loop device)'
    const write = this.root ? ['conv=fsync'] : ['conv=notrunc,fsync']
    const bytes = this.o.size
    await this.measure(this.rows, { setup, workload: 'write dd bs=1M conv=fsync (source in page cache)', state: '-', kind: 'write', bytes, key: 'raw-write' }, {
      prepare: async () => this.primeSource(),
      work: async () => run(['dd', `if=${this.src}`, `of=${this.rawDevice}`, 'bs=1M', ...write, 'status=none']),
    })
    await this.measure(this.rows, { setup, workload: 'read dd bs=1M', state: 'cold', kind: 'read', bytes, key: 'raw-cold' }, {
      prepare: async () => this.dropCaches(),
      work: async () => run(['dd', `if=${this.rawDevice}`, 'of=/dev/null', 'bs=1M', 'status=none']),
    })
    await this.measure(this.rows, { setup, workload: 'read dd bs=1M', state: 'warm (read again, no drop_caches)', kind: 'read', bytes, key: 'raw-warm' }, {
      prepare: async () => run(['dd', `if=${this.rawDevice}`, 'of=/dev/null', 'bs=1M', 'status=none']),
      work: async () => run(['dd', `if=${this.rawDevice}`, 'of=/dev/null', 'bs=1M', 'status=none']),
    })
  }

  private setupLabel(blockSize: string): string {
    return `cinderfs ${this.binding} --cache-size ${this.o.cacheSize} --block-size ${blockSize}`
  }

  /** What md5 and sha512 allow: both over the same (page-cached) bytes at once, one thread each, as the upload hashes. */
  async hashRows(): Promise<void> {
    await this.measure(this.rows, { setup: 'md5sum and sha512sum in parallel (no FUSE)', workload: 'hash the source (in page cache)', state: '-', kind: 'write', bytes: this.o.size, key: 'hash' }, {
      prepare: async () => this.primeSource(),
      work: async () => run(shell('md5sum "$1" > /dev/null & sha512sum "$1" > /dev/null; wait', this.src)),
    })
  }

  /** Many small images, one cp each: the per-file cost (create, attach, finalise, seal). */
  async smallRows(): Promise<void> {
    await this.ensureDaemon()
    const small = path.join(this.o.workdir, 'small.bin')
    await run(['dd', 'if=/dev/urandom', `of=${small}`, 'bs=64K', 'count=1', 'status=none'])
    let round = 0
    await this.measure(this.rows, { setup: this.setupLabel(this.o.blockSize), workload: `cp of ${this.o.small} images of 64 KiB, one after another`, state: 'new images', kind: 'latency', bytes: 0 }, {
      prepare: async () => { round++ },
      work: async () => run(shell('for i in $(seq 1 "$3"); do cp "$1" "$2/small-$4-$i"; done', small, this.mnt, String(this.o.small), `${this.binding}-${round}`)),
      after: async () => run(shell('rm -f "$1"/small-*', this.mnt)),
    })
  }

  /** ls -l of --images images, right after a mount (cold) and again (warm). Made through the backend, not by cp. */
  async listRows(): Promise<void> {
    await this.makeImages()
    const setup = this.setupLabel(this.o.blockSize)
    const ls = async (): Promise<void> => run(shell('ls -l "$1" > /dev/null', this.mnt))
    await this.measure(this.rows, { setup, workload: `ls -l of ${this.o.images} images`, state: 'cold (fresh mount)', kind: 'latency', bytes: 0 }, {
      prepare: async () => this.restartDaemon(),
      work: ls,
    })
    await this.measure(this.rows, { setup, workload: `ls -l of ${this.o.images} images`, state: 'warm (listed before)', kind: 'latency', bytes: 0 }, {
      work: ls,
    })
  }

  private imagesMade = false

  private async makeImages(): Promise<void> {
    if (this.imagesMade) return
    this.imagesMade = true
    await this.daemon.stop()
    say(`making ${this.o.images} images through the local backend (untimed)`)
    await run([process.execPath, path.join(__dirname, 'images.js'), this.localDir, String(this.o.images)])
  }

  async writeRows(): Promise<void> {
    await this.ensureDaemon()
    const setup = this.setupLabel(this.o.blockSize)
    const bytes = this.o.size
    let n = 0
    const writes: Array<[string, (target: string) => string[]]> = [
      ['write cp (source in page cache)', target => ['cp', this.src, target]],
      ['write dd bs=1M conv=fsync (source in page cache)', target => ['dd', `if=${this.src}`, `of=${target}`, 'bs=1M', 'conv=fsync', 'status=none']],
    ]
    for (const [workload, command] of writes) {
      let target = ''
      await this.measure(this.rows, { setup, workload, state: 'new image (includes finalise at close)', kind: 'write', bytes, ref: 'raw-write', target: 0.25 }, {
        prepare: async () => {
          target = path.join(this.mnt, `bench-write-${this.binding}-${++n}`)
          await this.primeSource()
        },
        work: async () => run(command(target)),
        after: async () => {
          await this.checkSize(target)
          // Keep one finalised image for the read rows; delete the others (untimed).
          if (this.readImage === undefined) this.readImage = path.basename(target)
          else fs.rmSync(target)
          await run(['sync'])
        },
      })
    }
  }

  private async checkSize(file: string): Promise<void> {
    const size = (await fs.promises.stat(file)).size
    if (size !== this.o.size) throw new Error(`${file} has ${size} bytes after the write, not ${this.o.size}`)
  }

  /** The image the read rows read: one the write rows left, or a fresh (untimed) copy. */
  private async image(): Promise<string> {
    await this.ensureDaemon()
    if (this.readImage === undefined) {
      say('writing the image the read rows read (untimed)')
      await run(['cp', this.src, path.join(this.mnt, 'bench-read')])
      this.readImage = 'bench-read'
    }
    return path.join(this.mnt, this.readImage)
  }

  async readRows(): Promise<void> {
    const image = await this.image()
    const setup = this.setupLabel(this.o.blockSize)
    const bytes = this.o.size
    const reads: Array<[string, string[]]> = [
      ['read dd bs=1M', ['dd', `if=${image}`, 'of=/dev/null', 'bs=1M', 'status=none']],
      ['read cat', shell('cat "$1" > /dev/null', image)],
    ]
    for (const [workload, command] of reads) {
      await this.measure(this.rows, { setup, workload, state: 'cold (drop_caches + fresh mount; includes the lazy attach)', kind: 'read', bytes, ref: 'raw-cold', target: 0.5 }, {
        prepare: async () => this.restartDaemon(),
        work: async () => run(command),
      })
      // The previous row's last run left this daemon attached and its cache filled with the image's tail.
      await this.measure(this.rows, { setup, workload, state: 'warm (same mount, read again; no drop_caches)', kind: 'read', bytes, ref: 'raw-warm' }, {
        work: async () => run(command),
      })
      // Cold device and kernel caches, but the daemon stays: no attach, no fresh cache memory. With an
      // image larger than the budget none of its head is cached (the last read went through all of it).
      await this.measure(this.rows, { setup, workload, state: 'cold (drop_caches, same mount: evicted cache, attached)', kind: 'read', bytes, ref: 'raw-cold', target: 0.5 }, {
        prepare: async () => this.dropCaches(),
        work: async () => run(command),
      })
    }
  }

  async latencyRows(): Promise<void> {
    const image = await this.image()
    const setup = this.setupLabel(this.o.blockSize)
    const firstByte = async (): Promise<void> => {
      const handle = await fs.promises.open(image, 'r')
      try {
        await handle.read(Buffer.alloc(4096), 0, 4096, 0)
      } finally {
        await handle.close()
      }
    }
    await this.measure(this.rows, { setup, workload: 'open + first 4 KiB read', state: 'cold (drop_caches + fresh mount: lazy attach)', kind: 'latency', bytes: 0 }, {
      prepare: async () => this.restartDaemon(),
      work: firstByte,
    })
    await this.measure(this.rows, { setup, workload: 'open + first 4 KiB read', state: 're-open (attached, block cached)', kind: 'latency', bytes: 0 }, {
      work: firstByte,
    })
  }

  async blockSizeRows(): Promise<void> {
    const image = await this.image()
    for (const blockSize of this.o.compareBlockSizes) {
      await this.daemon.stop()
      this.daemon = this.newDaemon(blockSize)
      await this.measure(this.blockRows, {
        setup: this.setupLabel(blockSize), workload: 'read dd bs=1M', state: 'cold (drop_caches + fresh mount)', kind: 'read',
        bytes: this.o.size, ref: 'raw-cold', target: 0.5,
      }, {
        prepare: async () => this.restartDaemon(),
        work: async () => run(['dd', `if=${image}`, 'of=/dev/null', 'bs=1M', 'status=none']),
      })
    }
    await this.daemon.stop()
    this.daemon = this.newDaemon(this.o.blockSize)
  }

  async finish(): Promise<void> {
    await this.daemon.stop()
  }
}

function header(o: Options, bench: Bench, loadStart: string): string {
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU'
  return [
    `cinderfs benchmark ${new Date().toISOString()}`,
    `machine: ${os.cpus().length} x ${cpu}, ${(os.totalmem() / GiB).toFixed(0)} GiB RAM, kernel ${os.release()}, node ${process.version}`,
    `image ${formatSize(o.size)} of random bytes; ${o.reps} accepted runs per row (min / median / max); MB = 10^6 bytes`,
    `raw target: ${bench.isRoot ? 'loop device with --direct-io=on over a sparse file, as the local backend attaches volumes' : 'the sparse file itself (not root)'}`,
    `cold: ${bench.isRoot ? 'sync; echo 3 > /proc/sys/vm/drop_caches' : 'sync; dd iflag=nocache count=0 on each backing file (not root)'}; for cinderfs also a fresh mount (empty block cache, volume not attached)`,
    `gating: wait up to ${o.quietWaitSeconds} s for other sessions < ${o.quietCores} cores over 2 s; redo a run when they used > ${o.redoCores} cores (* = ran without a quiet start)`,
    `load average at start: ${loadStart}; at end: ${loadAverage()}`,
  ].join('\n')
}

async function main(): Promise<number> {
  const o = parseOptions(process.argv.slice(2))
  const bench = new Bench(o)
  preflight(o, bench.isRoot)
  if (!bench.isRoot) say('not root: no loop device and no global drop_caches (see --help)')
  let cleaning: Promise<void> | undefined
  const cleanup = async (): Promise<void> => { cleaning ??= bench.cleanup(); await cleaning }
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => {
      say(`${signal}: cleaning up`)
      void cleanup().finally(() => process.exit(130))
    })
  }
  const loadStart = loadAverage()
  try {
    await bench.prepare()
    if (o.only.has('raw')) await bench.rawRows()
    if (o.only.has('hash')) await bench.hashRows()
    for (const binding of o.bindings) {
      await bench.useBinding(binding)
      if (o.only.has('write')) await bench.writeRows()
      if (o.only.has('read')) await bench.readRows()
      if (o.only.has('latency')) await bench.latencyRows()
      if (o.only.has('small')) await bench.smallRows()
    }
    for (const binding of o.bindings) {
      await bench.useBinding(binding)
      if (o.only.has('list')) await bench.listRows()
    }
    if (o.only.has('blocksize') && o.compareBlockSizes.length > 0) await bench.blockSizeRows()
    await bench.finish()
  } catch (err) {
    say(`failed: ${err instanceof Error ? err.message : String(err)}`)
    await cleanup()
    // What was measured before the failure is still worth having.
    if (bench.rows.length > 0) process.stdout.write(`${formatRows(bench.rows, bench.rows, bench.budget)}\n`)
    return 1
  }
  await cleanup()
  const budget = bench.budget
  const out = [
    header(o, bench, loadStart), '',
    formatRows(bench.rows, bench.rows, budget), '',
  ]
  if (bench.blockRows.length > 0) out.push(`Block size (cold read, dd bs=1M; ratio to the raw cold read above):`, '', formatRows(bench.blockRows, bench.rows, budget), '')
  out.push(formatTargets([...bench.rows, ...bench.blockRows], bench.rows, budget))
  process.stdout.write(`${out.join('\n')}\n`)
  if (o.json !== undefined) fs.writeFileSync(o.json, JSON.stringify({ options: { ...o, only: [...o.only] }, rows: bench.rows, blockRows: bench.blockRows }, null, 1))
  return 0
}

main().then(code => process.exit(code), (err: unknown) => {
  say(err instanceof Error ? err.stack ?? err.message : String(err))
  process.exit(1)
})
