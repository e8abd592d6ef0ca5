import fs from 'node:fs'
import { defaults, type Config } from '../config/config.js'
import { openStackSettings, type OpenStackSettings } from '../config/openstack.js'
import type { Connector } from '../connectors/connector.js'
import { defaultInitiatorName, IscsiConnector, isIqn } from '../connectors/iscsi.js'
import { LocalConnector } from '../connectors/local.js'
import { RbdConnector } from '../connectors/rbd.js'
import { ConfigError, errorCode, errorMessage } from '../errors/errors.js'
import type { Janitor } from '../janitor/janitor.js'
import type { Logger } from '../log/logger.js'
import type { Metrics } from '../metrics/metrics.js'
import { CinderVolumeService } from '../backends/cinder.js'
import { LocalVolumeService } from '../backends/local.js'
import type { VolumeService } from '../backends/volume-service.js'
import { GlanceClient, IMAGE_SERVICE_TYPES } from '../glance/client.js'
import { Registrar } from '../glance/registration.js'
import { HttpClient } from '../openstack/http.js'
import { keys } from '../store/metadata.js'
import { KeystoneClient } from '../openstack/keystone.js'

export interface Backend {
  service: VolumeService
  connectors: Connector[]
  /** image_owner of new images. */
  imageOwner: string
}

/**
 * The composition of a backend and the connectors its connection infos need.
 * `spares`: volumes the cinder backend makes ahead of need (a mount that
 * writes); each is marked as an unfinished upload of this host, so recovery
 * deletes what a crash leaves. `metrics`: told of every OpenStack request.
 * `attachJournal`: the cinder backend's record of its attachments (the
 * daemon's, one per mount point), so recovery finds those a crash left.
 */
export async function openBackend(config: Config, logger: Logger, janitor: Janitor, options: { spares?: number, metrics?: Metrics, attachJournal?: string } = {}): Promise<Backend> {
  const { metrics } = options
  switch (config.backend) {
    case 'local': {
      const useLoopDevices = process.getuid?.() === 0 && fs.existsSync('/dev/loop-control')
      const service = await LocalVolumeService.open({ dir: config.localDir, host: config.host, useLoopDevices, logger })
      return { service, connectors: [new LocalConnector({ allowRegularFiles: !useLoopDevices })], imageOwner: config.imageOwner ?? defaults.localImageOwner }
    }
    case 'cinder': {
      const settings = settingsOf(config)
      const initiator = iscsiInitiator(config)
      const spares = options.spares ?? 0
      const service = new CinderVolumeService({
        settings, logger, host: config.host, initiator, janitor,
        ...(options.attachJournal === undefined ? {} : { attachJournal: options.attachJournal }),
        ...(spares === 0 ? {} : { spares: { count: spares, metadata: { [keys.state]: 'uploading', [keys.host]: config.host } } }),
        ...(metrics === undefined ? {} : { observe: call => { metrics.backendCall(call) } }),
      })
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

function settingsOf(config: Config): OpenStackSettings {
  return openStackSettings({
    ...(config.osCloud === undefined ? {} : { osCloud: config.osCloud }),
    ...(config.glanceConfig === undefined ? {} : { glanceConfig: config.glanceConfig }),
    overrides: {
      ...(config.volumeType === undefined ? {} : { volumeType: config.volumeType }),
      ...(config.maxMicroversion === undefined ? {} : { maxMicroversion: config.maxMicroversion }),
      ...(config.stateTimeoutSeconds === undefined ? {} : { stateTransitionTimeoutSeconds: config.stateTimeoutSeconds }),
    },
  })
}

export interface GlanceRegistration {
  registrar: Registrar
  /** Where Glance is, for error lines. */
  endpoint: string
  close(): void
}

/**
 * Glance for registration, as the same OpenStack account as the backend: the
 * one glance_store uses, so the images and their volumes share a project.
 */
export async function openRegistration(config: Config, dryRun: boolean, logger: Logger): Promise<GlanceRegistration> {
  const settings = settingsOf(config)
  const http = new HttpClient({ logger, tls: settings.tls })
  try {
    const keystone = new KeystoneClient({ authUrl: settings.authUrl, credentials: settings.credentials, http, logger })
    const glance = await GlanceClient.connect({
      keystone, http, logger,
      endpoint: { serviceTypes: IMAGE_SERVICE_TYPES, interface: settings.endpoint.interface, ...(settings.endpoint.region === undefined ? {} : { region: settings.endpoint.region }) },
      ...(config.glanceUrl === undefined ? {} : { endpointOverride: config.glanceUrl }),
    })
    const registrar = new Registrar({ glance, logger, store: config.glanceStore ?? settings.glanceStore, retire: config.retire, dryRun })
    return { registrar, endpoint: glance.base, close: () => { http.close() } }
  } catch (err) {
    http.close()
    const code = errorCode(err)
    if (code === 'EACCES') throw new ConfigError(`cannot use OpenStack (${settings.source}): ${errorMessage(err)}`)
    throw err
  }
}
