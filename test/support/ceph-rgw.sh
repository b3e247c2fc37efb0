#!/usr/bin/env bash
# ceph-rgw.sh - a local S3 server for automated tests: Ceph RADOS Gateway.
#
# It runs a one-node Ceph 16.2 (Pacific) cluster from the Debian 12 packages:
# one monitor, one OSD (BlueStore on a sparse file, 1 replica) and radosgw
# with its beast HTTP frontend serving the S3 API, all on 127.0.0.1, with
# cephx off (auth none). No manager daemon is run (RGW does not need one).
#
# Usage: ceph-rgw.sh start|stop|status|env
#
#   start   create the cluster under $CEPH_STATE on first use (mon store, OSD,
#           S3 user), start the daemons in the background, wait until the S3
#           endpoint answers, print the env lines below on stdout. When the
#           server is already running it only prints them.
#   stop    stop the daemons (by recorded PID) and wait for them to exit.
#           Objects stay in $CEPH_STATE (BlueStore); `rm -rf "$CEPH_STATE"`
#           after stop wipes them.
#   status  print "running ..." and exit 0 when every daemon is up,
#           else print "not running ..." and exit 3.
#   env     print the env lines again:
#             S3_ENDPOINT=http://127.0.0.1:6380
#             S3_ACCESS_KEY_ID=tester
#             S3_SECRET_ACCESS_KEY=testing
#             S3_REGION=us-east-1
#             S3_FORCE_PATH_STYLE=1
#
# Settings (environment):
#   CEPH_STATE      directory holding config, mon store, OSD file, logs and PID
#                   files (default /tmp/ceph-test).
#   CEPH_RGW_PORT   S3 endpoint port (default 6380).
#   CEPH_MON_PORT   monitor port (default 6300). Fixed when the state directory
#                   is created.
#   CEPH_OSD_PORTS  port range the OSD binds its 4 ports in (default 6301-6379).
#                   All ports must lie in 6300-6399; the range must not contain
#                   the other two.
#   CEPH_OSD_STORE  bluestore (default; data kept across stop/start) or memstore
#                   (in RAM, data lost on stop). Fixed when the state directory
#                   is created.
#   CEPH_OSD_SIZE_GB  OSD capacity in GiB (default 10). With bluestore a sparse
#                   file of this size: disk space is used only for what is
#                   stored. With memstore the most RAM it may use.
#   CEPH_RGW_DEBUG  radosgw log level (default 1: one line per request in
#                   $CEPH_STATE/log/client.rgw.log; 0 for errors only).
#   CEPH_START_TIMEOUT  seconds to wait for readiness (default 120; a start
#                   normally takes 3-6 s, the first one 6-7 s, on 2 cores).
#
# Progress and errors go to stderr; stdout carries only the env lines.
# Nothing is installed here: missing packages are reported with the apt-get
# line that installs them. Exit codes: 0 ok, 1 error, 2 packages missing,
# 3 (status) not running, or (start) a port is taken: the caller may pick others,
# as test/support/ceph-rgw.ts does.

set -euo pipefail

CEPH_STATE=${CEPH_STATE:-/tmp/ceph-test}
CEPH_RGW_PORT=${CEPH_RGW_PORT:-6380}
CEPH_MON_PORT=${CEPH_MON_PORT:-6300}
CEPH_OSD_PORTS=${CEPH_OSD_PORTS:-6301-6379}
CEPH_OSD_STORE=${CEPH_OSD_STORE:-bluestore}
CEPH_OSD_SIZE_GB=${CEPH_OSD_SIZE_GB:-10}
CEPH_RGW_DEBUG=${CEPH_RGW_DEBUG:-1}
CEPH_START_TIMEOUT=${CEPH_START_TIMEOUT:-120}

ACCESS_KEY='tester'
SECRET_KEY='testing'
REGION='us-east-1'
S3_UID='tester'

APT_LINE='apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common'

CONF=$CEPH_STATE/ceph.conf
RUN=$CEPH_STATE/run
LOG=$CEPH_STATE/log

DAEMONS=(mon osd rgw)

