import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { openStackSettings } from '../../src/config/openstack.js'

function tempDir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cinderfs-config-'))
  t.teardown(() => { fs.rmSync(dir, { recursive: true, force: true }) })
  return dir
}

function write(file: string, text: string): string {
  fs.mkdirSync(path.dirname(file), { recursive: true })
  fs.writeFileSync(file, text)
  return file
}

const cloudsYaml = (password: string): string => `clouds:
  prod:
    auth:
      auth_url: https://keystone.example:5000
      username: glance
      password: ${password}
      project_name: service
      user_domain_name: Users
      project_domain_id: default
    region_name: RegionTwo
    interface: internal
    cacert: /etc/ssl/cloud-ca.pem
    block_storage_api_version: '3.42'
`

t.test('clouds.yaml: ./clouds.yaml wins over ~/.config/openstack, and every field is read', async t => {
  const dir = tempDir(t)
  const cwd = path.join(dir, 'cwd')
  const home = path.join(dir, 'home')
  write(path.join(home, '.config/openstack/clouds.yaml'), cloudsYaml('from-home'))
  const settings = () => openStackSettings({ osCloud: 'prod', cwd, home, env: {} })
  t.match(settings().credentials, { password: 'from-home' }, 'found in ~/.config/openstack')
  write(path.join(cwd, 'clouds.yaml'), cloudsYaml('from-cwd'))
  const s = settings()
  t.same(s.credentials, {
    method: 'password',
    user: { name: 'glance', domain: { name: 'Users' } },
    password: 'from-cwd',
    project: { name: 'service', domain: { id: 'default' } },
  })
  t.equal(s.authUrl, 'https://keystone.example:5000')
  t.same(s.endpoint, { serviceTypes: ['block-storage', 'volumev3', 'volume'], interface: 'internal', region: 'RegionTwo' })
  t.same(s.tls, { insecure: false, caFile: '/etc/ssl/cloud-ca.pem' })
  t.equal(s.maxMicroversion, '3.42')
  t.equal(s.source, `${path.join(cwd, 'clouds.yaml')} cloud prod`)
  t.notOk(s.source.includes('from-cwd'), 'the source names no secret')
  t.equal(openStackSettings({ cwd, home, env: { OS_CLOUD: 'prod' } }).authUrl, s.authUrl, 'OS_CLOUD selects the cloud too')
  t.throws(() => openStackSettings({ osCloud: 'nope', cwd, home, env: {} }),
    { name: 'ConfigError', message: `cloud nope is not in any clouds.yaml (looked in ${path.join(cwd, 'clouds.yaml')}, ${path.join(home, '.config/openstack/clouds.yaml')}, /etc/openstack/clouds.yaml)` })
})

t.test('the OS_* variables: password, application credential, and their mistakes', async t => {
  const base = { OS_AUTH_URL: 'http://127.0.0.1:5000/v3', OS_USERNAME: 'glance', OS_PASSWORD: 'pw', OS_PROJECT_NAME: 'service' }
  const s = openStackSettings({ env: { ...base, OS_INTERFACE: 'admin', OS_INSECURE: 'true', OS_REGION_NAME: 'RegionOne' } })
  t.same(s.credentials, { method: 'password', user: { name: 'glance', domain: { id: 'default' } }, password: 'pw', project: { name: 'service', domain: { id: 'default' } } }, 'the default domain when none is named')
  t.match(s, { endpoint: { interface: 'admin', region: 'RegionOne' }, tls: { insecure: true } })
  t.same(openStackSettings({ env: { OS_AUTH_URL: 'http://k', OS_APPLICATION_CREDENTIAL_ID: 'ac1', OS_APPLICATION_CREDENTIAL_SECRET: 's' } }).credentials,
    { method: 'application_credential', id: 'ac1', secret: 's' })
  t.throws(() => openStackSettings({ env: { OS_AUTH_URL: 'http://k', OS_USERNAME: 'glance' } }), { name: 'ConfigError', message: 'OS_* variables: password is missing' })
  t.throws(() => openStackSettings({ env: { ...base, OS_INTERFACE: 'publicish' } }), { message: 'OS_* variables: interface publicish is not public, internal or admin' })
  t.throws(() => openStackSettings({ env: {} }), { message: 'no OpenStack credentials: give --os-cloud NAME, the OS_* variables or --glance-config FILE' })
  t.match(openStackSettings({ env: base, overrides: { region: 'R9', interface: 'internal', maxMicroversion: '3.0' } }),
    { endpoint: { region: 'R9', interface: 'internal' }, maxMicroversion: '3.0' }, 'flags override')
})

