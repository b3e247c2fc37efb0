#!/usr/bin/env bash
# A real S3 server for pullcache's tests: OpenStack Swift 2.30 (Debian's python3-swift) with its
# s3api middleware, as one node on 127.0.0.1, plus memcached (Swift's token and listing cache;
# without it small requests take twice as long). Stock Swift on purpose: its S3 API answers 501
# to conditional PUTs, so the tests prove pullcache correct on a store without them.
#
#   S3_STATE=<dir> S3_PORT=<port> bash test/support/s3-server.sh start   prints the env lines
#   S3_STATE=<dir> bash test/support/s3-server.sh stop                   stops what start started
#
# start prints, on stdout and nothing else:
#   S3_ENDPOINT=http://127.0.0.1:<port>
#   S3_ACCESS_KEY_ID=test:tester          (tempauth's account:user)
#   S3_SECRET_ACCESS_KEY=testing
#   S3_REGION=us-east-1
#
# Ports: the proxy (S3) on S3_PORT, account, container and object servers and memcached on the
# four after it; all five within 6200-6299 (a range kept for test servers on this project's CI
# machines). Start fails with exit 3 when one of them is taken, so a caller can try another.
# Everything (configs, rings, objects, logs, PID files) lives in S3_STATE, which must be on a
# file system with user extended attributes (Swift keeps object metadata in them). Nothing is
# installed here: test/prereqs.sh installs python3-swift and memcached. Exit codes: 0 ok,
# 1 failed, 2 packages missing, 3 a port is taken.
set -euo pipefail

: "${S3_STATE:?S3_STATE must name a state directory for the server}"
S3_PORT=${S3_PORT:-6280}
START_TIMEOUT=${S3_START_TIMEOUT:-60}
PY=/usr/bin/python3
ETC=$S3_STATE/etc
RUN=$S3_STATE/run
LOG=$S3_STATE/log
DATA=$S3_STATE/data
LAUNCHER=$S3_STATE/swift_launch.py
SERVERS=(account container object proxy)
# Only 127.0.0.1 is used: eventlet's DNS resolver is not needed, and skipping it starts each
# daemon about half a second sooner.
export EVENTLET_NO_GREENDNS=yes

fail() {
  echo "s3-server: $*" >&2
  exit "${2:-1}"
}

if ! [[ $S3_PORT =~ ^[0-9]+$ ]] || ((S3_PORT < 6200 || S3_PORT + 4 > 6299)); then
  fail "S3_PORT=$S3_PORT: it and the four ports after it must lie in 6200-6299"
fi
declare -A PORT=([proxy]=$S3_PORT [account]=$((S3_PORT + 1)) [container]=$((S3_PORT + 2))
  [object]=$((S3_PORT + 3)) [memcached]=$((S3_PORT + 4)))

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

healthy() { # the server on port $1 answers GET /healthcheck with 200
  local line=''
  {
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET /healthcheck HTTP/1.0\r\n\r\n' >&3
    IFS= read -r -t 2 line <&3 || true
    exec 3>&-
  } 2>/dev/null
  [[ $line == HTTP/1.?\ 200* ]]
}

# A PID file is believed only while that process's command line still names this state
# directory: a PID the system has since given to another process is never signalled.
ours() {
  [[ -r /proc/$1/cmdline ]] && tr '\0' '\n' <"/proc/$1/cmdline" | grep -qF -- "$S3_STATE" &&
    ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}