die() { echo "ceph-rgw: $*" >&2; exit 1; }
say() { echo "ceph-rgw: $*" >&2; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

check_settings() {
  local p
  for p in "$CEPH_RGW_PORT" "$CEPH_MON_PORT" "$CEPH_OSD_SIZE_GB" "$CEPH_START_TIMEOUT" "$CEPH_RGW_DEBUG"; do
    is_uint "$p" || die "CEPH_RGW_PORT, CEPH_MON_PORT, CEPH_OSD_SIZE_GB, CEPH_START_TIMEOUT and CEPH_RGW_DEBUG must be numbers"
  done
  [[ $CEPH_OSD_PORTS =~ ^([0-9]+)-([0-9]+)$ ]] || die "CEPH_OSD_PORTS must look like 6301-6379, got \"$CEPH_OSD_PORTS\""
  OSD_PORT_MIN=${BASH_REMATCH[1]}
  OSD_PORT_MAX=${BASH_REMATCH[2]}
  for p in "$CEPH_RGW_PORT" "$CEPH_MON_PORT" "$OSD_PORT_MIN" "$OSD_PORT_MAX"; do
    ((p >= 6300 && p <= 6399)) || die "port $p: all ports must lie in 6300-6399"
  done
  ((OSD_PORT_MAX - OSD_PORT_MIN >= 7)) || die "CEPH_OSD_PORTS needs at least 8 ports"
  for p in "$CEPH_RGW_PORT" "$CEPH_MON_PORT"; do
    ((p < OSD_PORT_MIN || p > OSD_PORT_MAX)) || die "port $p lies inside CEPH_OSD_PORTS=$CEPH_OSD_PORTS"
  done
  ((CEPH_RGW_PORT != CEPH_MON_PORT)) || die "CEPH_RGW_PORT and CEPH_MON_PORT are equal"
  case $CEPH_OSD_STORE in bluestore | memstore) ;; *) die "CEPH_OSD_STORE must be bluestore or memstore" ;; esac
  ((CEPH_OSD_SIZE_GB >= 1)) || die "CEPH_OSD_SIZE_GB must be at least 1"
}

compute_env() {
  cat <<EOF
S3_ENDPOINT=http://127.0.0.1:$CEPH_RGW_PORT
S3_ACCESS_KEY_ID=$ACCESS_KEY
S3_SECRET_ACCESS_KEY=$SECRET_KEY
S3_REGION=$REGION
S3_FORCE_PATH_STYLE=1
EOF
}

print_env() {
  # while a server runs, the settings it was started with win over CEPH_RGW_PORT
  if [[ -f $RUN/env ]] && is_running; then
    cat "$RUN/env"
    return
  fi
  compute_env
}

