# Shared guest checks (sourced by the scenarios after init.sh's helpers exist).
# Needs: SERVER_PID (for diagnostics); DEV (block device under test).

# show_queue_params DEV: prints and checks the exported block device's limits.
show_queue_params() {
  b=$(basename "$1"); q=/sys/block/$b/queue
  info "$b: size $(cat /sys/block/$b/size) sectors, logical $(cat $q/logical_block_size), physical $(cat $q/physical_block_size), cache '$(cat $q/write_cache)', fua $(cat $q/fua 2>/dev/null), discard_granularity $(cat $q/discard_granularity), max_sectors_kb $(cat $q/max_sectors_kb), hw queues $(ls /sys/block/$b/mq | wc -l)"
  [ "$(cat $q/logical_block_size)" = 512 ] || die "logical block size is not 512"
  [ "$(cat $q/physical_block_size)" = 4096 ] || die "physical block size is not 4096"
  [ "$(cat $q/write_cache)" = "write back" ] || die "no volatile write cache: flushes would not be issued"
}

# fs_write DEV: mkfs.ext4, mount, write files, record checksums in /tmp/sums, umount.
fs_write() {
  mkfs.ext4 -q -F "$1" > /tmp/mkfs.log 2>&1 || die "mkfs.ext4 $1"
  mount "$1" /mnt || die "mount $1"
  mkdir -p /mnt/data
  for i in 1 2 3 4 5 6 7 8; do
    dd if=/dev/urandom of=/mnt/data/f$i bs=64k count=$((i * 8)) 2>/dev/null || die "writing f$i"
  done
  dd if=/dev/urandom of=/mnt/data/big bs=1M count=32 2>/dev/null || die "writing big"
  (cd /mnt/data && sha256sum f* big > /tmp/sums) || die "checksums"
  sync
  umount /mnt || die "umount $1"
}

# fs_check DEV: e2fsck -fn must be clean.
fs_check() {
  e2fsck -fn "$1" > /tmp/fsck.log 2>&1 || die "e2fsck -fn $1 reports problems"
}

# fs_verify DEV [LOG]: mount, compare checksums, umount.
fs_verify() {
  log=${2:-/tmp/verify.log}
  mount "$1" /mnt || die "mount $1 for verify"
  (cd /mnt/data && sha256sum -c /tmp/sums > "$log" 2>&1) || { umount /mnt; die "checksums differ on $1"; }
  umount /mnt || die "umount $1 after verify"
}

# fs_trim DEV: deletes the big file (dropping it from /tmp/sums) and fstrims (discard path).
fs_trim() {
  mount "$1" /mnt || die "mount $1 for trim"
  rm -f /mnt/data/big; grep -v ' big$' /tmp/sums > /tmp/sums.tmp; mv /tmp/sums.tmp /tmp/sums
  if fstrim -v /mnt > /tmp/fstrim.log 2>&1; then info "discard: $(cat /tmp/fstrim.log)"; else info "fstrim unavailable or refused: $(cat /tmp/fstrim.log)"; fi
  umount /mnt || die "umount $1 after trim"
}

# run_fio SECS LOG FIO-ARGS...: fio on $DEV with a deadline; a hang dies with diagnostics.
run_fio() {
  secs=$1; log=$2; shift 2
  fio $FIO_COMMON --output="$log" "$@" > /dev/null 2>&1 &
  fpid=$!
  if ! wait_for "$secs" sh -c "! kill -0 $fpid 2>/dev/null"; then
    info "fio hung for $secs s; inflight $(cat /sys/block/$(basename "$DEV")/inflight); server threads:"
    for t in /proc/$SERVER_PID/task/*; do echo "  $(cat $t/comm) $(cut -d' ' -f3 $t/stat) $(cat $t/wchan 2>/dev/null)"; done
    die "fio hung"
  fi
  wait $fpid || die "fio failed ($log)"
  grep -q "err= 0" "$log" || die "fio reported errors ($log)"
}

# wait_fio PID SECS LOG: waits for a background fio with a deadline.
wait_fio() {
  wait_for "$2" sh -c "! kill -0 $1 2>/dev/null" || die "fio hung (inflight $(cat /sys/block/$(basename "$DEV")/inflight))"
  wait "$1" || die "fio failed ($3)"
  grep -q "err= 0" "$3" || die "fio reported errors ($3)"
}

fio_iops() { grep -E '^ *(read|write):' "$1" | sed 's/^ *//; s/,.*//' | tr '\n' ' '; }
