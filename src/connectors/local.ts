import fs from 'node:fs/promises'
import { constants, open } from 'node:fs'
import { promisify } from 'node:util'
import type { AttachMode, ConnectionInfo } from '../model/volume.js'
import { fail } from '../errors/errors.js'
import type { BlockDevice, Connector } from './connector.js'
import { FdBlockDevice } from './fd-device.js'

export interface LocalConnectorOptions {
  /** Accept a regular file as the device: only for the embedded backend without root, or tests. */
  allowRegularFiles: boolean
}

/**
 * `driver_volume_type: local`: Cinder hands us a device path on this host
 * (the test-only loop driver, LINSTOR, the embedded backend). Opened without
 * O_TRUNC or O_CREAT, ever: truncating a device path that is really a file
 * is how glance_store corrupted NFS-backed images.
 */
export class LocalConnector implements Connector {
  readonly protocol = 'local'

  constructor(private readonly options: LocalConnectorOptions) {}

  async connect(info: ConnectionInfo, mode: AttachMode): Promise<BlockDevice> {
    const devicePath = info.data.device_path
    if (typeof devicePath !== 'string' || devicePath === '') fail('EIO', 'connection info of type local has no device_path')
    const stat = await fs.stat(devicePath)
    const isFile = stat.isFile()
    if (!stat.isBlockDevice() && !(isFile && this.options.allowRegularFiles)) {
      fail('EIO', `${devicePath} is not a block device`, { devicePath })
    }
    const flags = mode === 'rw' ? constants.O_RDWR : constants.O_RDONLY
    // Raw fds, not FileHandles: the device owns them until close().
    const fd = await openFd(devicePath, flags)
    // The block cache's reads and the uploads' windows are aligned and skip the page cache through this one
    // (a file system without O_DIRECT, such as tmpfs under a test's plain files, just goes without).
    const directFd = await openFd(devicePath, flags | constants.O_DIRECT).catch(() => undefined)
    const measure = isFile ? async () => (await fs.stat(devicePath)).size : () => blockDeviceSize(stat.rdev)
    return new FdBlockDevice(devicePath, fd, mode === 'rw', await measure(), measure, directFd)
  }
}

const openFd = promisify(open)

/** fstat reports 0 for block devices; sysfs has the size in 512-byte sectors. */
async function blockDeviceSize(rdev: number): Promise<number> {
  const major = Math.floor(rdev / 256) & 0xfff
  const minor = (rdev & 0xff) | ((Math.floor(rdev / 4096) & 0xfff00))
  const sectors = await fs.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')
  return Number.parseInt(sectors, 10) * 512
}
