import os from 'node:os'
import { performance } from 'node:perf_hooks'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

/** What the block cache counts, read at each scrape (src/cache keeps the numbers; metrics only reads them). */
export interface CacheCounts {
  hits: number
  misses: number
  evictions: number
  deviceReads: number
  deviceBytes: number
  prefetches: number
  cachedBytes: number
}

/** Live numbers the layers own, read at each scrape. */
export interface MetricSources {
  cache(): CacheCounts
  attachmentsHeld(): number
  uploadsInFlight(): { count: number, bytes: number }
}

/** One HTTP call to an OpenStack service, as the HTTP client reports it. */
export interface BackendCall {
  service: string
  method: string
  /** HTTP status, or `error` when no answer came (connection refused, timeout). */
  status: number | 'error'
  seconds: number
}

/**
 * What the layers report, handed down from the composition root. Every
 * method is cheap enough for the read path (pre-bound label children, no
 * allocation per call).
 */
export interface Metrics {
  readonly registry: Registry
  /** A FUSE request began; call the result with its answer (bytes or 0 on success, a negative errno on failure). */
  fuseRequest(op: string, requestBytes?: number): (result: number) => void
  backendCall(call: BackendCall): void
  volumeCreated(): void
  volumeDeleted(): void
  attached(seconds: number): void
  detached(seconds: number): void
  uploadStarted(): void
  recovery(action: string, ok: boolean): void
  /** Where the gauges and the cache counters read from. */
  watch(sources: MetricSources): void
}

const errnoNames = new Map(Object.entries(os.constants.errno).map(([name, n]) => [n, name]))
/** 4 KiB … 1 MiB: the request sizes FUSE sends (128 KiB at most with libfuse2). */
const sizeBuckets = Array.from({ length: 9 }, (_, i) => 4096 * 2 ** i)
/** 50 µs … ~100 s: a cached read to an attach on a slow cloud. */
const latencyBuckets = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 100]

type OpChildren = { requests: Counter.Internal, seconds: Histogram.Internal<'op'>, sizes: Histogram.Internal<'op'> }

