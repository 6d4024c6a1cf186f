#!/usr/bin/env bash
# VM test of the real /dev/ublkb<N>: boots Debian 12's newest 6.12 cloud kernel (it ships
# ublk_drv.ko) under QEMU/TCG with a busybox initramfs, runs a guest scenario there and
# reports through the serial console.
#
# Usage: tests/vm/run.sh [--ublk | --drbdd] [--workdir DIR] [--timeout SECS] [--release] [--keep]
#   --ublk   (default) ublk-frontend/examples/ublk-serve on /dev/vda: mkfs/mount/fsck/checksums,
#            fio verify, kill -9 with I/O in flight + user recovery, graceful stop.
#   --drbdd  drbdd + drbdctl: two daemons on loopback (256 MiB disks /dev/vda, /dev/vdb), resource
#            r0 with frontend = ["ublk"]; same filesystem + fio checks on the primary's /dev/ublkb0,
#            demote refused while mounted, kill -9 + recovery, failover alpha -> beta -> alpha.
#   --timeout default: 600 s (ublk), 1200 s (drbdd).
#
# Output: the guest's summary lines, then "VM-TEST: PASS|FAIL|SKIP <reason>" as the last line.
# Exit codes: 0 = PASS, 1 = FAIL, 77 = SKIP (qemu, the 6.12 kernel package or a build
# prerequisite is unavailable; set VM_TEST_SKIP_OK=1 to turn a skip into exit 0).
# Runs on a fresh Debian 12 machine as root (installs what it needs with apt-get).
set -euo pipefail

SCENARIO=ublk
W=${TMPDIR:-/tmp}/drbdd-vm
TIMEOUT_S=
PROFILE=debug
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --ublk) SCENARIO=ublk ;;
    --drbdd) SCENARIO=drbdd ;;
    --workdir) W=$2; shift ;;
    --timeout) TIMEOUT_S=$2; shift ;;
    --release) PROFILE=release ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# drbdd replicates and resyncs under TCG: more time, smaller disks (the initial full sync).
if [ -z "$TIMEOUT_S" ]; then
  if [ "$SCENARIO" = drbdd ]; then TIMEOUT_S=1200; else TIMEOUT_S=600; fi
fi
DISK_SIZE=512M
[ "$SCENARIO" = drbdd ] && DISK_SIZE=256M

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
T_START=$(date +%s)
# shellcheck source=tests/vm/lib.sh
. "$HERE/lib.sh"

skip() {
  echo "VM-TEST: SKIP $*"
  [ "${VM_TEST_SKIP_OK:-0}" = 1 ] && exit 0
  exit 77
}
fail() { echo "VM-TEST: FAIL $*"; exit 1; }
elapsed() { echo $(( $(date +%s) - T_START )); }

# 1. Packages. apt-get install qemu-system-x86 alone would remove a newer qemu-utils, so they
#    go together. Missing packages are installed only when we can (root + apt-get).
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86 qemu-utils)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static || need_pkgs+=(busybox-static)
command -v fio >/dev/null || need_pkgs+=(fio)
command -v mke2fs >/dev/null || need_pkgs+=(e2fsprogs)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v file >/dev/null || need_pkgs+=(file)
[ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need_pkgs+=(libclang-dev)
vm_install_packages "${need_pkgs[@]}"
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 not available (apt-get install qemu-system-x86 qemu-utils)"
file -L /bin/busybox 2>/dev/null | grep -q static || skip "static busybox not available (apt-get install busybox-static)"
for t in fio mke2fs e2fsck xz cpio cargo; do command -v $t >/dev/null || skip "$t not available"; done

mkdir -p "$W"
cd "$W"

# 2. Kernel: the newest Debian 12 6.12 cloud kernel (unsigned: same image, no shim needed).
vm_fetch_kernel || skip "$VM_SKIP_REASON"
pkg=$VM_KERNEL_PKG
echo "vm-test: kernel package $pkg ($(basename "$VMLINUZ"))"

# 3. Static binaries, in their own target dir so the shared one is not rebuilt.
T_BUILD=$(date +%s)
PROFILE_ARGS=(); [ "$PROFILE" = release ] && PROFILE_ARGS+=(--release)
BIN_DIR="$REPO/target/vm/x86_64-unknown-linux-gnu/$PROFILE"
case "$SCENARIO" in
  ublk) BUILD=(-p drbdd-ublk --example ublk-serve); BINS=("$BIN_DIR/examples/ublk-serve") ;;
  drbdd) BUILD=(-p drbdd --bin drbdd -p drbdctl --bin drbdctl); BINS=("$BIN_DIR/drbdd" "$BIN_DIR/drbdctl") ;;
