import fs from 'node:fs'
import { defaults, type Config } from '../config/config.js'
import { openStackSettings } from '../config/openstack.js'
import type { Connector } from '../connectors/connector.js'
import { LocalConnector } from '../connectors/local.js'
import { RbdConnector } from '../connectors/rbd.js'
import { ConfigError, errorCode, errorMessage } from '../errors/errors.js'
import type { Logger } from '../log/logger.js'
import type { Metrics } from '../metrics/metrics.js'
import { CinderVolumeService } from '../backends/cinder.js'
import { LocalVolumeService } from '../backends/local.js'
import type { VolumeService } from '../backends/volume-service.js'

export interface Backend {
  service: VolumeService
  connectors: Connector[]
  /** image_owner of new images. */
  imageOwner: string
}

/** The composition of a backend and the connectors its connection infos need. */
export async function openBackend(config: Config, logger: Logger, metrics?: Metrics): Promise<Backend> {
  switch (config.backend) {
    case 'local': {
      const useLoopDevices = process.getuid?.() === 0 && fs.existsSync('/dev/loop-control')
      const service = await LocalVolumeService.open({ dir: config.localDir, host: config.host, useLoopDevices, logger })
      return { service, connectors: [new LocalConnector({ allowRegularFiles: !useLoopDevices })], imageOwner: config.imageOwner ?? defaults.localImageOwner }
    }
    case 'cinder': {
      const settings = openStackSettings({
        ...(config.osCloud === undefined ? {} : { osCloud: config.osCloud }),
        ...(config.glanceConfig === undefined ? {} : { glanceConfig: config.glanceConfig }),
        overrides: {
          ...(config.volumeType === undefined ? {} : { volumeType: config.volumeType }),
          ...(config.maxMicroversion === undefined ? {} : { maxMicroversion: config.maxMicroversion }),
        },
      })
      const service = new CinderVolumeService({ settings, logger, host: config.host, ...(metrics === undefined ? {} : { observe: call => metrics.backendCall(call) }) })
      let project: string | undefined
      try {
        // Authenticate now: wrong credentials are a configuration mistake, said once, at mount.
        project = await service.projectId()
      } catch (err) {
        await service.close()
        const code = errorCode(err)
        if (code === 'EACCES' || code === 'ENOENT') throw new ConfigError(`cannot use OpenStack (${settings.source}): ${errorMessage(err)}`)
        throw err
      }
      const imageOwner = config.imageOwner ?? project
      if (imageOwner === undefined) throw new ConfigError('--image-owner: the token names no project; give the project id that should own the images')
      // Cinder's drivers hand out local block devices (LVM, the test driver) or librbd names (Ceph).
      return { service, connectors: [new LocalConnector({ allowRegularFiles: false }), new RbdConnector({ keyringDir: config.cephKeyringDir })], imageOwner }
    }
  }
}
