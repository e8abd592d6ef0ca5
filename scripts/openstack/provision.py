#!/usr/bin/python3
"""Idempotent accounts, catalog, volume types and quotas for the test rig.

Called by scripts/openstack/up once Keystone answers. Reads its settings
from the environment (set by up): KS_URL, CINDER_URL, GLANCE_URL, REGION, BACKEND,
ADMIN_PASSWORD, CINDER_PASSWORD, GLANCE_PASSWORD, MEMBER_PASSWORD,
WAIT_SECONDS, RBD_BACKEND (empty: none) for the volume type `rbd` and
ISCSI_BACKEND (empty: none) for the volume type `iscsi`. Raw REST over keystoneauth1 (a Cinder dependency) keeps it to
one Python process instead of many slow CLI calls.
"""
import os
import sys
import time

from keystoneauth1 import session
from keystoneauth1.identity import v3

env = os.environ
KS = env['KS_URL'] + '/v3'
REGION = env['REGION']
BACKEND = env['BACKEND']

admin = session.Session(auth=v3.Password(
    auth_url=KS, username='admin', password=env['ADMIN_PASSWORD'],
    project_name='admin', user_domain_id='default',
    project_domain_id='default'))


def ks_get(path, key, **params):
    return admin.get(KS + path, params=params).json()[key]


def ks_post(path, key, body):
    return admin.post(KS + path, json={key: body}).json()[key]


def ensure(path, key, name, body, **filters):
    found = ks_get(path, key + 's', name=name, **filters)
    return found[0] if found else ks_post(path, key, dict(body, name=name))


def project(name):
    return ensure('/projects', 'project', name,
                  {'domain_id': 'default', 'description': 'cinderfs tests'},
                  domain_id='default')


def user(name, password, home, roles):
    u = ensure('/users', 'user', name,
               {'domain_id': 'default', 'password': password,
                'default_project_id': home['id']}, domain_id='default')
    # keep the password in step with this script even if it changed
    admin.patch(KS + '/users/' + u['id'], json={'user': {'password': password}})
    for r in roles:
        admin.put(KS + '/projects/%s/users/%s/roles/%s'
                  % (home['id'], u['id'], role_ids[r]))
    return u


def catalog(name, stype, url):
    services = [s for s in ks_get('/services', 'services', type=stype)
                if s['name'] == name]
    svc = services[0] if services else ks_post(
        '/services', 'service', {'name': name, 'type': stype})
    have = {e['interface']: e for e in
            ks_get('/endpoints', 'endpoints', service_id=svc['id'])}
    for iface in ('public', 'internal', 'admin'):
        if iface not in have:
            ks_post('/endpoints', 'endpoint',
                    {'service_id': svc['id'], 'interface': iface, 'url': url,
                     'region_id': REGION})
        elif have[iface]['url'] != url:
            admin.patch(KS + '/endpoints/' + have[iface]['id'],
                        json={'endpoint': {'url': url}})


role_ids = {r: ensure('/roles', 'role', r, {})['id']
            for r in ('admin', 'member', 'reader', 'service')}
service_p = project('service')
members_p = project('cinderfs-members')
user('cinder', env['CINDER_PASSWORD'], service_p, ['admin', 'service'])
# glance_store's account: admin (readonly flag, quotas), member, service
user('glance', env['GLANCE_PASSWORD'], service_p,
     ['admin', 'member', 'service'])
user('member', env['MEMBER_PASSWORD'], members_p, ['member', 'reader'])
volume_url = env['CINDER_URL'] + '/v3/%(project_id)s'
catalog('cinder', 'block-storage', volume_url)
catalog('cinderv3', 'volumev3', volume_url)
# named glance: Cinder's default glance_catalog_info is image:glance:publicURL
catalog('glance', 'image', env['GLANCE_URL'])

# ---------------------------------------------------------------- cinder
H = {'OpenStack-API-Version': 'volume 3.50'}
# not from the catalog: this session's token predates the entries above
volume_ep = env['CINDER_URL'] + '/v3/' + admin.get_project_id()
deadline = time.monotonic() + float(env['WAIT_SECONDS'])
RBD_BACKEND = env.get('RBD_BACKEND', '')
ISCSI_BACKEND = env.get('ISCSI_BACKEND', '')
wanted = ['cinder-test@' + b for b in (BACKEND, RBD_BACKEND, ISCSI_BACKEND) if b]
while True:
    try:
        services = admin.get(volume_ep + '/os-services', headers=H,
                             params={'binary': 'cinder-volume'}).json()
        up = {s['host'] for s in services['services'] if s['state'] == 'up'}
        # 'up' is only a recent heartbeat (a cinder-volume stopped a minute ago
        # still counts): creates fail with "No valid backend" until the
        # scheduler has the new process's capabilities, i.e. lists its pools.
        pools = admin.get(volume_ep + '/scheduler-stats/get_pools', headers=H).json()
        known = {p['name'].split('#')[0] for p in pools.get('pools', [])}
        if all(w in up and w in known for w in wanted):
            break
    except Exception:  # cinder-api is still starting: ask again
        pass
    if time.monotonic() > deadline:
        sys.exit('cinder-volume %s is not up (see the logs)' % wanted)
    time.sleep(0.5)

types = {t['name']: t for t in admin.get(
    volume_ep + '/types', headers=H).json()['volume_types']}
# Cinder refuses to change the specs of a type that volumes use (HTTP 400),
# as on a rerun while tests hold volumes: set it only when it differs.
default = types['__DEFAULT__']
if default.get('extra_specs', {}).get('volume_backend_name') != BACKEND:
    admin.post(volume_ep + '/types/%s/extra_specs' % default['id'],
               headers=H, json={'extra_specs': {'volume_backend_name': BACKEND}})
if 'multiattach' not in types:
    admin.post(volume_ep + '/types', headers=H, json={'volume_type': {
        'name': 'multiattach', 'extra_specs': {
            'volume_backend_name': BACKEND, 'multiattach': '<is> True'}}})
for name, backend in (('rbd', RBD_BACKEND), ('iscsi', ISCSI_BACKEND)):
    if backend and name not in types:
        admin.post(volume_ep + '/types', headers=H, json={'volume_type': {
            'name': name, 'extra_specs': {'volume_backend_name': backend}}})
# back to the raised defaults of cinder.conf (a test may have lowered them)
for p in (service_p, members_p):
    admin.delete(volume_ep + '/os-quota-sets/' + p['id'], headers=H)
print('provisioned: projects service=%s cinderfs-members=%s; %s up'
      % (service_p['id'], members_p['id'], ' '.join(wanted)))
