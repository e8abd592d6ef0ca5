# TEST-ONLY Cinder volume driver for cinderfs's test rig. Never use it in a
# real cloud: it keeps every volume as a sparse file on the cinder-volume
# host and "exports" it as a loop device on that same host.
#
# Why it exists: the test machine's kernel has no device-mapper (no LVM
# driver), no iSCSI/NVMe initiator, no RBD and no NFS client, so no in-tree
# driver can be attached here. cinderfs and cinder-volume run on one host,
# so a loop device over the volume file is a real block device for it.
#
# Connection info: {"driver_volume_type": "local",
#                   "data": {"device_path": "/dev/loopN", "read_only": bool,
#                            "backing_file": "<dir>/volume-<id>", ...}}
# ('local' is also what os-brick's LocalConnector understands.)
#
# With cinderfs_test_export = iscsi the same files are exported instead
# through Cinder's own tgt target helper (TgtAdm, as the LVM driver does with
# target_helper = tgtadm): a tgtd target per volume with CHAP, and the
# connection info is Cinder's real iscsi one (target_portal, target_iqn,
# target_lun, auth_method CHAP, ...), which only a userspace initiator can
# use here. Read-only is the initiator's to enforce, as with LVM (Cinder
# sends access_mode).
#
# An attachment gets a read-only loop when Cinder passes connector mode
# 'ro' or the volume carries the readonly admin flag. One loop per
# (volume, ro/rw) is shared by the attachments of one host and detached
# with the last of them, or when the volume is deleted. Extend truncates
# the file and refreshes the capacity of attached loops (online extend).
#
# cinder.conf:
#   [cinderfs-test]
#   volume_driver = cinderfs_test_driver.TestFileDriver
#   volume_backend_name = cinderfs-test
#   cinderfs_test_volume_dir = /var/tmp/cinderfs-openstack/volumes
# with this directory on cinder-volume's PYTHONPATH; cinder-volume runs as
# root (loop device ioctls).

import errno
import fcntl
import glob
import json
import os
import stat
import struct
import threading

from oslo_concurrency import processutils
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import importutils
from oslo_utils import units

from cinder import exception
from cinder import interface
from cinder.volume import driver

LOG = logging.getLogger(__name__)

OPTS = [
    cfg.StrOpt('cinderfs_test_volume_dir',
               default='$state_path/cinderfs-test-volumes',
               help='Directory with one sparse file per volume.'),
    cfg.StrOpt('cinderfs_test_export', default='local',
               choices=['local', 'iscsi'],
               help='local: loop devices; iscsi: tgtd targets via TgtAdm.'),
    cfg.StrOpt('cinderfs_test_clone_log',
               default='$state_path/cinderfs-test-clones.jsonl',
               help='Each clone appends {"volume", "source"} here, so tests '
                    'can tell a clone from a copy through Glance.'),
]
cfg.CONF.register_opts(OPTS)


# Loop devices through the kernel's ioctls rather than losetup: each losetup
# was a fork of the whole cinder-volume process, about 60 % of the driver's
# CPU per attach and detach on the test machine (2 cores), which is the rig's
# cost, not Cinder's or cinderfs's. <linux/loop.h>:
_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LOOP_CLR_FD = 0x4C01
_LOOP_SET_CAPACITY = 0x4C07
_LO_FLAGS_READ_ONLY = 1
_LO_FLAGS_DIRECT_IO = 16
# struct loop_config { u32 fd, block_size; struct loop_info64 info;
# u64 reserved[8]; }, loop_info64 = 5 u64, 4 u32 (flags last), names, keys
_LOOP_CONFIG = struct.Struct('=II5Q4I64s64s32s2Q8Q')


def _loop_node(index):
    path = '/dev/loop%d' % index
    if not os.path.exists(path):  # devtmpfs may not have made it yet
        try:
            os.mknod(path, 0o660 | stat.S_IFBLK, os.makedev(7, index))
        except FileExistsError:
            pass
    return path