check_packages() {
  local missing=() b pkg
  for b in ceph-mon:ceph-mon ceph-osd:ceph-osd radosgw:radosgw ceph:ceph-common \
    radosgw-admin:ceph-common monmaptool:ceph-base; do
    pkg=${b#*:}
    [[ -x /usr/bin/${b%%:*} ]] || [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    echo "ceph-rgw: missing Debian packages: ${missing[*]}. Install them with:" >&2
    echo "  $APT_LINE" >&2
    exit 2
  fi
}

# --- PID bookkeeping -------------------------------------------------------
# A PID file is trusted only while /proc/PID/cmdline still holds the config
# path of this state directory, so a recycled PID is never signalled.
is_ours() { # pid
  [[ -r /proc/$1/cmdline ]] || return 1
  tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qxF -- "$CONF" || return 1
  ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null # a zombie has exited
}

pid_alive() { # name -> prints the pid and returns 0 while that daemon runs
  local f=$RUN/$1.pid pid
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  is_ours "$pid" || return 1
  echo "$pid"
}

is_running() {
  local n
  [[ -d $RUN ]] || return 1
  for n in "${DAEMONS[@]}"; do
    pid_alive "$n" >/dev/null || return 1
  done
}

any_pidfile() { compgen -G "$RUN/*.pid" >/dev/null; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http_status() { # GET path on port -> prints the HTTP status code (or 000)
  local port=$1 path=$2 line=''
  {
    exec 3<>"/dev/tcp/127.0.0.1/$port" || {
      echo 000
      return
    }
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$path" >&3
    IFS= read -r -t 2 line <&3 || true
    exec 3>&- 3<&-
  } 2>/dev/null
  line=${line#HTTP/1.? }
  echo "${line:0:3}"
}

lock_state() { # serialise start/stop of one state dir (parallel test runners)
  mkdir -p "$CEPH_STATE"
  exec 9>"$CEPH_STATE/.lock"
  flock -w 180 9 || die "could not lock $CEPH_STATE/.lock within 180 s"
}

ms() { echo $(((${EPOCHREALTIME/./} - ${1/./}) / 1000)); }

# ceph CLI against this cluster only (never /etc/ceph)
cephcli() { timeout 20 ceph -c "$CONF" --connect-timeout 10 "$@" 9>&-; }
rgwadmin() { timeout 30 radosgw-admin -c "$CONF" "$@" 9>&-; }

# --- files -------------------------------------------------------------------
write_conf() { # fsid
  local size=$((CEPH_OSD_SIZE_GB * 1024 * 1024 * 1024))
  mkdir -p "$RUN" "$LOG" "$CEPH_STATE/crash" "$CEPH_STATE/rgw"
  cat >"$CONF.tmp" <<EOF
# written by ceph-rgw.sh at every start; edits are overwritten
[global]
fsid = $1
mon host = v2:127.0.0.1:$CEPH_MON_PORT
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
ms bind port min = $OSD_PORT_MIN
ms bind port max = $OSD_PORT_MAX
# reconnect within 1 s (default: backoff up to 15 s), e.g. to an OSD that
# restarted after a crash on the same port
ms max backoff = 1
# no cephx: the cluster listens on 127.0.0.1 only
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
# every file stays in the state directory
keyring = $CEPH_STATE/keyring
run dir = $RUN
admin socket = $RUN/\$name.asok
pid file = $RUN/\$name.ceph-pid
log file = $LOG/\$name.log
crash dir = $CEPH_STATE/crash
mon data = $CEPH_STATE/mon/\$id
osd data = $CEPH_STATE/osd/\$id
mon cluster log file = default=$LOG/cluster.\$channel.log cluster=$LOG/cluster.log
# one OSD, one replica, few placement groups
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool delete = true
mon osd down out interval = 0
mon data avail warn = 2
mon data avail crit = 1
# quicker osdmap updates (OSD boot, pool creation on the first start)
paxos propose interval = 0.1

[osd]
osd objectstore = $CEPH_OSD_STORE
bluestore block create = true
bluestore block size = $size
memstore device bytes = $size
osd memory target = 1073741824
# each op shard re-opens the block file at start (0.3 s each)
osd op num shards = 1
osd op num threads per shard = 2

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$CEPH_RGW_PORT tcp_nodelay=1
rgw data = $CEPH_STATE/rgw
debug rgw = $CEPH_RGW_DEBUG
# radosgw starts while the OSD is still booting: look for it every 0.5 s
# instead of every 5 s, and fetch a new OSD map after 2 s without an answer
# (default 10 s; matters after a crash, when the map still names the OSD
# that died)
objecter tick interval = 0.5
objecter timeout = 2
# space of deleted objects is reclaimed after minutes, not hours
rgw gc obj min wait = 120
rgw gc processor period = 120
EOF
  mv -f "$CONF.tmp" "$CONF"
}

# --- daemons -----------------------------------------------------------------
start_one() { # name command...
  local name=$1
  shift
  # own session (Ctrl-C in the caller's terminal does not reach it), stdio
  # detached from the caller, the lock (fd 9) not inherited
  setsid "$@" </dev/null >>"$LOG/$name.out" 2>&1 9>&- &
  echo $! >"$RUN/$name.pid"
}

check_alive() { # name: die with the log tail if the daemon has exited
  pid_alive "$1" >/dev/null && return 0
  local logf
  case $1 in mon) logf=$LOG/mon.a.log ;; osd) logf=$LOG/osd.0.log ;; rgw) logf=$LOG/client.rgw.log ;; esac
  stop_daemons
  die "$1 exited during start; last lines of $LOG/$1.out and $logf:
$(tail -n 5 "$LOG/$1.out" 2>/dev/null)
$(tail -n 15 "$logf" 2>/dev/null)"
}

wait_for() { # description deadline command...: poll until command succeeds
  local what=$1 deadline=$2 n
  shift 2
  until "$@" >/dev/null 2>&1; do
    for n in "${STARTED[@]}"; do check_alive "$n"; done
    if ((SECONDS >= deadline)); then
      stop_daemons
      die "$what not ready after ${CEPH_START_TIMEOUT}s; logs in $LOG"
    fi
    sleep 0.2
  done
}

mon_up() { cephcli mon stat; }
rgw_up() { [[ $(http_status "$CEPH_RGW_PORT" /ceph-rgw-readiness-probe) == 404 ]]; } # NoSuchBucket: RGW read RADOS

create_cluster() { # first start of this state dir: mon store, OSD, then marks it
  local fsid osd_uuid
  say "creating a new cluster in $CEPH_STATE ($CEPH_OSD_STORE, ${CEPH_OSD_SIZE_GB} GiB)"
  rm -rf "$CEPH_STATE/mon" "$CEPH_STATE/osd" "$CEPH_STATE/rgw" "$CEPH_STATE/crash" "$CEPH_STATE/monmap" \
    "$CEPH_STATE/created" "$CEPH_STATE/user-created"
  fsid=$(</proc/sys/kernel/random/uuid)
  osd_uuid=$(</proc/sys/kernel/random/uuid)
  write_conf "$fsid"
  mkdir -p "$CEPH_STATE/mon/a" "$CEPH_STATE/osd/0"
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$CEPH_MON_PORT]" \
    --set-min-mon-release pacific --enable-all-features "$CEPH_STATE/monmap" >>"$LOG/create.log" 2>&1 ||
    die "monmaptool failed, see $LOG/create.log"
  ceph-mon -c "$CONF" -i a --mkfs --monmap "$CEPH_STATE/monmap" >>"$LOG/create.log" 2>&1 ||
    die "ceph-mon --mkfs failed, see $LOG/create.log"
  start_one mon ceph-mon -c "$CONF" -i a -f
  STARTED=(mon)
  wait_for monitor $((SECONDS + CEPH_START_TIMEOUT)) mon_up
  [[ $(cephcli osd new "$osd_uuid" 2>>"$LOG/create.log") == 0 ]] ||
    { stop_daemons; die "ceph osd new failed, see $LOG/create.log"; }
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$LOG/create.log" 2>&1 ||
    { stop_daemons; die "ceph-osd --mkfs failed, see $LOG/create.log"; }
  printf 'fsid %s\nmon_port %s\nstore %s\n' "$fsid" "$CEPH_MON_PORT" "$CEPH_OSD_STORE" >"$CEPH_STATE/created"
}