t.test('glance-api.conf: the cinder store account from [glance_store]', async t => {
  const file = write(path.join(tempDir(t), 'glance-api.conf'), `[DEFAULT]
# a comment
bind_port = 9292

[glance_store]
stores = cinder
default_store = cinder
cinder_store_auth_address = http://keystone:5000/v3
cinder_store_user_name = glance
cinder_store_password = s3cret
cinder_store_project_name = service
cinder_store_user_domain_name = Users
cinder_volume_type = images
cinder_catalog_info = volumev3:cinderv3:internalURL
cinder_os_region_name = RegionTwo
cinder_ca_certificates_file = /etc/ssl/ca.pem
cinder_api_insecure = False
cinder_state_transition_timeout = 60
`)
  const s = openStackSettings({ glanceConfig: file, env: { OS_AUTH_URL: 'http://ignored' } })
  t.same(s, {
    source: `${file} [glance_store]`,
    authUrl: 'http://keystone:5000/v3',
    credentials: { method: 'password', user: { name: 'glance', domain: { name: 'Users' } }, password: 's3cret', project: { name: 'service', domain: { name: 'Default' } } },
    endpoint: { serviceTypes: ['volumev3', 'block-storage', 'volume'], interface: 'internal', serviceName: 'cinderv3', region: 'RegionTwo' },
    tls: { insecure: false, caFile: '/etc/ssl/ca.pem' },
    stateTransitionTimeoutSeconds: 60,
    volumeType: 'images',
  })
})

t.test('glance-api.conf: a multi-store backend section, and clear errors', async t => {
  const dir = tempDir(t)
  const file = write(path.join(dir, 'glance-api.conf'), `[DEFAULT]
enabled_backends = local:file, fast:cinder, slow:cinder

[glance_store]
default_backend = slow

[backend_defaults]
cinder_store_user_domain_name = Default

[local]
filesystem_store_datadir = /var/lib/glance/images

[fast]
cinder_store_auth_address = http://k-fast/v3
cinder_store_user_name = glance
cinder_store_password = a
cinder_store_project_name = service

[slow]
cinder_store_auth_address = http://k-slow/v3
cinder_store_application_credential_id = ac
cinder_store_application_credential_secret = b
`)
  t.match(openStackSettings({ glanceConfig: file }), { authUrl: 'http://k-slow/v3', credentials: { method: 'application_credential', id: 'ac' } }, 'the default cinder backend')
  t.match(openStackSettings({ glanceConfig: file, glanceBackend: 'fast' }), { authUrl: 'http://k-fast/v3', endpoint: { serviceTypes: ['volumev3', 'block-storage', 'volume'], interface: 'public' }, stateTransitionTimeoutSeconds: 300 }, 'a named backend, glance_store defaults')
  t.throws(() => openStackSettings({ glanceConfig: file, glanceBackend: 'local' }), { name: 'ConfigError', message: new RegExp(`^${file} \\[local\\]: cinder_store_auth_address is not set`) })
  t.throws(() => openStackSettings({ glanceConfig: file, glanceBackend: 'nope' }), { message: `${file}: no section [nope]` })
  t.throws(() => openStackSettings({ glanceConfig: path.join(dir, 'missing.conf') }), { message: `cannot read ${path.join(dir, 'missing.conf')}: ENOENT` })
  const bad = write(path.join(dir, 'bad.conf'), '[glance_store]\ncinder_store_auth_address = http://k\ncinder_store_user_name = g\ncinder_store_password = p\ncinder_store_project_name = s\ncinder_state_transition_timeout = soon\n')
  t.throws(() => openStackSettings({ glanceConfig: bad }), { message: `${bad} [glance_store]: cinder_state_transition_timeout must be a whole number of seconds, not soon` })
})
