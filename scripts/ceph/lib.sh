# Shared by scripts/ceph/up and scripts/ceph/down (sourced, not run).
# The cluster lives entirely in $dir: conf, keyrings, data, logs, pid files.
dir=${CINDERFS_CEPH_DIR:-/var/tmp/cinderfs-ceph}
conf=$dir/ceph.conf
daemons=(osd.0 mgr.x mon.a)   # stop order: clients of the mon first

log() { printf 'ceph: %s\n' "$*" >&2; }

# The pid in run/<name>.pid, if that process is alive and is our daemon (it was
# started with our conf), so a reused pid is never mistaken for it.
our_pid() {
  local pid_file=$dir/run/$1.pid pid
  [[ -s $pid_file ]] || return 1
  pid=$(<"$pid_file")
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$conf" || return 1
  echo "$pid"
}