start_daemons() {
  local deadline=$((SECONDS + CEPH_START_TIMEOUT)) fsid created_port created_store
  STARTED=()
  # memstore keeps nothing across a stop (the OSD exits without saving), so
  # such a state directory is created again at every start
  if [[ $(sed -n 's/^store //p' "$CEPH_STATE/created" 2>/dev/null) == memstore ]]; then
    rm -f "$CEPH_STATE/created"
  fi
  if [[ ! -f $CEPH_STATE/created ]]; then
    create_cluster
  else
    fsid=$(sed -n 's/^fsid //p' "$CEPH_STATE/created")
    created_port=$(sed -n 's/^mon_port //p' "$CEPH_STATE/created")
    created_store=$(sed -n 's/^store //p' "$CEPH_STATE/created")
    [[ $created_port == "$CEPH_MON_PORT" ]] ||
      die "$CEPH_STATE was created with CEPH_MON_PORT=$created_port; use that, or stop and rm -rf $CEPH_STATE"
    [[ $created_store == "$CEPH_OSD_STORE" ]] ||
      die "$CEPH_STATE was created with CEPH_OSD_STORE=$created_store; use that, or stop and rm -rf $CEPH_STATE"
    write_conf "$fsid"
    start_one mon ceph-mon -c "$CONF" -i a -f
    STARTED=(mon)
    wait_for monitor "$deadline" mon_up
  fi
  start_one osd ceph-osd -c "$CONF" -i 0 -f
  # radosgw waits by itself until the OSD is up
  start_one rgw radosgw -c "$CONF" -n client.rgw -f
  STARTED=(mon osd rgw)
  wait_for "S3 endpoint" "$deadline" rgw_up
  if [[ ! -f $CEPH_STATE/user-created ]]; then
    if ! rgwadmin user info --uid="$S3_UID" >/dev/null 2>&1; then
      rgwadmin user create --uid="$S3_UID" --display-name="$S3_UID" \
        --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >>"$LOG/create.log" 2>&1 ||
        { stop_daemons; die "radosgw-admin user create failed, see $LOG/create.log"; }
    fi
    touch "$CEPH_STATE/user-created"
  fi
}

