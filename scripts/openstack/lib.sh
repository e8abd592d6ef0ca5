# Shared by up, down and service: where the rig lives, its pid files, and how
# each OpenStack service is started and stopped. The caller defines log().
# shellcheck shell=bash

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${CINDERFS_OS_STATE:-/var/tmp/cinderfs-openstack}
# pyenv and friends may shadow python3; OpenStack lives in Debian's python.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
KS_URL=http://127.0.0.1:5000
CINDER_URL=http://127.0.0.1:8776
GLANCE_URL=http://127.0.0.1:9292
# The services `scripts/openstack/service` may stop and start one by one.
OPENSTACK_SERVICES=(keystone cinder-api cinder-scheduler cinder-volume glance-api)

pid_of() { cat "$STATE/run/$1.pid" 2>/dev/null; }
alive() { local pid; pid=$(pid_of "$1") && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
answers() { curl -sf -o /dev/null --max-time 5 "$1"; }

# Each service gets its own session (pgid == pid), so a stop can end the group.
launch() {
  local name=$1; shift
  if alive "$name"; then return; fi
  setsid "$@" >>"$STATE/log/$name.out" 2>&1 </dev/null &
  echo $! >"$STATE/run/$name.pid"
  log "started $name (pid $!)"
}

# start_service NAME: one of OPENSTACK_SERVICES, as up starts it (no-op when running).
start_service() {
  local cinder_conf=(--config-file "$STATE/etc/cinder/cinder.conf")
  case $1 in
    # --http11-socket: uwsgi's plain --http-socket resets keep-alive connections.
    keystone) launch keystone uwsgi --plugins python3 --http11-socket 127.0.0.1:${KS_URL##*:} \
      --wsgi-file /usr/bin/keystone-wsgi-public --master --processes 1 --threads 4 \
      --enable-threads --lazy-apps --die-on-term --buffer-size 65535 \
      --env OS_KEYSTONE_CONFIG_DIR="$STATE/etc/keystone" --env OS_KEYSTONE_CONFIG_FILES=keystone.conf ;;
    cinder-api) launch cinder-api cinder-api "${cinder_conf[@]}" ;;
    cinder-scheduler) launch cinder-scheduler cinder-scheduler "${cinder_conf[@]}" ;;
    cinder-volume) launch cinder-volume env PYTHONPATH="$HERE" cinder-volume "${cinder_conf[@]}" ;;
    # uwsgi: answers in about 4 s (eventlet glance-api: 7 s) with less memory.
    glance-api) launch glance-api uwsgi --ini "$STATE/etc/glance/glance-api-uwsgi.ini" ;;
    *) log "error: no service $1 (one of ${OPENSTACK_SERVICES[*]})"; return 2 ;;
  esac
}

# stop_services SIGNAL NAME...: signal every group first, then wait for each
# (SIGKILL after 10 s), so slow shutdowns overlap.
stop_services() {
  local signal=$1 name pid; shift
  local -A started=()
  for name in "$@"; do
    pid=$(pid_of "$name") || continue
    rm -f "$STATE/run/$name.pid"
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || continue
    kill -"$signal" -- "-$pid" 2>/dev/null || kill -"$signal" "$pid"
    started[$name]=$pid
  done
  for name in "${!started[@]}"; do
    pid=${started[$name]}
    for _ in {1..100}; do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name ($pid) ignored SIG$signal: SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
    fi
    log "stopped $name ($pid)"
  done
}
