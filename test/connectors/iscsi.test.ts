import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { defaultInitiatorName, isIqn, parseIscsiConnectionInfo } from '../../src/connectors/iscsi.js'

// Cinder's iscsi connection info as cinder/volume/targets/iscsi.py builds it (TgtAdm, multipath on).
const info = {
  target_discovered: false,
  target_portal: '192.0.2.10:3260',
  target_iqn: 'iqn.2010-10.org.openstack:volume-4a1c',
  target_lun: 1,
  volume_id: '4a1c',
  auth_method: 'CHAP',
  auth_username: 'Gs7yUz',
  auth_password: 'Zh4kq9secret',
  encrypted: false,
  discard: false,
  target_portals: ['192.0.2.10:3260', '[2001:db8::10]:3260'],
  target_iqns: ['iqn.2010-10.org.openstack:volume-4a1c', 'iqn.2010-10.org.openstack:volume-4a1c'],
  target_luns: [1, 1],
}

t.test('connection info: the primary path first, the other multipath portals after, CHAP', async t => {
  t.same(parseIscsiConnectionInfo(info), {
    paths: [
      { portal: '192.0.2.10:3260', target: 'iqn.2010-10.org.openstack:volume-4a1c', lun: 1 },
      { portal: '[2001:db8::10]:3260', target: 'iqn.2010-10.org.openstack:volume-4a1c', lun: 1 },
    ],
    chap: { username: 'Gs7yUz', password: 'Zh4kq9secret' },
  })
  const single = { target_portal: '192.0.2.10', target_iqn: 'iqn.2010-10.org.openstack:volume-4a1c', target_lun: '0' }
  t.same(parseIscsiConnectionInfo(single), { paths: [{ portal: '192.0.2.10', target: 'iqn.2010-10.org.openstack:volume-4a1c', lun: 0 }] }, 'no auth, lun as a string')
})

t.test('connection info: what cannot be used is EINVAL, and never repeats the password', async t => {
  const bad: Array<[string, Record<string, unknown>]> = [
    ['no portal', { ...info, target_portal: undefined }],
    ['a portal with a path', { ...info, target_portal: '192.0.2.10:3260/x' }],
    ['not an IQN', { ...info, target_iqn: 'volume-4a1c' }],
    ['a negative LUN', { ...info, target_lun: -1 }],
    ['lists of different lengths', { ...info, target_luns: [1] }],
    ['an unknown auth method', { ...info, auth_method: 'Kerberos' }],
    ['CHAP without a password', { ...info, auth_password: '' }],
  ]
  for (const [what, data] of bad) {
    const err = (() => { try { parseIscsiConnectionInfo(data); return undefined } catch (e) { return e } })()
    t.match(err, { code: 'EINVAL' }, what)
    t.notMatch(String(err), /Zh4kq9secret/, `${what}: no secret in the message`)
  }
})

t.test('initiator name: the host\'s open-iscsi IQN, else one derived from --host', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cinderfs-iqn-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'initiatorname.iscsi')
  fs.writeFileSync(file, '## DO NOT EDIT\nInitiatorName=iqn.1993-08.org.debian:01:abcdef012345\n')
  t.equal(defaultInitiatorName('glance-1', file), 'iqn.1993-08.org.debian:01:abcdef012345')
  t.equal(defaultInitiatorName('Glance_Host.example.com', path.join(dir, 'missing')), 'iqn.2026-12.io.cinderfs:glance-host.example.com')
  fs.writeFileSync(file, 'InitiatorName=GenerateName=yes\n')
  t.equal(defaultInitiatorName('glance-1', file), 'iqn.2026-12.io.cinderfs:glance-1', 'an unset template is not a name')
  t.ok(isIqn('iqn.2026-12.io.cinderfs:glance-1'))
  t.notOk(isIqn('iqn.2026-12.io.cinderfs:has space'))
  t.notOk(isIqn(`iqn.2026-12.io.cinderfs:${'x'.repeat(220)}`))
})