stop_pids() { # seconds name...: SIGTERM, wait up to that long, then SIGKILL
  local n pid i wait=$1
  local -a names=() pids=() left=()
  shift
  for n in "$@"; do
    if pid=$(pid_alive "$n"); then
      kill -TERM "$pid" 2>/dev/null || true
      names+=("$n")
      pids+=("$pid")
    fi
  done
  for ((i = 0; i < wait * 20; i++)); do
    left=()
    for ((n = 0; n < ${#pids[@]}; n++)); do
      if is_ours "${pids[n]}"; then left+=("$n"); fi
    done
    if ((${#left[@]} == 0)); then break; fi
    sleep 0.05
  done
  for n in "${left[@]}"; do
    pid=${pids[n]}
    if is_ours "$pid"; then
      say "${names[n]} (pid $pid) did not exit on SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 40; i++)); do
        is_ours "$pid" || break
        sleep 0.05
      done
    fi
  done
}

stop_daemons() {
  [[ -d $RUN ]] || return 0
  # One after the other: radosgw needs the OSD to shut down cleanly, and the
  # OSD tells the monitor that it is going down. Where the daemon they need
  # has died already, they get a short grace time before SIGKILL (BlueStore
  # keeps every acknowledged write across a SIGKILL).
  local grace=15
  pid_alive osd >/dev/null && pid_alive mon >/dev/null || grace=2
  stop_pids "$grace" rgw
  pid_alive mon >/dev/null || grace=2
  stop_pids "$grace" osd
  stop_pids 15 mon
  rm -f "$RUN"/*.pid "$RUN"/*.ceph-pid "$RUN"/*.asok "$RUN/env"
}

# --- verbs -------------------------------------------------------------------
cmd_start() {
  check_settings
  check_packages
  lock_state
  local p t0=$EPOCHREALTIME
  if is_running && [[ -f $RUN/env ]]; then
    p=$(sed -n 's|^S3_ENDPOINT=http://127.0.0.1:||p' "$RUN/env")
    if [[ $(http_status "$p" /ceph-rgw-readiness-probe) == 404 ]]; then
      say "already running (state $CEPH_STATE)"
      cat "$RUN/env"
      return 0
    fi
  fi
  stop_daemons # leftovers of an earlier run that died half-way, if any
  for p in "$CEPH_MON_PORT" "$CEPH_RGW_PORT"; do
    if port_busy "$p"; then
      echo "ceph-rgw: port $p is in use by another process; set CEPH_MON_PORT / CEPH_RGW_PORT (6300-6399)" >&2
      exit 3
    fi
  done
  start_daemons
  compute_env >"$RUN/env"
  say "ready on http://127.0.0.1:$CEPH_RGW_PORT after $(ms "$t0") ms (state $CEPH_STATE)"
  cat "$RUN/env"
}

cmd_stop() {
  if [[ ! -d $RUN ]] || ! any_pidfile; then
    say "not running (state $CEPH_STATE)"
    return 0
  fi
  lock_state
  local t0=$EPOCHREALTIME
  stop_daemons
  say "stopped after $(ms "$t0") ms (state $CEPH_STATE)"
}

cmd_status() {
  local n pid
  if is_running; then
    echo "running: $(sed -n 's/^S3_ENDPOINT=//p' "$RUN/env" 2>/dev/null) (state $CEPH_STATE)"
    for n in "${DAEMONS[@]}"; do
      pid=$(pid_alive "$n") && echo "  $n pid $pid"
    done
    return 0
  fi
  echo "not running (state $CEPH_STATE)"
  return 3
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) check_settings && print_env ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 64
    ;;
esac
