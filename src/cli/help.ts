export const usage = `NAME
    cinderfs - Glance images in Cinder volumes, as plain files

SYNOPSIS
    cinderfs mount MOUNTPOINT [OPTIONS] [-o opt,opt,...]
    cinderfs unmount MOUNTPOINT
    cinderfs register [IMAGE_ID...] --backend cinder [--dry-run] [--retire] [OPTIONS]
    cinderfs status MOUNTPOINT [--json]
    cinderfs doctor [MOUNTPOINT] [OPTIONS]
    cinderfs SOURCE MOUNTPOINT -o opt,opt,...    (as mount -t fuse.cinderfs runs it)
    cinderfs --help | --version

DESCRIPTION
    cinderfs mounts a FUSE file system in which every image volume is a
    regular file. Writing a new file creates a volume (image-<name>), streams
    the bytes into it, and finalises it when the writer closes it: metadata
    (glance_image_id, image_size, image_owner, md5 and sha512) is set and the
    volume is marked read-only, as Glance's cinder store does. Reading
    attaches the volume read-only on first use, serves it through an LRU
    block cache with readahead, and detaches it when idle. rm deletes the
    volume. Finalised images are immutable: writing or truncating them fails
    with EROFS ("Read-only file system"); rename and rm still work.

    mount runs in the foreground until SIGINT or SIGTERM, then fails uploads
    still being written, detaches every volume, unmounts and exits 0. Under
    systemd (Type=notify) it reports readiness once the mount answers; see
    contrib/cinderfs.service.

    mount -t fuse.cinderfs SOURCE MOUNTPOINT -o opt,opt (or an /etc/fstab
    line of type fuse.cinderfs) runs cinderfs SOURCE MOUNTPOINT -o opt,opt
    through mount.fuse3: it returns once mounted and the daemon goes on in
    the background, logging to --log-file. SOURCE is local, local:DIR,
    cinder, cinder:CLOUD or cinderfs. Every option below is also an -o
    option, with _ or - (cache_size=1G, allow_other, ro for --read-only);
    generic mount options (defaults, rw, nofail, _netdev, x-systemd.*) are
    ignored.

    status prints what the daemon on MOUNTPOINT does now: uploads with bytes
    and rate, reads with the time left, attachments, cache use. It asks the
    daemon over a socket only root can open.

    doctor checks what the daemon needs, one line each (ok, skip or FAIL and
    how to fix it): /dev/fuse, the FUSE library, privileges, the local
    directory or the cloud's credentials, Keystone, Cinder and its
    microversion, the volume type, Ceph keyrings, and MOUNTPOINT (else every
    cinderfs mount) for a stale mount. Give it the flags the mount uses.

    Outages: a cleanup step that fails (a detach, a volume delete, marking an
    image read-only) is retried with backoff while the daemon runs, and at
    stop for at most --api-retry-window; what is still left then is logged,
    one line each, and the next start's recovery does it (exit status 1).
    The calls an upload needs (create, grow, attach, final metadata) retry
    through an outage of up to --api-retry-window while writes wait in the
    write buffer; past it the writer gets EIO. Reading an image that is not
    attached yet fails at once with EIO while Cinder cannot be reached.

    register makes Glance serve images from their volumes: for each complete
    image volume whose name is a Glance image id (or only the IMAGE_IDs
    given), it compares the size, md5 and sha512 Glance recorded with the ones
    cinderfs computed while writing and, when they match, adds the volume's
    cinder:// location (PATCH /v2/images/{id}; Glance needs
    show_multiple_locations = True). One line per image (registered,
    already-there, mismatch, not-in-glance, no-hashes, empty, failed) and a
    summary on stdout. Images Glance does not know are left alone.

OPTIONS
    --backend local|cinder
        Where volumes live. local (the default) keeps them as sparse files
        under --local-dir and needs no OpenStack.
    --local-dir DIR
        Directory of the local backend (default /var/lib/cinderfs/volumes as
        root, else ~/.local/share/cinderfs/volumes).
    --cache-size SIZE
        Byte budget of the block cache (default 512M).
    --block-size SIZE
        Cache block size, the unit of device reads (default 1M; a power of
        two from 4K to 64M).
    --readahead SIZE
        Largest sequential readahead window (default 16M).
    --idle-detach SECONDS
        Detach a volume after this long without readers (default 30).
    --seal-delay SECONDS
        A finalised image stays writable by this host for this long after
        its last writer closed (default 10): tools that create a file, close
        it and open it again for writing (qemu-img convert and create,
        truncate then dd conv=notrunc) continue the same image, and a write
        that truncates starts it over. The image is finalised at every close
        (size, md5, sha512 recorded; errors reach close), and marked
        read-only when the delay ends with no writer; after that writing
        fails with EROFS. 0 seals at the last close.
    --write-buffer SIZE
        Writes held in memory while a volume grows (default 256M).
    --list-ttl SECONDS
        How long a volume listing is trusted (default 5), and at least ten
        times as long as the listing took (a library of thousands of volumes).
    --api-retry-window SECONDS
        How long each OpenStack call an upload needs keeps retrying a
        refused connection or a 5xx (a service restart) before the writer
        gets EIO (default 60); also how long the janitor may finish pending
        cleanups at stop.
    --cinder-state-timeout SECONDS
        cinder backend: how long a volume may take to be created, extended
        or deleted (default 300, or cinder_state_transition_timeout of
        --glance-config).
    --os-cloud NAME
        cinder backend: the cloud of clouds.yaml to use (./clouds.yaml,
        ~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml).
        Without it, OS_CLOUD or the standard OS_* variables are used.
    --glance-config FILE
        cinder backend: use exactly Glance's cinder store account and options
        (cinder_store_*, cinder_volume_type, cinder_catalog_info, ...) from
        glance-api.conf.
    --volume-type NAME
        cinder backend: volume type of new image volumes.
    --os-max-microversion 3.N
        cinder backend: never use a newer Cinder microversion than this
        (default: the newest both sides know, up to 3.54). Below 3.54
        cinderfs attaches with the legacy volume actions; below 3.42 it
        grows a volume being written by detaching, extending and attaching
        it again. Overrides block_storage_api_version of clouds.yaml.
    --ceph-keyring-dir DIR
        Where <cluster>.client.<user>.keyring files are, for volumes Cinder
        serves from Ceph RBD (default /etc/ceph).
    --iscsi-initiator IQN
        The iSCSI initiator name cinderfs logs in as and gives Cinder, which
        exports iSCSI volumes to it (default: InitiatorName of
        /etc/iscsi/initiatorname.iscsi, else iqn.2026-12.io.cinderfs:HOST).
    --image-owner ID
        image_owner of new images (default: the project of the OpenStack
        account, as Glance records it; cinderfs with the local backend).
    --host NAME
        Host name used for attachments and recovery (default: this host's).
    --fuse-binding fuse3|fuse-native
        How the kernel's FUSE requests reach cinderfs. fuse3 (the default)
        is cinderfs's own binding of libfuse3's low-level API: 1 MiB
        requests, one inode per volume, and sealed images cached by the
        kernel's page cache (a re-read never reaches the daemon). fuse-native
        binds libfuse 2.9 (128 KiB requests, no kernel caching of data), for
        hosts without libfuse3.
    --allow-other
        Let users other than the one who mounted use the mount.
    --read-only
        Refuse every change.
    --create-ahead N
        cinder backend: keep N spare 1 GiB volumes created and attached ahead
        of need (default 0), so a new image costs one request instead of a
        create, its status polls and an attach: for migrating many small
        images. Each spare holds a volume and 1 GiB of quota while the mount
        runs; a clean stop deletes them, and so does recovery after a crash.
    --glance-register
        mount: register each image in Glance when it is sealed or renamed to
        its image id (as register does), in the background.
    --glance-store ID
        The id of Glance's cinder store in a multi-store Glance, for location
        URLs cinder://ID/VOLUME (default: the cinder backend section of
        --glance-config; else the single-store form cinder://VOLUME).
    --glance-url URL
        Glance's endpoint instead of the catalog's (type image).
    --retire
        register, --glance-register: once Glance lists the volume, remove the
        image's other locations. Glance deletes the data behind each removed
        location (the old file). Never the last location, never on mismatch.
    --dry-run
        register: decide and print, change nothing.
    --log-level LEVEL
        fatal, error, warn, info (default), debug, trace or silent. Logs are
        JSON lines on stderr, pretty when stderr is a terminal. Uploads and
        reads log their progress every 5 s while they run.
    --log-file FILE
        Append the logs to FILE instead (default for a mount helper's daemon:
        /var/log/cinderfs/<mountpoint>.log).
    --metrics-addr HOST:PORT
        Serve Prometheus metrics at http://HOST:PORT/metrics (off by
        default; :PORT or PORT listen on 127.0.0.1).
    -f, --foreground
        As a mount helper: stay in the foreground.
    --json
        status: print JSON.
    -h, --help
        This text.
    --version
        The version.

SIZES
    Bytes, or a number with K, M, G or T (powers of 1024): 512K, 1M, 2G.

EXIT STATUS
    0 on a clean stop, 1 on a failure while running or cleanups left for
    the next start, 2 for bad flags or configuration (one line on stderr
    says which). register: 0 every image registered or already there, 1 a
    failure or Glance unreachable, 3 a checksum mismatch, 4 some images left
    alone (not in Glance, no hashes, empty). status: 1 when not root or no
    daemon answers. doctor: 0 only when every check passed.

EXAMPLES
    cinderfs mount /mnt/images
    cp cirros.img /mnt/images/8a1f3c1e-0b7e-4a4c-9d7d-3f1c2b6a9e10
    rsync -a /var/lib/glance/images/ /mnt/images/
    cinderfs register --backend cinder --glance-config /etc/glance/glance-api.conf --dry-run
    cinderfs status /mnt/images
    cinderfs unmount /mnt/images
    cinderfs doctor --backend cinder --os-cloud glance /mnt/images
    mount -t fuse.cinderfs cinder:glance /mnt/images -o cache_size=1G,metrics_addr=:9717
`
