# Guest scenario "ublk" (sourced by /init): ublk-serve on /dev/vda exported as /dev/ublkb0.
SERVE="/bin/ublk-serve --minor 0 --file /dev/vda --queues 2 --depth 128 --workers 16"

start_server() { # start_server LOG [ARGS...]: starts ublk-serve, waits until it reports "live"
  log=$1; shift
  $SERVE "$@" > "$log" 2>&1 &
  SERVER_PID=$!
  wait_for 60 grep -q "ublk-serve: .* live" "$log" || die "ublk-serve did not come up ($log)"
  [ -b /dev/ublkb0 ] || wait_for 10 test -b /dev/ublkb0 || die "no /dev/ublkb0"
}

# run_fio SECS LOG FIO-ARGS...: fio on /dev/ublkb0 with a deadline; a hang dies with diagnostics.
FIO_COMMON="--filename=/dev/ublkb0 --ioengine=io_uring --direct=1 --bs=4k --iodepth=32 --verify=crc32c"
run_fio() {
  secs=$1; log=$2; shift 2
  fio $FIO_COMMON --output="$log" "$@" > /dev/null 2>&1 &
  fpid=$!
  if ! wait_for "$secs" sh -c "! kill -0 $fpid 2>/dev/null"; then
    info "fio hung for $secs s; inflight $(cat /sys/block/ublkb0/inflight); server threads:"
    for t in /proc/$SERVER_PID/task/*; do echo "  $(cat $t/comm) $(cut -d' ' -f3 $t/stat) $(cat $t/wchan 2>/dev/null)"; done
    die "fio hung"
  fi
  wait $fpid || die "fio failed ($log)"
  grep -q "err= 0" "$log" || die "fio reported errors ($log)"
}

step start-server
start_server /tmp/serve1.log
info "$(grep -o 'ublk-serve: .*live.*' /tmp/serve1.log)"
q=/sys/block/ublkb0/queue
info "size $(cat /sys/block/ublkb0/size) sectors, logical $(cat $q/logical_block_size), physical $(cat $q/physical_block_size), cache '$(cat $q/write_cache)', fua $(cat $q/fua 2>/dev/null), discard_granularity $(cat $q/discard_granularity), max_sectors_kb $(cat $q/max_sectors_kb), hw queues $(ls /sys/block/ublkb0/mq | wc -l)"
[ "$(cat $q/logical_block_size)" = 512 ] || die "logical block size is not 512"
[ "$(cat $q/physical_block_size)" = 4096 ] || die "physical block size is not 4096"
[ "$(cat $q/write_cache)" = "write back" ] || die "no volatile write cache: flushes would not be issued"

step mkfs-mount-write
mkfs.ext4 -q -F /dev/ublkb0 > /tmp/mkfs.log 2>&1 || die "mkfs.ext4"
mount /dev/ublkb0 /mnt || die "mount"
mkdir -p /mnt/data
for i in 1 2 3 4 5 6 7 8; do
  dd if=/dev/urandom of=/mnt/data/f$i bs=64k count=$((i * 8)) 2>/dev/null || die "writing f$i"
done
dd if=/dev/urandom of=/mnt/data/big bs=1M count=32 2>/dev/null || die "writing big"
(cd /mnt/data && sha256sum f* big > /tmp/sums) || die "checksums"
sync
umount /mnt || die "umount"

step fsck
e2fsck -fn /dev/ublkb0 > /tmp/fsck.log 2>&1 || die "e2fsck -fn reports problems"

step remount-verify
mount /dev/ublkb0 /mnt || die "remount"
(cd /mnt/data && sha256sum -c /tmp/sums > /tmp/verify.log 2>&1) || die "checksums differ after remount"
rm -f /mnt/data/big; grep -v ' big$' /tmp/sums > /tmp/sums.tmp; mv /tmp/sums.tmp /tmp/sums
if fstrim -v /mnt > /tmp/fstrim.log 2>&1; then info "discard: $(cat /tmp/fstrim.log)"; else info "fstrim unavailable or refused: $(cat /tmp/fstrim.log)"; fi
umount /mnt || die "umount after verify"
info "9 files verified after remount"

step graceful-restart
kill -TERM $SERVER_PID; wait $SERVER_PID
grep -q "stopped" /tmp/serve1.log || die "server did not report a clean stop"
[ -b /dev/ublkb0 ] && die "/dev/ublkb0 still exists after SIGTERM (a graceful stop deletes it)"
# Writes wait 2 ms in the target from now on, so requests are in flight when the server dies.
start_server /tmp/serve2.log --write-delay-ms 2
(cd / && mount /dev/ublkb0 /mnt && cd /mnt/data && sha256sum -c /tmp/sums > /tmp/verify2.log 2>&1) \
  || die "checksums differ after stop + new device on the same backing disk"
umount /mnt

step fio-verify
run_fio 240 /tmp/fio1.log --name=randrw --rw=randrw --size=64M --do_verify=1
info "fio randrw: $(grep -E '^ *(read|write):' /tmp/fio1.log | sed 's/^ *//; s/,.*//' | tr '\n' ' ')"

step crash-recovery
fio $FIO_COMMON --name=crash --rw=randwrite --size=48M --do_verify=1 --output=/tmp/fio2.log > /dev/null 2>&1 &
FIO_PID=$!
sleep 2
inflight_before=$(cat /sys/block/ublkb0/inflight | tr -s ' ')
kill -9 $SERVER_PID; wait $SERVER_PID 2>/dev/null
sleep 1
[ -b /dev/ublkb0 ] || die "/dev/ublkb0 vanished after kill -9 (user recovery needs it to stay)"
kill -0 $FIO_PID 2>/dev/null || die "fio ended while the server was down (I/O should wait, not fail)"
info "server killed with I/O in flight (inflight r/w before:$inflight_before, during outage:$(cat /sys/block/ublkb0/inflight | tr -s ' '))"
T_REC=$(now_cs)
start_server /tmp/serve3.log --recover --write-delay-ms 2
grep -q "recovered: true" /tmp/serve3.log || die "restart did not recover the existing device"
info "re-attached in $(secs "$T_REC") s: $(grep -o 'ublk-serve: .*live.*' /tmp/serve3.log)"
wait_for 240 sh -c "! kill -0 $FIO_PID 2>/dev/null" || die "fio hung after recovery (inflight $(cat /sys/block/ublkb0/inflight))"
wait $FIO_PID || die "fio failed across the crash"
grep -q "err= 0" /tmp/fio2.log || die "fio reported errors after recovery"
info "fio randwrite+verify across kill -9: $(grep -E '^ *write:' /tmp/fio2.log | sed 's/^ *//; s/,.*//')"

step verify-after-recovery
run_fio 240 /tmp/fio3.log --name=crash --rw=randwrite --size=48M --verify_only=1

step graceful-stop-recovered
kill -TERM $SERVER_PID; wait $SERVER_PID
grep -q "stopped" /tmp/serve3.log || die "server did not report a clean stop"
[ -e /dev/ublkb0 ] && die "/dev/ublkb0 still exists after stop"
[ -e /sys/class/ublk-char/ublkc0 ] && die "ublkc0 still exists after stop"
true