stop_all() {
  local f pid i
  local -a pids=()
  for f in "$RUN"/*.pid; do
    [[ -f $f ]] || continue
    pid=$(<"$f")
    if [[ $pid =~ ^[0-9]+$ ]] && ours "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$f"
  done
  for ((i = 0; i < 50; i++)); do
    local left=0
    for pid in "${pids[@]}"; do ours "$pid" && left=1; done
    ((left)) || return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do ours "$pid" && kill -KILL "$pid" 2>/dev/null; done
  return 0
}

write_launcher() {
  # Swift reads /etc/swift unless told otherwise before its modules load, and logs to syslog;
  # this launcher keeps both inside the state directory.
  cat >"$LAUNCHER" <<'PY'
import os
import sys


def to_stderr_only(conf, name, log_to_console, log_route, fmt, logger, adapted_logger):
    # Swift's log_custom_handlers hook: drop the syslog handler (there may be no syslog).
    from swift.common.utils import get_logger
    handler = get_logger.handler4logger.pop(logger, None)
    if handler is not None:
        logger.removeHandler(handler)


def rings(etc, ports):
    from swift.common.ring import RingBuilder
    for name, port in zip(('account', 'container', 'object'), ports):
        builder = RingBuilder(6, 1, 1)  # 64 partitions, one replica, one device
        builder.add_dev({'id': 0, 'region': 1, 'zone': 1, 'ip': '127.0.0.1', 'port': int(port),
                         'replication_ip': '127.0.0.1', 'replication_port': int(port),
                         'device': 'd1', 'weight': 1.0, 'meta': ''})
        builder.rebalance()
        builder.get_ring().save(os.path.join(etc, '%s.ring.gz' % name))


def main():
    command, etc = sys.argv[1], sys.argv[2]
    from swift.common import utils
    utils.SWIFT_CONF_FILE = os.path.join(etc, 'swift.conf')
    if command == 'rings':
        rings(etc, sys.argv[3:6])
        return 0
    from swift.common.wsgi import run_wsgi
    return run_wsgi(sys.argv[3], sys.argv[4], verbose=True)


if __name__ == '__main__':
    sys.exit(main())
PY
}

write_configs() {
  local common
  common="bind_ip = 127.0.0.1
workers = 0
user = $(id -un)
swift_dir = $ETC
devices = $DATA
mount_check = false
disable_fallocate = true
recon_cache_path = $S3_STATE/cache
log_custom_handlers = swift_launch.to_stderr_only
log_level = WARNING"
  cat >"$ETC/swift.conf" <<EOF
[swift-hash]
swift_hash_path_suffix = pullcache-test
swift_hash_path_prefix = pullcache-test

[storage-policy:0]
name = Policy-0
default = yes
EOF
  local name
  for name in account container object; do
    cat >"$ETC/$name-server.conf" <<EOF
[DEFAULT]
bind_port = ${PORT[$name]}
$common

[pipeline:main]
pipeline = healthcheck $name-server

[filter:healthcheck]
use = egg:swift#healthcheck

[app:$name-server]
use = egg:swift#$name
# No updater daemon runs here: listings are updated within the request instead.
container_update_timeout = 10
node_timeout = 10
EOF
  done
  # S3's rules where Swift's differ: 5 MiB smallest part, 10 000 parts.
  cat >"$ETC/proxy-server.conf" <<EOF
[DEFAULT]
bind_port = ${PORT[proxy]}
$common

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
node_timeout = 30
conn_timeout = 2

[filter:s3api]
use = egg:swift#s3api
location = us-east-1
max_upload_part_num = 10000
min_segment_size = 5242880

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin

[filter:slo]
use = egg:swift#slo
max_manifest_segments = 10000

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:${PORT[memcached]}

[filter:dlo]
use = egg:swift#dlo
[filter:copy]
use = egg:swift#copy
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:catch_errors]
use = egg:swift#catch_errors
EOF
}

launch() { # name command...: detached from our stdout, so $(...) and execFile return at once
  local name=$1
  shift
  "$@" </dev/null >>"$LOG/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

start() {
  [[ -f /usr/lib/python3/dist-packages/swift/common/middleware/s3api/s3api.py && -x /usr/bin/memcached ]] ||
    fail "python3-swift and memcached are needed: bash test/prereqs.sh installs them" 2
  local name
  for name in "${!PORT[@]}"; do
    listening "${PORT[$name]}" && fail "port ${PORT[$name]} ($name) is taken" 3
  done
  mkdir -p "$ETC" "$RUN" "$LOG" "$DATA/d1" "$S3_STATE/cache"
  "$PY" -c 'import os, sys; p = sys.argv[1]; open(p, "w").close(); os.setxattr(p, "user.t", b"1"); os.unlink(p)' \
    "$DATA/.xattr" 2>/dev/null || fail "$DATA has no user extended attributes, which Swift needs"
  write_launcher
  write_configs
  (cd "$S3_STATE" && "$PY" "$LAUNCHER" rings "$ETC" "${PORT[account]}" "${PORT[container]}" "${PORT[object]}") \
    >>"$LOG/rings.log" 2>&1 || fail "building the rings failed: $(tail -5 "$LOG/rings.log")"
  # memcached's -P file is in the state directory, which is what marks the process as ours.
  launch memcached /usr/bin/memcached -l 127.0.0.1 -p "${PORT[memcached]}" -U 0 -m 64 \
    -P "$RUN/memcached.pidfile" $( ((EUID == 0)) && echo -u root)
  for name in "${SERVERS[@]}"; do
    local conf=$ETC/$name-server.conf
    (cd "$S3_STATE" && launch "$name" env PYTHONPATH="$S3_STATE" "$PY" "$LAUNCHER" serve "$ETC" "$conf" "$name-server")
  done
  local deadline=$((SECONDS + START_TIMEOUT)) ready
  while :; do
    ready=1
    listening "${PORT[memcached]}" || ready=0
    for name in "${SERVERS[@]}"; do
      if ! ours "$(<"$RUN/$name.pid")"; then
        stop_all
        fail "$name exited while starting: $(tail -20 "$LOG/$name.log")"
      fi
      healthy "${PORT[$name]}" || ready=0
    done
    ((ready)) && break
    if ((SECONDS >= deadline)); then
      stop_all
      fail "not ready within ${START_TIMEOUT}s; logs in $LOG"
    fi
    sleep 0.1
  done
  printf '%s\n' "S3_ENDPOINT=http://127.0.0.1:${PORT[proxy]}" 'S3_ACCESS_KEY_ID=test:tester' \
    'S3_SECRET_ACCESS_KEY=testing' 'S3_REGION=us-east-1'
}

case ${1:-} in
  start) start ;;
  stop) [[ -d $RUN ]] && stop_all ;;
  *) fail "usage: S3_STATE=<dir> [S3_PORT=<port>] $0 start|stop" 64 ;;
esac