esac
if ! vm_build_static "$REPO" "$PROFILE" "${BUILD[@]}" > build.log 2>&1; then
  tail -30 build.log
  fail "static build failed (see $W/build.log)"
fi
if [ "$SCENARIO" = ublk ]; then
  # The crate's kernel tests (skipped on hosts without ublk) run inside the VM too.
  kt=$(cd "$REPO" && RUSTFLAGS='-C target-feature=+crt-static' cargo test -q --target x86_64-unknown-linux-gnu --target-dir "$REPO/target/vm" "${PROFILE_ARGS[@]}" -p drbdd-ublk \
        --test kernel --no-run --message-format=json 2>>"$W/build.log" | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -1)
  [ -n "$kt" ] || fail "building the ublk kernel tests failed (see $W/build.log)"
  cp "$kt" "$BIN_DIR/ublk-kernel-tests"
  BINS+=("$BIN_DIR/ublk-kernel-tests")
fi
for b in "${BINS[@]}"; do
  file -L "$b" | grep -Eq 'statically linked|static-pie linked' || fail "$b is not statically linked"
done
echo "vm-test: built ${BINS[*]##*/} ($PROFILE, static) in $(( $(date +%s) - T_BUILD )) s"

# 4. Initramfs: busybox, the two modules, our binaries, e2fsprogs and fio with their libraries.
rm -rf root && mkdir -p root/{bin,sbin,lib,lib64,proc,sys,dev,tmp,mnt,etc,run}
cp /bin/busybox root/bin/
for m in ublk_drv virtio_blk; do
  xz -dc "$MODDIR/kernel/drivers/block/$m.ko.xz" > "root/lib/$m.ko"
done
for b in "${BINS[@]}"; do cp "$b" root/bin/; done
vm_copy_with_libs root "$(command -v fio)" "$(command -v mke2fs)" "$(command -v e2fsck)"
ln -sf mke2fs root/bin/mkfs.ext4
mkdir -p root/guest && cp "$HERE"/guest/* root/guest/
cp "$HERE/guest/init.sh" root/init
cp "$HERE/guest/$SCENARIO.sh" root/scenario.sh
chmod +x root/init root/scenario.sh
(cd root && find . | cpio -o -H newc --quiet | gzip -1) > initramfs.gz

# 5. Disks and boot.
DISKS=()
ndisks=1; [ "$SCENARIO" = drbdd ] && ndisks=2
for i in $(seq 1 $ndisks); do
  rm -f "disk$i.img"; truncate -s "$DISK_SIZE" "disk$i.img"
  DISKS+=(-drive "file=disk$i.img,if=virtio,format=raw,cache=none,aio=io_uring")
done
T_BOOT=$(date +%s)
set +e
timeout "$TIMEOUT_S" qemu-system-x86_64 -accel tcg -m 2048 -smp 2 -nographic -no-reboot \
  -kernel "$VMLINUZ" -initrd initramfs.gz -append "console=ttyS0 quiet panic=-1" \
  "${DISKS[@]}" > console.log 2>&1
qemu_rc=$?
set -e
echo "vm-test: VM wall time $(( $(date +%s) - T_BOOT )) s (qemu exit $qemu_rc), initramfs $(du -h initramfs.gz | cut -f1), total $(elapsed) s"
[ $qemu_rc = 124 ] && echo "vm-test: VM killed after the ${TIMEOUT_S} s time limit"
grep -E '^(VM|VM-STEP|VM-INFO):' console.log | tr -d '\r' || true
result=$(grep -a -E '^VM-TEST: (PASS|FAIL)' console.log | tr -d '\r' | tail -1 || true)
# TCG occasionally trips over kernel text patching (an int3 oops in the guest); say so.
if [ -z "$result" ] && grep -a -q 'Kernel panic' console.log; then
  grep -a -m1 -B2 -A3 'Oops' console.log | tr -d '\r' || true
  result="VM-TEST: FAIL guest kernel panic (see $W/console.log; under TCG this can be an emulation flake: rerun)"
  echo "$result" >> console.log
fi
if [ "$KEEP" = 0 ]; then rm -f disk*.img; fi
case "$result" in
  "VM-TEST: PASS"*) echo "VM-TEST: PASS ($SCENARIO, $pkg)"; exit 0 ;;
  "VM-TEST: FAIL"*) echo "--- last console lines ($W/console.log):"; tail -40 console.log | tr -d '\r'; echo "$result"; exit 1 ;;
  *) echo "--- last console lines ($W/console.log):"; tail -40 console.log | tr -d '\r'; fail "no result from the guest" ;;
esac
