import http from 'node:http'
import type { Registry } from 'prom-client'
import { errorMessage } from '../errors/errors.js'
import type { Logger } from '../log/logger.js'

/** Logged with the host and port once /metrics answers (the port matters when 0 was asked for). */
export const SERVING_METRICS_MESSAGE = 'serving metrics'

export interface ListenAddress {
  host: string
  port: number
}

export interface MetricsServer {
  /** Where it listens (the port the kernel chose when asked for 0). */
  readonly address: ListenAddress
  close(): Promise<void>
}

/** Serves the registry at /metrics in Prometheus' text format; everything else is 404. */
export async function serveMetrics(registry: Registry, at: ListenAddress, logger: Logger): Promise<MetricsServer> {
  const server = http.createServer((request, response) => {
    if (request.method !== 'GET' || (request.url ?? '').split('?')[0] !== '/metrics') {
      response.writeHead(404, { 'Content-Type': 'text/plain' }).end('cinderfs serves /metrics only\n')
      return
    }
    registry.metrics().then(text => {
      response.writeHead(200, { 'Content-Type': registry.contentType }).end(text)
    }, (err: unknown) => {
      logger.error({ err: errorMessage(err) }, 'collecting metrics failed')
      response.writeHead(500, { 'Content-Type': 'text/plain' }).end('collecting metrics failed\n')
    })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(at.port, at.host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  const bound = server.address()
  const address = typeof bound === 'object' && bound !== null ? { host: bound.address, port: bound.port } : at
  logger.info({ host: address.host, port: address.port }, SERVING_METRICS_MESSAGE)
  return {
    address,
    close: async () => new Promise<void>(resolve => {
      server.close(() => resolve())
      server.closeAllConnections()
    }),
  }
}
