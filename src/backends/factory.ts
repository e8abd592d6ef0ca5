import fs from 'node:fs'
import type { Config } from '../config/config.js'
import type { Connector } from '../connectors/connector.js'
import { LocalConnector } from '../connectors/local.js'
import { ConfigError } from '../errors/errors.js'
import type { Logger } from '../log/logger.js'
import { LocalVolumeService } from './local.js'
import type { VolumeService } from './volume-service.js'

export interface Backend {
  service: VolumeService
  connectors: Connector[]
}

/** The composition of a backend and the connectors its connection infos need. */
export async function openBackend(config: Config, logger: Logger): Promise<Backend> {
  switch (config.backend) {
    case 'local': {
      const useLoopDevices = process.getuid?.() === 0 && fs.existsSync('/dev/loop-control')
      const service = await LocalVolumeService.open({ dir: config.localDir, host: config.host, useLoopDevices, logger })
      return { service, connectors: [new LocalConnector({ allowRegularFiles: !useLoopDevices })] }
    }
    case 'cinder':
      throw new ConfigError('--backend cinder: not available in this build yet')
  }
}
