#!/usr/bin/python3
# TEST-ONLY: drives Debian's python3-glance-store (4.1.0) cinder store the way
# glance-api does, so the interop tests and scripts/bench-cinder can compare
# cinderfs with the real peer.  Run it with /usr/bin/python3 (the Debian
# modules are not in pyenv's python3), as root.
#
#   glance_store_driver.py [--cloud NAME] [--clouds FILE] [--owner PROJECT] [--debug] COMMAND ...
#     add IMAGE_ID FILE SIZE   SIZE 0 = unknown (glance_store's resize-before-write path);
#                              prints {"location", "size", "checksum", "multihash"} as JSON
#     get LOCATION OUT         writes the image to OUT ("-" = stdout); prints {"size"}
#     get-size LOCATION        prints the size glance_store reports
#     delete LOCATION
#   add and get also print "seconds": the time of the store call itself (no
#   interpreter start-up); --warm starts os-brick's privsep daemon first.
#
# Configuration: the [glance_store] options a glance-api.conf would carry for a
# service-project setup (cinder_store_auth_address, _user_name, _password,
# _project_name and both domain names), taken from one cloud of the rig's
# clouds.yaml (default cinderfs-glance: user glance, project service).
#
# Root helper recipe.  glance_store 4.1.0 hard-codes its root helper as
# "sudo glance-rootwrap <rootwrap_config>"; Debian's glance-store-common ships
# /usr/bin/glance-rootwrap, /etc/glance/rootwrap.conf and its filters.  As root:
#  * chown (temporary_chown) is never run: the loop device is already ours;
#  * os-brick starts an oslo.privsep daemon (get_connector_properties), and the
#    default command "sudo glance-rootwrap /etc/glance/rootwrap.conf
#    privsep-helper --config-file /etc/... --privsep_context ..." is accepted by
#    the filter only with exactly one --config-file under /etc, which a test
#    cannot provide without writing to /etc.  So [privsep_osbrick]
#    helper_command is set to plain "privsep-helper": we are root already, and
#    privsep appends --privsep_context and --privsep_sock_path itself.
#  os-brick's LocalConnector (driver_volume_type "local", the rig's loop
#  devices) needs nothing else: it only checks that device_path exists.
import argparse
import json
import logging
import shlex
import sys
import time

import yaml
from oslo_config import cfg
from oslo_context import context as oslo_context

import glance_store
from glance_store import location as gs_location


def configure(cloud):
    conf = cfg.CONF
    glance_store.register_opts(conf)
    # glance-api's own option; glance_store.common.fs_mount reads it on import.
    conf.register_opt(cfg.DictOpt('enabled_backends'))
    conf([], project='cinderfs-interop', default_config_files=[])
    auth = cloud['auth']
    for name, value in {
        'stores': ['cinder'],
        'default_store': 'cinder',
        'cinder_store_auth_address': auth['auth_url'],
        'cinder_store_user_name': auth['username'],
        'cinder_store_password': auth['password'],
        'cinder_store_project_name': auth['project_name'],
        'cinder_store_user_domain_name': auth.get('user_domain_name', 'Default'),
        'cinder_store_project_domain_name': auth.get('project_domain_name', 'Default'),
        'cinder_os_region_name': cloud.get('region_name'),
        'cinder_state_transition_timeout': 300,
    }.items():
        conf.set_override(name, value, group='glance_store')
    glance_store.create_stores(conf)
    glance_store.verify_default_store()
    # os_brick.privileged registers this group when imported (create_stores did).
    conf.set_override('helper_command', 'privsep-helper', group='privsep_osbrick')
    return glance_store.get_store_from_scheme('cinder')


def warm_up(store):
    # What the first attach of a fresh process pays once (glance_store's own calls).
    from os_brick.initiator import connector
    from oslo_privsep import priv_context
    root_helper = store.get_root_helper()
    priv_context.init(root_helper=shlex.split(root_helper))
    connector.get_connector_properties(root_helper, '127.0.0.1', False, False)


def location(uri):
    return gs_location.get_location_from_uri(uri, conf=cfg.CONF)


def main():
    parser = argparse.ArgumentParser(description='glance_store cinder store, test-only CLI')
    parser.add_argument('--cloud', default='cinderfs-glance')
    parser.add_argument('--clouds', default='/var/tmp/cinderfs-openstack/clouds.yaml')
    parser.add_argument('--owner', default='cinderfs-interop', help="image_owner metadata (glance: the image's project)")
    parser.add_argument('--debug', action='store_true')
    parser.add_argument('--warm', action='store_true',
                        help='start the privsep daemon before the call, as a long-running glance-api has (benchmark)')
    sub = parser.add_subparsers(dest='command', required=True)
    add = sub.add_parser('add')
    add.add_argument('image_id')
    add.add_argument('file')
    add.add_argument('size', type=int)
    get = sub.add_parser('get')
    get.add_argument('location')
    get.add_argument('out')
    sub.add_parser('get-size').add_argument('location')
    sub.add_parser('delete').add_argument('location')
    args = parser.parse_args()

    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.debug else logging.WARNING)
    with open(args.clouds) as f:
        store = configure(yaml.safe_load(f)['clouds'][args.cloud])
    context = oslo_context.RequestContext(project_id=args.owner)
    if args.warm:
        warm_up(store)
    started = time.monotonic()

    if args.command == 'add':
        with open(args.file, 'rb') as data:
            uri, size, checksum, multihash, _ = store.add(args.image_id, data, args.size, 'sha512', context=context)
        print(json.dumps({'location': uri, 'size': size, 'checksum': checksum, 'multihash': multihash,
                          'seconds': time.monotonic() - started}))
    elif args.command == 'get':
        chunks, size = store.get(location(args.location), context=context)
        out = sys.stdout.buffer if args.out == '-' else open(args.out, 'wb')
        with out:
            for chunk in chunks:
                out.write(chunk)
        if args.out != '-':
            print(json.dumps({'size': size, 'seconds': time.monotonic() - started}))
    elif args.command == 'get-size':
        print(store.get_size(location(args.location), context=context))
    elif args.command == 'delete':
        store.delete(location(args.location), context=context)


if __name__ == '__main__':
    main()
