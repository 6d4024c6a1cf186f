# Guest scenario "ublk" (sourced by /init): ublk-serve on /dev/vda exported as /dev/ublkb0.
. /guest/checks.sh
DEV=/dev/ublkb0
FIO_COMMON="--filename=$DEV --ioengine=io_uring --direct=1 --bs=4k --iodepth=32 --verify=crc32c"
SERVE="/bin/ublk-serve --minor 0 --file /dev/vda --queues 2 --depth 128 --workers 16"

start_server() { # start_server LOG [ARGS...]: starts ublk-serve, waits until it reports "live"
  log=$1; shift
  $SERVE "$@" > "$log" 2>&1 &
  SERVER_PID=$!
  wait_for 60 grep -q "ublk-serve: .* live" "$log" || die "ublk-serve did not come up ($log)"
  [ -b $DEV ] || wait_for 10 test -b $DEV || die "no $DEV"
}

step start-server
start_server /tmp/serve1.log
info "$(grep -o 'ublk-serve: .*live.*' /tmp/serve1.log)"
show_queue_params $DEV

step mkfs-mount-write
fs_write $DEV

step fsck
fs_check $DEV

step remount-verify
fs_verify $DEV
fs_trim $DEV
info "$(wc -l < /tmp/sums) files verified after remount"

step graceful-restart
kill -TERM $SERVER_PID; wait $SERVER_PID
grep -q "stopped" /tmp/serve1.log || die "server did not report a clean stop"
[ -b $DEV ] && die "$DEV still exists after SIGTERM (a graceful stop deletes it)"
# Writes wait 2 ms in the target from now on, so requests are in flight when the server dies.
start_server /tmp/serve2.log --write-delay-ms 2
fs_verify $DEV /tmp/verify2.log

step fio-verify
run_fio 240 /tmp/fio1.log --name=randrw --rw=randrw --size=64M --do_verify=1
info "fio randrw: $(fio_iops /tmp/fio1.log)"

step crash-recovery
fio $FIO_COMMON --name=crash --rw=randwrite --size=48M --do_verify=1 --output=/tmp/fio2.log > /dev/null 2>&1 &
FIO_PID=$!
sleep 2
inflight_before=$(tr -s ' ' < /sys/block/ublkb0/inflight)
kill -9 $SERVER_PID; wait $SERVER_PID 2>/dev/null
sleep 1
[ -b $DEV ] || die "$DEV vanished after kill -9 (user recovery needs it to stay)"
kill -0 $FIO_PID 2>/dev/null || die "fio ended while the server was down (I/O should wait, not fail)"
info "server killed with I/O in flight (inflight r/w before:$inflight_before, during outage:$(tr -s ' ' < /sys/block/ublkb0/inflight))"
T_REC=$(now_cs)
start_server /tmp/serve3.log --recover --write-delay-ms 2
grep -q "recovered: true" /tmp/serve3.log || die "restart did not recover the existing device"
info "re-attached in $(secs "$T_REC") s: $(grep -o 'ublk-serve: .*live.*' /tmp/serve3.log)"
wait_fio $FIO_PID 240 /tmp/fio2.log
info "fio randwrite+verify across kill -9: $(fio_iops /tmp/fio2.log)"

step verify-after-recovery
run_fio 240 /tmp/fio3.log --name=crash --rw=randwrite --size=48M --verify_only=1

step kernel-tests
# ublk-frontend/tests/kernel.rs: MemTarget round trip through /dev/ublkb201, orphan cleanup.
/bin/ublk-kernel-tests --test-threads=1 > /tmp/kernel-tests.log 2>&1 || die "ublk-frontend kernel tests failed"
grep -q "SKIP" /tmp/kernel-tests.log && die "kernel tests skipped inside the VM: $(grep SKIP /tmp/kernel-tests.log)"
info "ublk-frontend kernel tests: $(grep 'test result' /tmp/kernel-tests.log)"

step graceful-stop-recovered
kill -TERM $SERVER_PID; wait $SERVER_PID
grep -q "stopped" /tmp/serve3.log || die "server did not report a clean stop"
[ -e $DEV ] && die "$DEV still exists after stop"
[ -e /sys/class/ublk-char/ublkc0 ] && die "ublkc0 still exists after stop"

step orphan-cleanup-after-crash
start_server /tmp/serve4.log
kill -9 $SERVER_PID; wait $SERVER_PID 2>/dev/null; sleep 1
[ -b $DEV ] || die "$DEV vanished after kill -9"
/bin/ublk-serve --delete-orphans > /tmp/orphans.log 2>&1 || die "ublk-serve --delete-orphans failed"
wait_for 10 sh -c "! test -e /sys/class/ublk-char/ublkc0" || die "orphaned ublkc0 still exists"
info "$(grep deleted /tmp/orphans.log)"
true
