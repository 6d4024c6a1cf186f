#!/bin/busybox sh
# Guest /init for benches/vm-rows.sh: runs the same fio workloads against every VM target,
# RUNS times with the targets interleaved within a run, and leaves the fio JSON outputs as
# a tar archive on /dev/vda for the host. Console lines: "VMB-INFO ...", "VMB-ERR <target> ...",
# "VMB: DONE" at the end.
#
# Disks: vda = results (tar written at the end), vdb and vdc = bench disks (vdc only for the
# replicated targets' second node). Settings come from /bench.env (written by the host):
# RUNS, TARGETS, WORKLOADS, FIO_SIZE, JOB_LIMIT_S, SYNC_LIMIT_S.
#
# Must never: judge a number (the host computes medians and ratios), or leave a target's
# daemons or devices behind for the next target (each teardown is checked).
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp; mount -t tmpfs run /run
mkdir -p /res /var/lib/drbd /var/run/drbd /run/drbd /var/lock
ip link set lo up
export PATH=/bin:/sbin
. /bench.env

info() { echo "VMB-INFO $*"; }
err() { echo "VMB-ERR $CUR $*"; }
wait_for() { # wait_for SECS CMD...: polls CMD every 0.2 s
  n=$(( $1 * 5 )); shift
  while [ $n -gt 0 ]; do "$@" && return 0; sleep 0.2; n=$((n - 1)); done
  return 1
}
for m in loop virtio_blk ublk_drv lru_cache libcrc32c drbd; do insmod /lib/$m.ko || echo "VMB-ERR boot insmod $m"; done
for d in vda vdb vdc; do [ -b /dev/$d ] || echo "VMB-ERR boot no /dev/$d"; done
info "kernel $(uname -r), $(nproc) cpus, $(grep MemTotal /proc/meminfo | tr -s ' ')"
info "clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo unknown)"

# --- drbdd ------------------------------------------------------------------------------
ctl() { n=$1; shift; drbdctl --run-dir /run/drbdd-$n --config-dir /etc/drbdd-$CUR --node $n "$@"; }
ctl_log() { # ctl_log NODE ARGS...: runs drbdctl, reports a failure with its output
  n=$1; shift
  ctl $n "$@" > /tmp/ctl.out 2>&1 || { err "drbdctl $* on $n: $(tr '\n' ' ' < /tmp/ctl.out)"; return 1; }
}
drbdd_conf() { # drbdd_conf PROTOCOL NODES [NET-LINE [DISK-LINE]]: writes /etc/drbdd-$CUR/resources.d/r0.toml
  mkdir -p /etc/drbdd-$CUR/resources.d
  f=/etc/drbdd-$CUR/resources.d/r0.toml
  { echo 'resource = "r0"'; echo 'frontend = ["ublk"]'; echo 'max-peers = 1'
    echo; echo '[net]'; echo "protocol = \"$1\""; [ -n "${3:-}" ] && echo "$3"
    echo; echo '[disk]'; echo 'resync-rate = "1000M"'; echo 'c-plan-ahead = 0'; [ -n "${4:-}" ] && echo "$4"
    echo; echo '[on.alpha]'; echo 'node-id = 0'; echo 'address = "127.0.0.1:7789"'
    echo 'minor = 0'; echo 'disk = "/dev/vdb"'; echo 'meta-disk = "internal"'
    if [ "$2" = 2 ]; then
      echo; echo '[on.beta]'; echo 'node-id = 1'; echo 'address = "127.0.0.1:7790"'
      echo 'minor = 1'; echo 'disk = "/dev/vdc"'; echo 'meta-disk = "internal"'
    fi
  } > $f
}
drbdd_start_node() { # drbdd_start_node NODE
  mkdir -p /run/drbdd-$1; rm -f /run/drbdd-$1/drbdd.sock
  drbdd --config-dir /etc/drbdd-$CUR --run-dir /run/drbdd-$1 --node $1 >> /tmp/drbdd-$CUR-$1.log 2>&1 &
  wait_for 30 test -S /run/drbdd-$1/drbdd.sock || { err "drbdd $1 made no control socket: $(tail -5 /tmp/drbdd-$CUR-$1.log | tr '\n' ' ')"; return 1; }
  ctl_log $1 create-md --force r0 && ctl_log $1 up r0
}
drbdd_setup() { # drbdd_setup PROTOCOL NODES [NET-LINE [DISK-LINE]] -> DEV=/dev/ublkb0
  drbdd_conf "$1" "$2" "${3:-}" "${4:-}"
  drbdd_start_node alpha || return 1
  if [ "$2" = 2 ]; then
    drbdd_start_node beta || return 1
    wait_for 30 sh -c "drbdctl --run-dir /run/drbdd-alpha --config-dir /etc/drbdd-$CUR --node alpha status r0 2>/dev/null | grep -q 'beta role:'" \
      || { err "alpha and beta did not connect: $(ctl alpha status r0 2>&1 | tr '\n' ' ')"; return 1; }
  fi
  ctl_log alpha primary --force r0 || return 1
  wait_for 30 test -b /dev/ublkb0 || { err "no /dev/ublkb0 after primary"; return 1; }
  if [ "$2" = 2 ]; then
    t0=$(cut -d' ' -f1 /proc/uptime)
    wait_for "$SYNC_LIMIT_S" sh -c "drbdctl --run-dir /run/drbdd-alpha --config-dir /etc/drbdd-$CUR --node alpha status r0 2>/dev/null | grep -q 'peer-disk:UpToDate'" \
      || { err "initial sync did not finish in $SYNC_LIMIT_S s: $(ctl alpha status r0 2>&1 | tr '\n' ' ')"; return 1; }
    info "$CUR initial sync done at uptime $(cut -d' ' -f1 /proc/uptime) (started $t0)"
  fi
  DEV=/dev/ublkb0
}
drbdd_teardown() {
  for n in alpha beta; do
    [ -S /run/drbdd-$n/drbdd.sock ] || continue
    ctl $n secondary r0 > /dev/null 2>&1; ctl $n down r0 > /dev/null 2>&1
  done
  for p in $(pidof drbdd); do kill $p; done
  wait_for 20 sh -c '! pidof drbdd >/dev/null' || { err "drbdd did not stop on SIGTERM"; killall -9 drbdd; sleep 1; }
  rm -rf /run/drbdd-alpha /run/drbdd-beta
  wait_for 10 sh -c '! test -b /dev/ublkb0' || err "/dev/ublkb0 left behind"
}

