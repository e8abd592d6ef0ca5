import path from 'node:path'
import t from 'tap'
import { listenAddress, parseCommand } from '../../src/cli/args.js'
import { run } from '../helpers/shell.js'

const cli = path.join(__dirname, '..', '..', '..', 'bin', 'cinderfs')

t.test('mount flags become a validated configuration', async t => {
  const command = parseCommand(['mount', '/mnt/images', '--cache-size', '1G', '--block-size', '256K', '--idle-detach', '5', '--read-only'])
  if (command.kind !== 'mount') throw new Error('expected mount')
  t.equal(command.config.mountpoint, '/mnt/images')
  t.equal(command.config.cacheSize, 1024 ** 3)
  t.equal(command.config.blockSize, 256 * 1024)
  t.equal(command.config.idleDetachSeconds, 5)
  t.equal(command.config.readOnly, true)
  t.equal(command.config.backend, 'local', 'the embedded backend is the default')
})

t.test('register takes image ids and the backend flags', async t => {
  const command = parseCommand(['register', '8a1f3c1e-0b7e-4a4c-9d7d-3f1c2b6a9e10', '--backend', 'cinder', '--dry-run', '--retire', '--glance-store', 'cinder1'])
  if (command.kind !== 'register') throw new Error('expected register')
  t.same(command.imageIds, ['8a1f3c1e-0b7e-4a4c-9d7d-3f1c2b6a9e10'])
  t.equal(command.dryRun, true)
  t.equal(command.config.retire, true)
  t.equal(command.config.glanceStore, 'cinder1')
})

t.test('bad flags and values are refused with one line', async t => {
  const cases: Array<[string[], RegExp]> = [
    [['mount'], /missing MOUNTPOINT/],
    [['frobnicate', '/m'], /unknown command 'frobnicate'/],
    [['mount', '/m', '--cache-size', 'lots'], /--cache-size: 'lots' is not a size/],
    [['mount', '/m', '--block-size', '3000'], /power of two/],
    [['mount', '/m', '--cache-size', '1M', '--block-size', '1M'], /at least 4 blocks/],
    [['mount', '/m', '--backend', 'nfs'], /not local or cinder/],
    [['mount', '/m', '--idle-detach=-1'], /not a number of seconds/],
    [['mount', '/m', '--idle-detach', '-1'], /^Option '--idle-detach' argument is ambiguous\.$/],
    [['mount', '/m', '--log-level', 'loud'], /not one of/],
    [['mount', '/m', '--os-cloud', 'x'], /need --backend cinder/],
    [['register'], /register: Glance serves images from Cinder only: give --backend cinder/],
    [['register', '/mnt/images', '--backend', 'cinder'], /'\/mnt\/images' is not a Glance image id/],
    [['mount', '/m', '--glance-register'], /need --backend cinder/],
    [['mount', '/m', '--backend', 'cinder', '--retire'], /--retire needs --glance-register/],
    [['mount', '/m', '--backend', 'cinder', '--dry-run'], /--dry-run is an option of register/],
    [['mount', '/m', '--no-such-flag'], /Unknown option '--no-such-flag'/],
  ]
  for (const [argv, message] of cases) t.throws(() => parseCommand(argv), { name: 'ConfigError', message }, argv.join(' '))
})

t.test('the command line: exit 2 and one line on stderr for mistakes; --help reads like a man page', async t => {
  const bad = await run(`'${cli}' mount /nonexistent-dir-for-cinderfs --block-size 3K`)
  t.equal(bad.code, 2, 'exit code 2')
  t.equal(bad.stderr.trim().split('\n').length, 1, 'one line')
  t.match(bad.stderr, /^cinderfs: --block-size/)
  const missing = await run(`'${cli}' mount /nonexistent-dir-for-cinderfs --local-dir /tmp/cinderfs-args-test`)
  t.equal(missing.code, 2, 'a missing mount point is a usage error')
  t.match(missing.stderr, /mount point \/nonexistent-dir-for-cinderfs does not exist/)
  const help = await run(`'${cli}' --help`)
  t.equal(help.code, 0)
  for (const section of ['NAME', 'SYNOPSIS', 'DESCRIPTION', 'OPTIONS', 'EXIT STATUS', 'EXAMPLES']) t.match(help.stdout, new RegExp(`^${section}$`, 'm'), `has ${section}`)
  t.equal((await run(`'${cli}' unmount /nonexistent-dir-for-cinderfs`)).code, 2, 'unmount of something not mounted: exit 2')
})

