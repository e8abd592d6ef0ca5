import fs from 'node:fs/promises'
import t from 'tap'
import { fuseBinding, needsBackend, randomFile, startDaemon, workspace } from '../helpers/daemon.js'
import { metricsPort, needsPrometheus, startPrometheus } from '../helpers/prometheus.js'
import { run, sh } from '../helpers/shell.js'

const MiB = 1024 * 1024
/** FUSE moves at most this much per read request (libfuse2). */
/** The largest FUSE request: libfuse3 negotiates 1 MiB, libfuse2 (fuse-native) stays at 128 KiB. */
const maxRequest = fuseBinding === 'fuse-native' ? 128 * 1024 : 1024 * 1024

t.test('a real Prometheus scrapes cinderfs during a copy and a read; the counters move by the right amounts', { skip: needsBackend('local') || needsPrometheus() }, async t => {
  const ws = await workspace(t, 'local')
  // Sealed at close: the read then attaches on its own (in the seal delay it would share the upload's attachment).
  const daemon = await startDaemon(ws, ['--metrics-addr', '127.0.0.1:0', '--seal-delay', '0'])
  const port = metricsPort(daemon.logs())
  const prom = await startPrometheus(t, ws.root, port)
  await prom.until('up{job="cinderfs"}', v => v === 1)

  const size = 24 * MiB + 12345
  const data = await fs.readFile(await randomFile(size))
  const half = 12 * MiB
  // The copy, from here in two halves, so Prometheus sees it while it runs.
  const file = await fs.open(daemon.file('image.raw'), 'w')
  await file.write(data, 0, half, 0)
  await prom.until('cinderfs_uploads_in_flight_bytes', v => v === half)
  t.equal(await prom.value('cinderfs_uploads_in_flight'), 1, 'one upload in flight mid-copy')
  await file.write(data, half, size - half, half)
  await file.close()
  t.equal(await prom.until('cinderfs_written_bytes_total', v => v === size), size, 'bytes written = the file size')
  await prom.until('cinderfs_uploads_in_flight', v => v === 0)
  t.equal(await prom.value('cinderfs_uploads_total'), 1, 'one upload')
  t.equal(await prom.value('cinderfs_volumes_created_total'), 1, 'one volume created')
  t.ok((await prom.value('sum(cinderfs_fuse_request_size_bytes_count{op="write"})') ?? 0) >= size / maxRequest, 'write sizes observed')

  // A cold read, then the same read again: the second comes from the block cache.
  await sh(`cat '${daemon.file('image.raw')}' > /dev/null`)
  await prom.until('cinderfs_read_bytes_total', v => v === size)
  const hits = await prom.value('cinderfs_cache_hits_total') ?? 0
  const misses = await prom.value('cinderfs_cache_misses_total') ?? 0
  t.ok(misses >= 1, 'the cold read missed the cache')
  t.equal(await prom.value('cinderfs_device_read_bytes_total'), size, 'the device was read once, whole')
  // A sealed image stays in the kernel's page cache (fuse3): drop it, so the re-read reaches the daemon.
  await sh(`sync && echo 1 > /proc/sys/vm/drop_caches && cat '${daemon.file('image.raw')}' > /dev/null`)
  await prom.until('cinderfs_read_bytes_total', v => v === 2 * size)
  const rehits = await prom.until('cinderfs_cache_hits_total', v => v >= hits + Math.ceil(size / maxRequest))
  t.ok(rehits - hits >= Math.ceil(size / maxRequest), `the re-read hit the cache on every request (${rehits - hits} hits)`)
  t.equal(await prom.value('cinderfs_cache_misses_total'), misses, 'and never missed')
  t.equal(await prom.value('cinderfs_device_read_bytes_total'), size, 'nor read the device again')
  t.ok((await prom.value('cinderfs_cache_bytes') ?? 0) >= size, 'the cache holds the image')
  t.equal(await prom.value('cinderfs_attachments'), 1, 'one attachment held for the reads')
  t.ok((await prom.value('cinderfs_attach_duration_seconds_count') ?? 0) >= 2, 'attach latency recorded (the upload and the read)')

  // A failed request is counted by errno.
  // (A missing name is not an error on fuse3: its lookup answers with a negative entry the kernel caches.)
  t.not((await run(`echo more >> '${daemon.file('image.raw')}'`)).code, 0, 'appending to a sealed image fails')
  await prom.until('sum(cinderfs_fuse_errors_total{errno="EROFS"})', v => v >= 1)
  t.ok((await prom.value('process_resident_memory_bytes') ?? 0) > 0, 'process memory exported')

  const exposition = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  const exposure = `${ws.root}/metrics.txt`
  await fs.writeFile(exposure, exposition)
  const lint = await run(`promtool check metrics < '${exposure}'`)
  t.equal(lint.code, 0, `promtool check metrics accepts the exposition ${lint.stdout}${lint.stderr}`)
  t.equal((await fetch(`http://127.0.0.1:${port}/other`)).status, 404, 'only /metrics is served')
})

t.test('on Cinder: backend API calls by service, method and status, with latency', { skip: needsBackend('cinder') }, async t => {
  const ws = await workspace(t, 'cinder')
  const daemon = await startDaemon(ws, ['--metrics-addr', '127.0.0.1:0'])
  await sh(`cp '${await randomFile(MiB)}' '${daemon.file('small.raw')}'`)
  const text = await (await fetch(`http://127.0.0.1:${metricsPort(daemon.logs())}/metrics`)).text()
  const sample = (name: string, labels: string): number => Number(new RegExp(`^${name}\\{${labels}\\} (\\S+)$`, 'm').exec(text)?.[1] ?? 0)
  t.ok(sample('cinderfs_backend_requests_total', 'service="keystone",method="POST",status="201"') >= 1, 'Keystone token requests counted')
  t.ok(sample('cinderfs_backend_requests_total', 'service="cinder",method="POST",status="202"') >= 1, 'Cinder creates and actions counted')
  t.ok(sample('cinderfs_backend_request_duration_seconds_count', 'service="cinder",method="GET"') >= 1, 'with latency')
  t.match(text, /^cinderfs_volumes_created_total 1$/m, 'one volume created')
  t.notMatch(text, /password|X-Auth-Token|gAAAA/i, 'no credential or token in the exposition')
})

t.test('recovery after kill -9 mid-upload is counted', { skip: needsBackend('local') }, async t => {
  const ws = await workspace(t, 'local')
  const crashed = await startDaemon(ws)
  const file = await fs.open(crashed.file('partial.raw'), 'w')
  await file.write(Buffer.alloc(MiB, 1), 0, MiB, 0)
  await crashed.kill()
  await file.close().catch(() => undefined)
  await run(`fusermount -u -z '${ws.mountpoint}'`)
  const daemon = await startDaemon(ws, ['--metrics-addr', '127.0.0.1:0'])
  const text = await (await fetch(`http://127.0.0.1:${metricsPort(daemon.logs())}/metrics`)).text()
  t.match(text, /^cinderfs_recovery_actions_total\{action="delete_partial_volume",result="ok"\} 1$/m, 'the partial upload\'s volume deleted')
  t.match(text, /^cinderfs_recovery_actions_total\{action="delete_leftover_attachment",result="ok"\} 1$/m, 'its attachment deleted')
  t.match(text, /^cinderfs_volumes_deleted_total 1$/m)
})
