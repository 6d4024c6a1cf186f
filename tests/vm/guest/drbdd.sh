# Guest scenario "drbdd" (sourced by /init): two drbdd daemons (alpha on /dev/vda, beta on
# /dev/vdb) replicate r0 over loopback with protocol C; alpha is Primary and exports r0
# through ublk as /dev/ublkb0. Same filesystem + fio checks as the ublk scenario, then
# kill -9 of the primary daemon with I/O in flight and a restart that re-attaches.
# The daemon creates /dev/ublkb<minor> on promotion, re-attaches to it (ublk user recovery)
# on `up` + `primary` after a crash, and deletes it on demotion (see drbdd/src/daemon/ublk.rs).
. /guest/checks.sh

# A failure shows the first Rust panic of each daemon (die prints only the logs' tails).
die() {
  echo "VM-STEP: $STEP FAILED ($(secs "$T_STEP") s)"
  for f in /tmp/alpha.log /tmp/beta.log; do
    [ -f "$f" ] && grep -q panicked "$f" && { echo "--- first panic in $f"; grep -a -m1 -A4 panicked "$f"; }
  done
  for f in /tmp/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -25 "$f"; }; done
  echo "VM-TEST: FAIL $*"
  sync; poweroff -f; sleep 5; exit 1
}

# Per-step watchdog: a hung step shows the daemons' threads and logs long before QEMU's
# time limit (the die helper prints /tmp/*.log).
STEP_LIMIT_S=400
# Memory at every step boundary: one CI run ended in a guest OOM panic after `down`
# with tiny processes (memory outside them); these lines show where it goes if it recurs.
mem_info() { info "mem: $(grep -E '^(MemAvailable|Shmem|Unevictable|SUnreclaim):' /proc/meminfo | tr -s ' ' | tr '\n' ' ')/tmp $(du -sk /tmp 2>/dev/null | cut -f1) KiB"; }
step() { end_step; mem_info; STEP=$1; T_STEP=$(now_cs); echo "$1 $(( T_STEP + STEP_LIMIT_S * 100 ))" > /tmp/step-deadline; }
watchdog() {
  while sleep 5; do
    read -r name deadline < /tmp/step-deadline 2>/dev/null || continue
    [ "$(now_cs)" -gt "$deadline" ] || continue
    STEP=$name
    info "watchdog: step $name exceeded $STEP_LIMIT_S s; ublkb0 inflight: $(cat /sys/block/ublkb0/inflight 2>/dev/null)"
    for p in $(pidof drbdd); do
      for t in /proc/$p/task/*; do echo "  drbdd $p $(cat $t/comm) $(cut -d' ' -f3 $t/stat) $(cat $t/wchan 2>/dev/null)"; done
    done
    ps | grep -v ' \[.*\]$'
    for n in alpha beta; do info "$n: $(ctl $n status r0 --verbose --statistics 2>&1 | tr '\n' ' ' | tr -s ' ')"; done
    die "watchdog: step $name hung"
  done
}
watchdog &
DEV=/dev/ublkb0
FIO_COMMON="--filename=$DEV --ioengine=io_uring --direct=1 --bs=4k --iodepth=32 --verify=crc32c"
CONF=/etc/drbdd
ctl() { n=$1; shift; drbdctl --run-dir /run/drbdd-$n --config-dir $CONF --node $n "$@"; }

start_daemon() { # start_daemon NODE LOG: starts drbdd for NODE and waits for its socket
  mkdir -p /run/drbdd-$1
  rm -f /run/drbdd-$1/drbdd.sock   # left by a kill -9: would pass the wait below too early
  drbdd --config-dir $CONF --run-dir /run/drbdd-$1 --node $1 >> "$2" 2>&1 &
  eval "PID_$1=$!"
  wait_for 30 test -S /run/drbdd-$1/drbdd.sock || die "drbdd $1 did not create its control socket ($2)"
}

# replicas_diff LABEL: compares the first 64 MiB of alpha's and beta's disks with O_DIRECT
# reads (the daemons write with O_DIRECT; the page cache of /dev/vd* is never used),
# 1 MiB at a time, and prints which MiB chunks differ; for the first one, which 4 KiB
# blocks and what they hold. Returns 1 when they differ. Call it only while no write is
# in flight (protocol C: a completed write is on both disks).
md5_of() { dd if="$1" bs="$2" skip="$3" count=1 iflag=direct 2>/dev/null | md5sum | cut -c1-32; }
replicas_diff() {
  chunks=""; i=0
  while [ $i -lt 64 ]; do
    [ "$(md5_of /dev/vda 1M $i)" = "$(md5_of /dev/vdb 1M $i)" ] || chunks="$chunks $i"
    i=$((i + 1))
  done
  if [ -z "$chunks" ]; then info "replicas $1: first 64 MiB identical"; return 0; fi
  first=${chunks# }; first=${first%% *}
  blocks=""; nblocks=0; j=$((first * 256))
  while [ $j -lt $(((first + 1) * 256)) ]; do
    if [ "$(md5_of /dev/vda 4k $j)" != "$(md5_of /dev/vdb 4k $j)" ]; then
      nblocks=$((nblocks + 1)); [ $nblocks -le 8 ] && blocks="$blocks $j"
    fi
    j=$((j + 1))
  done
  b=${blocks# }; b=${b%% *}
  info "replicas $1: DIFFER in MiB chunks:$chunks; chunk $first has $nblocks differing 4 KiB blocks (first:$blocks)"
  info "  alpha block $b: $(dd if=/dev/vda bs=4k skip=$b count=1 iflag=direct 2>/dev/null | od -A d -t x1 | head -3 | tr '\n' '|')"
  info "  beta  block $b: $(dd if=/dev/vdb bs=4k skip=$b count=1 iflag=direct 2>/dev/null | od -A d -t x1 | head -3 | tr '\n' '|')"
  return 1
}

step config
[ -b /dev/vdb ] || die "no /dev/vdb (run.sh attaches two disks for --drbdd)"
mkdir -p $CONF/resources.d
cp /guest/r0.toml $CONF/resources.d/r0.toml
drbdd --version > /dev/null 2>&1 && info "$(drbdd --version 2>&1 | head -1)"

step start-daemons
start_daemon alpha /tmp/alpha.log
start_daemon beta /tmp/beta.log
SERVER_PID=$PID_alpha

step create-md-up
for n in alpha beta; do
  ctl $n create-md r0 > /tmp/create-md-$n.log 2>&1 || die "drbdctl create-md r0 on $n"
  ctl $n up r0 > /tmp/up-$n.log 2>&1 || die "drbdctl up r0 on $n"
done
# Soft check: the ublk part below still runs on a lone primary; replicas-identical fails later.
# A connected peer shows as "beta role:..." (DRBD prints connection: only when not Connected).
if ! wait_for 20 sh -c "drbdctl --run-dir /run/drbdd-alpha --config-dir $CONF --node alpha status r0 2>/dev/null | grep -q 'beta role:'"; then
  info "WARNING: alpha and beta did not connect within 20 s: $(ctl alpha status r0 2>&1 | tr '\n' ' ' | tr -s ' ')"
fi

step primary
ctl alpha primary --force r0 > /tmp/primary.log 2>&1 || die "drbdctl primary --force r0"
wait_for 30 test -b $DEV || die "no $DEV after primary (frontend = [\"ublk\"])"
show_queue_params $DEV
info "status: $(ctl alpha status r0 2>&1 | tr '\n' ' ' | tr -s ' ')"

step initial-sync
# The file system and fio steps run at full speed once the initial full sync is done
# (under TCG they would starve each other); the resync after the crash overlaps I/O.
wait_for 400 sh -c "drbdctl --run-dir /run/drbdd-alpha --config-dir $CONF --node alpha status r0 2>&1 | grep -q 'peer-disk:UpToDate'" \
  || die "the initial sync to beta did not finish: $(ctl alpha status r0 2>&1 | tr '\n' ' ' | tr -s ' ')"

replicas_diff after-initial-sync || true

step mkfs-mount-write
fs_write $DEV

step fsck
fs_check $DEV

step remount-verify
fs_verify $DEV
fs_trim $DEV
replicas_diff after-trim || true

step demote-refused-while-mounted
# The device's own session on the pipeline does not count; a mount does.
mount $DEV /mnt || die "mount $DEV"
rc=0; ctl alpha secondary r0 > /tmp/secondary-mounted.log 2>&1 || rc=$?
umount /mnt || die "umount $DEV"
[ $rc = 11 ] || die "secondary while $DEV is mounted: exit $rc, want 11 ($(cat /tmp/secondary-mounted.log))"
grep -q "$DEV is in use" /tmp/secondary-mounted.log || die "the refusal does not name $DEV: $(cat /tmp/secondary-mounted.log)"
[ -b $DEV ] || die "$DEV vanished after the refused demotion"
info "refused: $(cat /tmp/secondary-mounted.log)"

step fio-verify
run_fio 300 /tmp/fio1.log --name=randrw --rw=randrw --size=64M --do_verify=1
info "fio randrw (protocol C over loopback): $(fio_iops /tmp/fio1.log)"
# The device's I/O shows in the statistics (DRBD's read:/written: in KiB).
stats=$(ctl alpha status r0 --statistics 2>&1)
written=$(echo "$stats" | sed -n 's/.* written:\([0-9]*\).*/\1/p' | head -1)
[ "${written:-0}" -gt 1024 ] || die "status --statistics does not count /dev/ublkb0 writes (written:${written:-none}, want > 1 MiB): $(echo "$stats" | tr '\n' ' ')"
info "statistics after fio: written:$written KiB"
replicas_diff after-fio-verify || true

step crash-recovery
fio $FIO_COMMON --name=crash --rw=randwrite --size=48M --do_verify=1 --output=/tmp/fio2.log > /dev/null 2>&1 &
FIO_PID=$!
sleep 2
kill -9 $PID_alpha; wait $PID_alpha 2>/dev/null
sleep 1
[ -b $DEV ] || die "$DEV vanished after kill -9 of the primary's daemon"
T_REC=$(now_cs)
start_daemon alpha /tmp/alpha.log
SERVER_PID=$PID_alpha
# The restarted daemon re-attaches to /dev/ublkb0 (ublk user recovery) once r0 is up again.
ctl alpha up r0 > /tmp/up-alpha-2.log 2>&1 || die "drbdctl up r0 after the restart"
ctl alpha primary r0 > /tmp/primary-2.log 2>&1 || die "drbdctl primary r0 after the restart"
grep -q "/dev/ublkb0 re-attached" /tmp/alpha.log || die "the restarted daemon did not re-attach to $DEV"
wait_fio $FIO_PID 300 /tmp/fio2.log
info "fio across kill -9 of drbdd: recovered in $(secs "$T_REC") s, $(fio_iops /tmp/fio2.log)"

step verify-after-recovery
run_fio 300 /tmp/fio3.log --name=crash --rw=randwrite --size=48M --verify_only=1
info "status: $(ctl alpha status r0 2>&1 | tr '\n' ' ' | tr -s ' ')"

step resync-done
# The initial full sync (and the resync of the activity log after the crash) must end
# before the disks are compared.
wait_for 240 sh -c "drbdctl --run-dir /run/drbdd-alpha --config-dir $CONF --node alpha status r0 2>&1 | grep -q 'peer-disk:UpToDate'" \
  || die "resync to beta did not finish: $(ctl alpha status r0 2>&1 | tr '\n' ' ' | tr -s ' ')"
info "status: $(ctl alpha status r0 2>&1 | tr '\n' ' ' | tr -s ' ')"
replicas_diff after-crash-resync || true

step failover
# A fresh file system on alpha (fio overwrote the first one), then the device moves:
# alpha Secondary (/dev/ublkb0 goes), beta Primary (/dev/ublkb1, beta's minor), and back.
fs_write $DEV
ctl alpha secondary r0 > /tmp/secondary-fo.log 2>&1 || die "drbdctl secondary r0 on alpha"
wait_for 30 sh -c "! test -e $DEV" || die "$DEV still exists after alpha's secondary"
ctl beta primary r0 > /tmp/primary-beta.log 2>&1 || die "drbdctl primary r0 on beta"
wait_for 30 test -b /dev/ublkb1 || die "no /dev/ublkb1 after beta's primary"
fs_verify /dev/ublkb1 /tmp/verify-beta.log
mount /dev/ublkb1 /mnt || die "mount /dev/ublkb1"
dd if=/dev/urandom of=/mnt/data/from-beta bs=64k count=16 2>/dev/null || die "writing from-beta"
(cd /mnt/data && sha256sum from-beta >> /tmp/sums) || die "checksum of from-beta"
umount /mnt || die "umount /dev/ublkb1"
ctl beta secondary r0 > /tmp/secondary-beta.log 2>&1 || die "drbdctl secondary r0 on beta"
wait_for 30 sh -c "! test -e /dev/ublkb1" || die "/dev/ublkb1 still exists after beta's secondary"
ctl alpha primary r0 > /tmp/primary-alpha-3.log 2>&1 || die "drbdctl primary r0 on alpha (fail back)"
wait_for 30 test -b $DEV || die "no $DEV after alpha's primary (fail back)"
fs_verify $DEV /tmp/verify-failback.log
info "failover alpha -> beta -> alpha: $(wc -l < /tmp/sums) files verified on both nodes"
replicas_diff after-failover || true

step sigterm-while-mounted
# SIGTERM with the file system mounted: drbdd leaves /dev/ublkb0 to the kernel (I/O waits,
# the mount stays) and the next daemon's up + primary re-attaches to it.
mount $DEV /mnt || die "mount $DEV"
kill -TERM $PID_alpha
wait_for 60 sh -c "! test -d /proc/$PID_alpha || grep -q ') Z ' /proc/$PID_alpha/stat" || die "drbdd alpha did not exit within 60 s of SIGTERM"
wait $PID_alpha 2>/dev/null
[ -b $DEV ] || die "$DEV vanished at SIGTERM while mounted"
grep -q "is in use: left to the kernel" /tmp/alpha.log || die "SIGTERM did not leave the mounted $DEV to the kernel"
start_daemon alpha /tmp/alpha.log
SERVER_PID=$PID_alpha
ctl alpha up r0 > /tmp/up-alpha-3.log 2>&1 || die "drbdctl up r0 after the SIGTERM restart"
ctl alpha primary r0 > /tmp/primary-alpha-4.log 2>&1 || die "drbdctl primary r0 after the SIGTERM restart"
[ "$(grep -c '/dev/ublkb0 re-attached' /tmp/alpha.log)" -ge 2 ] || die "the restarted daemon did not re-attach to the mounted $DEV"
(cd /mnt/data && sha256sum -c /tmp/sums > /tmp/verify-mounted.log 2>&1) || die "checksums differ on the still-mounted $DEV"
dd if=/dev/urandom of=/mnt/data/after-restart bs=64k count=16 2>/dev/null || die "writing after the restart"
(cd /mnt/data && sha256sum after-restart >> /tmp/sums) || die "checksum of after-restart"
umount /mnt || die "umount $DEV after the SIGTERM restart"
fs_check $DEV
fs_verify $DEV /tmp/verify-after-sigterm.log

step resync-after-sigterm
wait_for 240 sh -c "drbdctl --run-dir /run/drbdd-alpha --config-dir $CONF --node alpha status r0 2>&1 | grep -q 'peer-disk:UpToDate'" \
  || die "resync to beta after the SIGTERM restart did not finish: $(ctl alpha status r0 2>&1 | tr '\n' ' ' | tr -s ' ')"

replicas_diff after-sigterm-resync || true

step down
ctl alpha secondary r0 > /tmp/secondary.log 2>&1 || die "drbdctl secondary r0"
wait_for 30 sh -c "! test -e $DEV" || die "$DEV still exists after secondary"
for n in alpha beta; do ctl $n down r0 > /tmp/down-$n.log 2>&1 || die "drbdctl down r0 on $n"; done

step replicas-identical
# fio wrote the first 64 MiB last; protocol C means beta's disk holds the same bytes.
replicas_diff final || die "alpha's and beta's disks differ after down (see the replicas lines above)"
true