t.test('the mount(8) calling convention: SOURCE MOUNTPOINT -o opt,opt, every flag also an option', async t => {
  const helper = parseCommand(['cinder:glance', '/srv/images', '-o', 'rw,dev,suid,nofail,_netdev,x-systemd.automount,cache_size=1G,allow_other,ro,metrics_addr=:9717,idle-detach=5'])
  if (helper.kind !== 'mount') throw new Error('expected mount')
  t.equal(helper.background, true, 'called by mount(8): the helper returns once mounted')
  t.equal(helper.config.backend, 'cinder')
  t.equal(helper.config.osCloud, 'glance', 'cinder:CLOUD names the cloud')
  t.equal(helper.config.cacheSize, 1024 ** 3, 'cache_size=1G')
  t.equal(helper.config.allowOther, true, 'allow_other')
  t.equal(helper.config.readOnly, true, 'ro')
  t.equal(helper.config.idleDetachSeconds, 5, 'dashes work too')
  t.same(helper.config.metricsAddr, { host: '127.0.0.1', port: 9717 }, ':PORT listens on 127.0.0.1')
  const local = parseCommand(['local:/var/lib/vols', '/mnt', '-o', 'log_file=/tmp/x.log', '-f'])
  if (local.kind !== 'mount') throw new Error('expected mount')
  t.equal(local.background, false, '-f keeps it in the foreground')
  t.equal(local.config.localDir, '/var/lib/vols')
  t.equal(local.config.logFile, '/tmp/x.log')
  const plain = parseCommand(['mount', '/mnt', '-o', 'read_only,block_size=256K'])
  t.match(plain, { kind: 'mount', background: false, config: { readOnly: true, blockSize: 256 * 1024 } }, '-o works with cinderfs mount too')
  const cases: Array<[string[], RegExp]> = [
    [['nfs:/x', '/mnt'], /unknown command 'nfs:\/x'.*SOURCE is local, local:DIR, cinder, cinder:CLOUD or cinderfs/],
    [['cinderfs', '/mnt', '-o', 'frobnicate'], /-o frobnicate: not a cinderfs option/],
    [['cinderfs', '/mnt', '-o', 'cache_size'], /-o cache_size: needs a value/],
    [['cinderfs', '/mnt', '-o', 'allow_other=1'], /-o allow_other: takes no value/],
    [['mount', '/m', '--metrics-addr', 'localhost'], /--metrics-addr: 'localhost' is not HOST:PORT/],
    [['mount', '/m', '--metrics-addr', ':99999'], /is not HOST:PORT/],
  ]
  for (const [argv, message] of cases) t.throws(() => parseCommand(argv), { name: 'ConfigError', message }, argv.join(' '))
  t.same(listenAddress('--metrics-addr', '0.0.0.0:9717'), { host: '0.0.0.0', port: 9717 })
  t.same(listenAddress('--metrics-addr', '[::1]:9717'), { host: '::1', port: 9717 })
  t.same(listenAddress('--metrics-addr', '9717'), { host: '127.0.0.1', port: 9717 })
})

t.test('status and doctor commands', async t => {
  t.same(parseCommand(['status', '/mnt/x', '--json']), { kind: 'status', mountpoint: '/mnt/x', json: true })
  t.match(parseCommand(['doctor']), { kind: 'doctor', mountpoint: undefined })
  t.match(parseCommand(['doctor', '/mnt/x', '--backend', 'cinder']), { kind: 'doctor', mountpoint: '/mnt/x', config: { backend: 'cinder' } })
  t.throws(() => parseCommand(['status']), { message: /status: missing MOUNTPOINT/ })
})