export function createMetrics(): Metrics {
  const registry = new Registry()
  // process_* and nodejs_* under their standard names, so stock dashboards work.
  collectDefaultMetrics({ register: registry })
  // Gauges named _total, which promtool (and the naming conventions) reject; nodejs_active_{handles,requests,resources} without the suffix stay.
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name)
  const registers = [registry]
  let sources: MetricSources | undefined

  const fuseRequests = new Counter({ name: 'cinderfs_fuse_requests_total', help: 'FUSE requests answered, by operation', labelNames: ['op'], registers })
  const fuseErrors = new Counter({ name: 'cinderfs_fuse_errors_total', help: 'FUSE requests answered with an error, by operation and errno', labelNames: ['op', 'errno'], registers })
  const fuseSeconds = new Histogram({ name: 'cinderfs_fuse_request_duration_seconds', help: 'Time from a FUSE request to its answer', labelNames: ['op'], buckets: latencyBuckets, registers })
  const fuseSizes = new Histogram({ name: 'cinderfs_fuse_request_size_bytes', help: 'Bytes asked for by FUSE read and write requests', labelNames: ['op'], buckets: sizeBuckets, registers })
  const readBytes = new Counter({ name: 'cinderfs_read_bytes_total', help: 'Bytes returned to FUSE reads', registers })
  const writtenBytes = new Counter({ name: 'cinderfs_written_bytes_total', help: 'Bytes accepted from FUSE writes', registers })

  // The cache keeps its own counters; these mirror them at scrape time.
  const mirror = (name: string, help: string, pick: (c: CacheCounts) => number): void => {
    new Counter({
      name, help, registers,
      collect() {
        this.reset()
        this.inc(sources === undefined ? 0 : pick(sources.cache()))
      },
    })
  }
  mirror('cinderfs_cache_hits_total', 'Reads answered entirely from the block cache', c => c.hits)
  mirror('cinderfs_cache_misses_total', 'Reads that waited for at least one device read', c => c.misses)
  mirror('cinderfs_cache_evictions_total', 'Blocks dropped from the cache (LRU, drop-behind, deleted images)', c => c.evictions)
  mirror('cinderfs_cache_prefetches_total', 'Blocks read ahead of a sequential reader', c => c.prefetches)
  mirror('cinderfs_device_reads_total', 'Block reads from attached devices', c => c.deviceReads)
  mirror('cinderfs_device_read_bytes_total', 'Bytes the cache read from attached devices', c => c.deviceBytes)
  const gauge = (name: string, help: string, pick: (s: MetricSources) => number): void => {
    new Gauge({ name, help, registers, collect() { this.set(sources === undefined ? 0 : pick(sources)) } })
  }
  gauge('cinderfs_cache_bytes', 'Bytes held by the block cache', s => s.cache().cachedBytes)
  gauge('cinderfs_attachments', 'Volume attachments held now', s => s.attachmentsHeld())
  gauge('cinderfs_uploads_in_flight', 'Files being written now', s => s.uploadsInFlight().count)
  gauge('cinderfs_uploads_in_flight_bytes', 'Bytes written so far into the files being written now', s => s.uploadsInFlight().bytes)

  const uploads = new Counter({ name: 'cinderfs_uploads_total', help: 'Files opened for writing (each becomes an image when closed)', registers })
  const attachSeconds = new Histogram({ name: 'cinderfs_attach_duration_seconds', help: 'Time to attach a volume in the backend', buckets: latencyBuckets, registers })
  const detachSeconds = new Histogram({ name: 'cinderfs_detach_duration_seconds', help: 'Time to detach a volume in the backend', buckets: latencyBuckets, registers })
  const created = new Counter({ name: 'cinderfs_volumes_created_total', help: 'Volumes created', registers })
  const deleted = new Counter({ name: 'cinderfs_volumes_deleted_total', help: 'Volumes deleted', registers })
  const recoveries = new Counter({ name: 'cinderfs_recovery_actions_total', help: 'Leftovers of earlier runs cleaned up at start, by action and result', labelNames: ['action', 'result'], registers })
  const backendRequests = new Counter({ name: 'cinderfs_backend_requests_total', help: 'HTTP requests to OpenStack services, by service, method and status', labelNames: ['service', 'method', 'status'], registers })
  const backendSeconds = new Histogram({ name: 'cinderfs_backend_request_duration_seconds', help: 'Time of HTTP requests to OpenStack services', labelNames: ['service', 'method'], buckets: latencyBuckets, registers })

  // Label children bound once per op: the read path pays no label lookup.
  const perOp = new Map<string, OpChildren>()
  const bound = (op: string): OpChildren => {
    let children = perOp.get(op)
    if (children === undefined) {
      children = { requests: fuseRequests.labels(op), seconds: fuseSeconds.labels(op), sizes: fuseSizes.labels(op) }
      perOp.set(op, children)
    }
    return children
  }

  return {
    registry,
    fuseRequest(op, requestBytes) {
      const children = bound(op)
      if (requestBytes !== undefined) children.sizes.observe(requestBytes)
      const started = performance.now()
      return result => {
        children.requests.inc()
        children.seconds.observe((performance.now() - started) / 1000)
        if (result < 0) fuseErrors.labels(op, errnoNames.get(-result) ?? String(-result)).inc()
        else if (op === 'read') readBytes.inc(result)
        else if (op === 'write') writtenBytes.inc(result)
      }
    },
    backendCall(call) {
      backendRequests.labels(call.service, call.method, String(call.status)).inc()
      backendSeconds.labels(call.service, call.method).observe(call.seconds)
    },
    volumeCreated: () => created.inc(),
    volumeDeleted: () => deleted.inc(),
    attached: seconds => attachSeconds.observe(seconds),
    detached: seconds => detachSeconds.observe(seconds),
    uploadStarted: () => uploads.inc(),
    recovery: (action, ok) => recoveries.labels(action, ok ? 'ok' : 'failed').inc(),
    watch(s) {
      sources = s
    },
  }
}
