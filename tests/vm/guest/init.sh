#!/bin/busybox sh
# Guest /init for tests/vm/run.sh: mounts the basics, loads virtio_blk and ublk_drv, runs
# /scenario.sh and prints "VM-TEST: PASS|FAIL <reason>" on the serial console, then powers off.
# Scenario helpers: step NAME (timed phase), info TEXT, die REASON.
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp; mount -t tmpfs run /run
ip link set lo up 2>/dev/null
export PATH=/bin:/sbin

now_cs() { cut -d' ' -f1 /proc/uptime | tr -d '.'; }   # uptime in centiseconds
T_INIT=$(now_cs)
STEP=""; T_STEP=$T_INIT
secs() { c=$(( $(now_cs) - $1 )); printf '%d.%02d' $((c / 100)) $((c % 100)); }
end_step() { [ -n "$STEP" ] && echo "VM-STEP: $STEP ok ($(secs "$T_STEP") s)"; STEP=""; }
step() { end_step; STEP=$1; T_STEP=$(now_cs); }
info() { echo "VM-INFO: $*"; }
die() {
  echo "VM-STEP: $STEP FAILED ($(secs "$T_STEP") s)"
  for f in /tmp/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -25 "$f"; }; done
  echo "VM-TEST: FAIL $*"
  sync; poweroff -f; sleep 5; exit 1
}
# wait_for SECS CMD...: polls CMD every 0.1 s.
wait_for() {
  n=$(( $1 * 10 )); shift
  while [ $n -gt 0 ]; do "$@" && return 0; sleep 0.1; n=$((n - 1)); done
  return 1
}

step boot
insmod /lib/virtio_blk.ko || die "insmod virtio_blk"
insmod /lib/ublk_drv.ko || die "insmod ublk_drv"
[ -c /dev/ublk-control ] || die "no /dev/ublk-control"
[ -b /dev/vda ] || die "no /dev/vda"
info "kernel $(uname -r), $(nproc) cpus, boot to init $(secs 0) s"
. /scenario.sh
end_step
echo "VM-TEST: PASS"
sync; poweroff -f