# --- in-kernel DRBD 8.4 -----------------------------------------------------------------
d84() { drbdsetup-84 "$@" > /tmp/d84.out 2>&1 || { err "drbdsetup-84 $*: $(tr '\n' ' ' < /tmp/d84.out)"; return 1; }; }
drbd84_setup() { # drbd84_setup PROTOCOL -> DEV=/dev/drbd0; skips the initial sync like the anchor
  for i in 0 1; do
    d=/dev/vdb; [ $i = 1 ] && d=/dev/vdc
    yes | drbdmeta --force $i v08 $d internal create-md > /tmp/md.out 2>&1 || { err "drbdmeta create-md $d: $(tail -3 /tmp/md.out | tr '\n' ' ')"; return 1; }
  done
  d84 new-resource r0 && d84 new-minor r0 0 0 && d84 new-resource r1 && d84 new-minor r1 1 0 || return 1
  d84 attach 0 /dev/vdb /dev/vdb internal && d84 attach 1 /dev/vdc /dev/vdc internal || return 1
  d84 connect r0 ipv4:127.0.0.1:7789 ipv4:127.0.0.1:7790 --protocol=$1 || return 1
  d84 connect r1 ipv4:127.0.0.1:7790 ipv4:127.0.0.1:7789 --protocol=$1 || return 1
  wait_for 30 sh -c '[ $(grep -c "cs:Connected" /proc/drbd) = 2 ]' || { err "drbd 8.4 did not connect: $(tr '\n' ' ' < /proc/drbd)"; return 1; }
  d84 new-current-uuid --clear-bitmap 0 || return 1
  sleep 1; d84 primary 0 || return 1
  grep -q "ro:Primary/Secondary ds:UpToDate/UpToDate" /proc/drbd || { err "drbd 8.4 not UpToDate/UpToDate: $(tr '\n' ' ' < /proc/drbd)"; return 1; }
  DEV=/dev/drbd0
}
drbd84_teardown() {
  drbdsetup-84 secondary 0 > /dev/null 2>&1; drbdsetup-84 down r0 > /dev/null 2>&1; drbdsetup-84 down r1 > /dev/null 2>&1
  ! grep -q "cs:" /proc/drbd 2>/dev/null || err "drbd 8.4 minors left: $(tr '\n' ' ' < /proc/drbd)"
}

