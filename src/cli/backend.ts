import fs from 'node:fs'
import { defaults, type Config } from '../config/config.js'
import { openStackSettings } from '../config/openstack.js'
import type { Connector } from '../connectors/connector.js'
import { defaultInitiatorName, IscsiConnector, isIqn } from '../connectors/iscsi.js'
import { LocalConnector } from '../connectors/local.js'
import { RbdConnector } from '../connectors/rbd.js'
import { ConfigError, errorCode, errorMessage } from '../errors/errors.js'
import type { Janitor } from '../janitor/janitor.js'
import type { Logger } from '../log/logger.js'
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
export async function openBackend(config: Config, logger: Logger, janitor: Janitor): Promise<Backend> {
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
          ...(config.stateTimeoutSeconds === undefined ? {} : { stateTransitionTimeoutSeconds: config.stateTimeoutSeconds }),
        },
      })
      const initiator = iscsiInitiator(config)
      const service = new CinderVolumeService({ settings, logger, host: config.host, initiator, janitor })
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
      // Cinder's drivers hand out local block devices (the test driver), librbd names (Ceph) or iSCSI targets (LVM, arrays).
      const connectors = [new LocalConnector({ allowRegularFiles: false }), new RbdConnector({ keyringDir: config.cephKeyringDir }), new IscsiConnector({ initiator })]
      return { service, connectors, imageOwner }
    }
  }
}

/** The IQN we log in as; Cinder exports iSCSI volumes to the `initiator` it is given, so both must be this one. */
function iscsiInitiator(config: Config): string {
  if (config.iscsiInitiator === undefined) return defaultInitiatorName(config.host)
  if (!isIqn(config.iscsiInitiator)) throw new ConfigError(`--iscsi-initiator: '${config.iscsiInitiator}' is not an iSCSI name such as iqn.2026-12.com.example:host`)
  return config.iscsiInitiator
}