def _loop_attach(path, read_only):
    """Binds a free loop device to path (direct I/O) and returns its node."""
    flags = _LO_FLAGS_DIRECT_IO | (_LO_FLAGS_READ_ONLY if read_only else 0)
    backing = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
    try:
        control = os.open('/dev/loop-control', os.O_RDWR)
        try:
            for _attempt in range(16):
                device = _loop_node(fcntl.ioctl(control, _LOOP_CTL_GET_FREE))
                fd = os.open(device, os.O_RDWR)
                try:
                    config = _LOOP_CONFIG.pack(
                        backing, 0, 0, 0, 0, 0, 0, 0, 0, 0, flags,
                        os.fsencode(path)[:63], b'', b'', 0, 0, *[0] * 8)
                    fcntl.ioctl(fd, _LOOP_CONFIGURE, config)
                    return device
                except OSError as e:
                    if e.errno != errno.EBUSY:  # taken meanwhile: next one
                        raise
                finally:
                    os.close(fd)
            raise exception.VolumeBackendAPIException(
                data='no free loop device for %s' % path)
        finally:
            os.close(control)
    finally:
        os.close(backing)


def _loop_ioctl(device, request):
    fd = os.open(device, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, request, 0)
    finally:
        os.close(fd)


@interface.volumedriver
class TestFileDriver(driver.VolumeDriver):
    """Sparse files attached as loop devices (test only)."""

    VERSION = '1.0.0'
    CI_WIKI_NAME = 'none'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(OPTS)
        # losetup --find + attach is not atomic across threads
        self._loop_lock = threading.Lock()
        self._iscsi = self.configuration.cinderfs_test_export == 'iscsi'
        if self._iscsi:
            # What LVMVolumeDriver does with target_helper = tgtadm.
            self.target_driver = importutils.import_object(
                self.target_mapping['tgtadm'],
                configuration=self.configuration, executor=self._execute)

    @staticmethod
    def get_driver_options():
        return OPTS

    def _file(self, volume):
        return os.path.join(self.configuration.cinderfs_test_volume_dir,
                            volume.name)

    def local_path(self, volume):
        return self._file(volume)

    def do_setup(self, context):
        os.makedirs(self.configuration.cinderfs_test_volume_dir,
                    exist_ok=True)

    def check_for_setup_error(self):
        if self._iscsi:
            return
        if not os.path.exists('/dev/loop-control'):
            raise exception.VolumeBackendAPIException(
                data='no loop devices (/dev/loop-control)')

    # ------------------------------------------------------------ loops
    def _loops(self, path):
        """{device: read_only} for the loop devices backed by path."""
        devices = {}
        real = os.path.realpath(path)  # sysfs names the resolved path
        for backing in glob.glob('/sys/block/loop*/loop/backing_file'):
            block = os.path.dirname(os.path.dirname(backing))
            try:
                with open(backing) as f:
                    if f.read().strip() != real:
                        continue
                with open(os.path.join(block, 'ro')) as f:
                    read_only = f.read().strip() == '1'
            except FileNotFoundError:  # detached meanwhile
                continue
            devices['/dev/' + os.path.basename(block)] = read_only
        return devices

    def _detach(self, path, only_read_only=None):
        for device, read_only in self._loops(path).items():
            if only_read_only is None or read_only == only_read_only:
                try:
                    # a device still open is detached by its last close
                    _loop_ioctl(device, _LOOP_CLR_FD)
                except OSError as e:
                    LOG.warning('cinderfs-test: detach %s: %s', device, e)

    def _loop_for(self, path, read_only):
        for device, ro in self._loops(path).items():
            if ro == read_only:
                return device
        # Direct I/O, as the local backend attaches: the backing file's pages are not cached twice.
        return _loop_attach(path, read_only)

    @staticmethod
    def _read_only(volume, connector):
        mode = (connector or {}).get('mode')
        if mode in ('ro', 'rw'):
            return mode == 'ro'
        try:
            admin = volume.admin_metadata or {}
        except Exception:  # non-admin contexts may not lazy-load it
            admin = {}
        return admin.get('readonly') == 'True'

    # ---------------------------------------------------------- volumes
    def create_volume(self, volume):
        with open(self._file(volume), 'xb') as f:
            f.truncate(volume.size * units.Gi)
        if self._iscsi:
            return {}  # create_export sets the target's location
        return {'provider_location': self._file(volume)}

    def delete_volume(self, volume):
        path = self._file(volume)
        with self._loop_lock:
            self._detach(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            LOG.info('cinderfs-test: %s was already gone', path)

    def create_cloned_volume(self, volume, src_vref):
        # Cinder's clone-from-image (allowed_direct_url_schemes = cinder) ends
        # here; without it the image would be downloaded through Glance.
        with open(self._file(volume), 'xb'):
            pass
        processutils.execute('cp', '--sparse=always', self._file(src_vref),
                             self._file(volume))
        if volume.size > src_vref.size:
            os.truncate(self._file(volume), volume.size * units.Gi)
        with open(self.configuration.cinderfs_test_clone_log, 'a') as log:
            log.write(json.dumps({'volume': volume.id,
                                  'source': src_vref.id}) + '\n')
        if self._iscsi:
            return {}  # create_export sets the target's location
        return {'provider_location': self._file(volume)}

    def extend_volume(self, volume, new_size):
        path = self._file(volume)
        os.truncate(path, new_size * units.Gi)
        if self._iscsi:
            # re-creates the target of an attached volume so tgtd sees the size
            self.target_driver.extend_target(volume)
            return
        for device in self._loops(path):
            _loop_ioctl(device, _LOOP_SET_CAPACITY)

    # ---------------------------------------------------------- exports
    def ensure_export(self, context, volume):
        if self._iscsi:
            self.target_driver.ensure_export(context, volume,
                                             self._file(volume))

    def create_export(self, context, volume, connector):
        if self._iscsi:
            export = self.target_driver.create_export(context, volume,
                                                      self._file(volume))
            # as LVMVolumeDriver: the target helper's answer, in model fields
            return {'provider_location': export['location'],
                    'provider_auth': export['auth']}

    def remove_export(self, context, volume):
        if self._iscsi:
            self.target_driver.remove_export(context, volume)

    def validate_connector(self, connector):
        if self._iscsi:
            # needs the connector's `initiator`, as for any iSCSI driver
            return self.target_driver.validate_connector(connector)
        return True  # a local attach needs no initiator or WWPNs

    def initialize_connection(self, volume, connector, **kwargs):
        if self._iscsi:
            return self.target_driver.initialize_connection(volume, connector)
        path = self._file(volume)
        read_only = self._read_only(volume, connector)
        with self._loop_lock:
            device = self._loop_for(path, read_only)
        LOG.info('cinderfs-test: volume %s on %s (read_only=%s) for host %s',
                 volume.id, device, read_only, (connector or {}).get('host'))
        return {'driver_volume_type': 'local',
                'data': {'device_path': device, 'backing_file': path,
                         'read_only': read_only, 'volume_id': volume.id}}

    def terminate_connection(self, volume, connector, **kwargs):
        if self._iscsi:
            return self.target_driver.terminate_connection(volume, connector,
                                                           **kwargs)
        path = self._file(volume)
        if connector is None or kwargs.get('force'):
            with self._loop_lock:
                self._detach(path)
            return False
        read_only = self._read_only(volume, connector)
        host = connector.get('host')
        # attachments (this one included) still using this host's loop of
        # the same kind
        sharing = [a for a in volume.volume_attachment or []
                   if a.attach_status in ('attached', 'attaching')
                   and (a.connector or {}).get('host') == host
                   and self._read_only(volume, a.connector) == read_only]
        if len(sharing) > 1:
            return True
        with self._loop_lock:
            self._detach(path, read_only)
        return False

    # ------------------------------------------------------------ stats
    def _update_volume_stats(self):
        st = os.statvfs(self.configuration.cinderfs_test_volume_dir)
        self._stats = {
            'volume_backend_name':
                self.configuration.safe_get('volume_backend_name'),
            'vendor_name': 'cinderfs test rig',
            'driver_version': self.VERSION,
            'storage_protocol': 'iSCSI' if self._iscsi else 'local',
            'total_capacity_gb': round(st.f_blocks * st.f_frsize / units.Gi, 2),
            'free_capacity_gb': round(st.f_bavail * st.f_frsize / units.Gi, 2),
            'reserved_percentage': 0,
            'thin_provisioning_support': True,
            'thick_provisioning_support': False,
            'max_over_subscription_ratio': 20.0,
            'multiattach': True,
            'QoS_support': False,
        }
