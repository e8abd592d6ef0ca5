import type { AttachMode, ConnectionInfo } from '../model/volume.js'
import { fail } from '../errors/errors.js'
import type { BlockDevice, Connector } from './connector.js'

/** Picks the connector for a connection's driver_volume_type. */
export class ConnectorRegistry {
  private readonly byProtocol = new Map<string, Connector>()

  constructor(connectors: Connector[]) {
    for (const connector of connectors) this.byProtocol.set(connector.protocol, connector)
  }

  async connect(info: ConnectionInfo, mode: AttachMode): Promise<BlockDevice> {
    const connector = this.byProtocol.get(info.driverVolumeType)
    if (connector === undefined) {
      fail('EIO', `no connector for driver_volume_type '${info.driverVolumeType}' (this build has: ${[...this.byProtocol.keys()].join(', ')})`)
    }
    return connector.connect(info, mode)
  }
}
