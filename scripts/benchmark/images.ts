import { pino } from 'pino'
import { LocalVolumeService } from '../../src/backends/local.js'

/*
 * Makes N finalised images of 4 KiB in a local backend directory, through the
 * backend's own API (what a 10,000-image Glance library looks like to the
 * listing; cp of 10,000 files would take minutes). Usage: images.js DIR N
 */
async function main(): Promise<void> {
  const [dir, count] = process.argv.slice(2)
  const n = Number(count)
  if (dir === undefined || !Number.isInteger(n) || n < 1) throw new Error('usage: images.js DIR N')
  const service = new LocalVolumeService({ dir, host: 'bench', useLoopDevices: false, logger: pino({ level: 'silent' }) })
  const batch = 64
  for (let start = 0; start < n; start += batch) {
    await Promise.all(Array.from({ length: Math.min(batch, n - start) }, async (_, i) => service.create({
      name: `image-listed-${String(start + i).padStart(5, '0')}`, sizeGiB: 1,
      metadata: { image_size: '4096', image_owner: 'cinderfs' },
    })))
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`images: ${err instanceof Error ? err.message : String(err)}\n`)
  process.exit(1)
})