# --- the other targets ------------------------------------------------------------------
setup() { # setup TARGET -> DEV
  DEV=""
  case "$1" in
    raw) DEV=/dev/vdb ;;
    loop-dio) DEV=$(/bin/losetup --direct-io=on -f --show /dev/vdb 2>/tmp/losetup.err) \
        || { err "losetup --direct-io=on -f --show /dev/vdb: $(tr '\n' ' ' < /tmp/losetup.err)"; return 1; }
      [ "$(cat /sys/block/${DEV#/dev/}/loop/dio)" = 1 ] || err "loop device without direct I/O" ;;
    ublk-loop|ublk-loop-async|ublk-loop-q2)
      case "$1" in ublk-loop-async) how="--async" ;; ublk-loop-q2) how="-q 2" ;; *) how="" ;; esac
      # shellcheck disable=SC2086
      ublk-loop add -n 0 -f /dev/vdb $how --foreground > /tmp/ublk-loop.log 2>&1 &
      echo $! > /tmp/ublk-loop.pid
      wait_for 20 test -b /dev/ublkb0 || { err "no ublkb0: $(tail -3 /tmp/ublk-loop.log | tr '\n' ' ')"; return 1; }
      DEV=/dev/ublkb0 ;;
    drbdd) drbdd_setup C 1 ;;
    drbdd-a) drbdd_setup A 2 ;;
    drbdd-b) drbdd_setup B 2 ;;
    drbdd-c) drbdd_setup C 2 ;;
    drbdd-c-crc) drbdd_setup C 2 'data-integrity-alg = "crc32c"' ;;
    drbdd-c-noflush) drbdd_setup C 2 "" 'disk-flushes = false' ;;
    drbdd-c-1q) export DRBDD_UBLK_QUEUES=1; drbdd_setup C 2; rc=$?
      unset DRBDD_UBLK_QUEUES; return $rc ;;
    drbdd-c-pinned) export DRBDD_UBLK_PIN=1; drbdd_setup C 2; rc=$?
      unset DRBDD_UBLK_PIN; return $rc ;;
    drbdd-c-reaper) export DRBDD_PEER_IO_ENGINE=reaper; drbdd_setup C 2; rc=$?
      unset DRBDD_PEER_IO_ENGINE; return $rc ;;
    drbdd-c-alt) # the other build's drbdd and drbdctl until teardown
      BASE_PATH=$PATH; export PATH=/opt/alt:$PATH; drbdd_setup C 2 ;;
    drbd84-a) drbd84_setup A ;;
    drbd84-b) drbd84_setup B ;;
    drbd84-c) drbd84_setup C ;;
    *) err "unknown target"; return 1 ;;
  esac
}
teardown() {
  case "$1" in
    loop-dio) [ -n "$DEV" ] && losetup -d "$DEV" ;;
    ublk-loop*) # `del` removes the device (a plain kill leaves ublk device 0 behind, dead,
      # and drbdd then refuses minor 0 as someone else's device)
      ublk-loop del -n 0 > /tmp/ublk-del.log 2>&1 || err "ublk-loop del -n 0: $(tr '\n' ' ' < /tmp/ublk-del.log)"
      wait_for 20 sh -c "! kill -0 $(cat /tmp/ublk-loop.pid) 2>/dev/null" || { err "ublk-loop did not exit after del"; kill -9 "$(cat /tmp/ublk-loop.pid)"; sleep 1; }
      [ -e /dev/ublkc0 ] && err "ublk device 0 left behind" ;;
    drbdd*) drbdd_teardown
      [ -n "${BASE_PATH:-}" ] && export PATH=$BASE_PATH && BASE_PATH="" ;;
    drbd84-*) drbd84_teardown ;;
  esac
}

run_job() { # run_job RUN TARGET WORKLOAD
  out=/res/run$1-$2-$3.json
  sed -e "s#@DEV@#$DEV#g" -e "s#@OUT@#$out#g" /fio/$3.args > /tmp/job.args
  perf_pid=""
  case " ${PERF_JOBS:-} " in *" $2:$3 "*)
    echo 0 > /proc/sys/kernel/kptr_restrict; echo -1 > /proc/sys/kernel/perf_event_paranoid
    perf record -e cpu-clock -F 997 -a -o /tmp/perf.data > /tmp/perf.log 2>&1 &
    perf_pid=$! ;;
  esac
  # shellcheck disable=SC2046
  timeout -s KILL "$JOB_LIMIT_S" fio $(cat /tmp/job.args) > /tmp/fio.log 2>&1 \
    || { err "fio $3 failed: $(tail -3 /tmp/fio.log | tr '\n' ' ')"; rm -f "$out"; }
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null
    [ -s /tmp/perf.data ] || err "perf record for $2 $3 failed: $(tail -3 /tmp/perf.log | tr '\n' ' ')"
    cp /tmp/perf.log "/res/perf-$2-$3.log"
    perf report -i /tmp/perf.data --stdio --no-children --sort comm,dso,sym --percent-limit 0.3 \
      > "/res/perf-$2-$3.txt" 2>&1 || err "perf report for $2 $3 failed"
    perf report -i /tmp/perf.data --stdio --no-children --sort comm --percent-limit 0.3 \
      >> "/res/perf-$2-$3.txt" 2>&1
    perf report -i /tmp/perf.data --stdio --no-children --sort comm,dso --percent-limit 0.3 \
      >> "/res/perf-$2-$3.txt" 2>&1
    perf report -i /tmp/perf.data --stdio --no-children --dsos drbdd --sort comm,sym --percent-limit 0.02 \
      >> "/res/perf-$2-$3.txt" 2>&1
    rm -f /tmp/perf.data
  fi
}

for r in $(seq 1 "$RUNS"); do
  for t in $TARGETS; do
    CUR=$t
    start=$(cut -d' ' -f1 /proc/uptime)
    if setup $t; then
      for w in $WORKLOADS; do run_job $r $t $w; done
    fi
    teardown $t
    info "run $r $t done (uptime $start -> $(cut -d' ' -f1 /proc/uptime))"
  done
done
CUR=results
for f in /tmp/drbdd-*.log; do [ -f "$f" ] && cp "$f" /res/; done
tar -cf /dev/vda -C /res . || err "tar to /dev/vda"
sync
echo "VMB: DONE"
poweroff -f
