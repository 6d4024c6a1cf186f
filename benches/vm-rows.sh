#!/usr/bin/env bash
# VM rows of the benchmark (row 5 of benches/README.md): one QEMU boot of Debian 12's 6.12
# cloud kernel runs the runner's fio workloads against, in this order within each run:
#   vm-raw        the raw virtio disk /dev/vdb (the VM baseline)
#   vm-loop-dio   the kernel loop device with direct I/O over /dev/vdb
#   vm-ublk-loop  libublk 0.4.8's own `loop` example serving /dev/vdb as /dev/ublkb0
#   vm-drbdd      drbdd standalone (no peer), /dev/ublkb0 over /dev/vdb
#   vm-drbdd-a/b/c  drbdd alpha (/dev/vdb) + beta (/dev/vdc) on loopback, protocol A/B/C
#   vm-drbdd-c-crc  (only when named in VM_BENCH_TARGETS) protocol C with
#                   data-integrity-alg = "crc32c": the cost of checksumming replicated data
#   vm-drbdd-c-reaper (only when named) protocol C with DRBDD_PEER_IO_ENGINE=reaper: peer
#                   disk I/O completions reaped by a thread instead of the resource actor
#   vm-drbdd-c-noflush (only when named) protocol C with disk-flushes = false: what the
#                   secondary's flush per epoch costs
#   vm-drbdd-c-alt (only when named) protocol C with another build's static drbdd and
#                   drbdctl from VM_BENCH_ALT_DIR (A/B of two commits in one boot; boots
#                   differ more than most changes do)
#   vm-drbd84-a/b/c in-kernel DRBD 8.4 minors 0 (/dev/vdb) and 1 (/dev/vdc) on loopback
#                   (drbd-utils' drbdsetup-84, initial sync skipped with
#                   new-current-uuid --clear-bitmap, as ../shared/vm-anchor does)
# and prints one JSON line per row (contract: benches/src/vm.rs) with "baseline":"vm-raw".
#
# Run by `drbdd-bench` (section vm) with DRBDD_BENCH_* set, or by hand:
#   benches/vm-rows.sh            (defaults: 3 runs, 10 s jobs, 2 s ramp)
# Env: DRBDD_BENCH_EXE (drbdd-bench binary; default target/release/drbdd-bench, built if
#      missing), DRBDD_BENCH_SMOKE, DRBDD_BENCH_RUNS, DRBDD_BENCH_RUNTIME_S, DRBDD_BENCH_RAMP_S,
#      DRBDD_BENCH_WORK_DIR; VM_BENCH_SIZE_MIB (fio size per disk, default 256: the VM has
#      its own disks, the host rows' size does not apply), VM_BENCH_TARGETS (space separated
#      subset of the targets above without the vm- prefix), VM_BENCH_ACCEL (tcg; kvm where
#      it works), VM_BENCH_KEEP=1 keeps the work dir (default $WORK_DIR/drbdd-vm-bench),
#      VM_BENCH_PERF="TARGET:WORKLOAD ..." profiles those jobs with perf in the guest
#      (flat cpu-clock profile of the whole guest, copied to VM_BENCH_PERF_DIR, default
#      /tmp/drbdd-vm-perf, as perf-TARGET-WORKLOAD.txt).
# Every row is skipped with the reason (never silently missing) when qemu, the kernel
# package, drbd-utils or a build is unavailable. Exit 0 whenever it printed rows.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SMOKE=${DRBDD_BENCH_SMOKE:-0}
RUNS=${DRBDD_BENCH_RUNS:-3}
RUNTIME_S=${DRBDD_BENCH_RUNTIME_S:-10}
RAMP_S=${DRBDD_BENCH_RAMP_S:-2}
SIZE_MIB=${VM_BENCH_SIZE_MIB:-256}
[ "$SMOKE" = 1 ] && SIZE_MIB=${VM_BENCH_SIZE_MIB:-64}
ACCEL=${VM_BENCH_ACCEL:-tcg}
W=${DRBDD_BENCH_WORK_DIR:-${TMPDIR:-/tmp}}/drbdd-vm-bench
EXE=${DRBDD_BENCH_EXE:-$REPO/target/release/drbdd-bench}
ALL_TARGETS="raw loop-dio ublk-loop drbdd drbdd-a drbdd-b drbdd-c drbd84-a drbd84-b drbd84-c"
EXTRA_TARGETS="drbdd-c-crc drbdd-c-reaper drbdd-c-noflush drbdd-c-1q drbdd-c-pinned drbdd-c-alt ublk-loop-async ublk-loop-q2"
TARGETS=${VM_BENCH_TARGETS:-$ALL_TARGETS}
WORKLOADS=${VM_BENCH_WORKLOADS:-"randread-4k-qd1 randwrite-4k-qd1 randread-4k-qd32 randwrite-4k-qd32 write-1m-qd8 read-1m-qd8"}

row_name() {
  case "$1" in
    raw) echo "5 VM raw virtio disk (VM baseline)" ;;
    loop-dio) echo "5 VM kernel loop, direct I/O" ;;
    ublk-loop) echo "5 VM libublk loop example, /dev/ublkb0" ;;
    drbdd) echo "5 VM drbdd standalone, /dev/ublkb0" ;;
    drbdd-a) echo "5 VM drbdd protocol A, peer on loopback, /dev/ublkb0" ;;
    drbdd-b) echo "5 VM drbdd protocol B, peer on loopback, /dev/ublkb0" ;;
    drbdd-c) echo "5 VM drbdd protocol C, peer on loopback, /dev/ublkb0" ;;
    drbdd-c-crc) echo "5 VM drbdd protocol C + data-integrity-alg crc32c, /dev/ublkb0" ;;
    drbdd-c-reaper) echo "5 VM drbdd protocol C, peer disk I/O reaped by a thread, /dev/ublkb0" ;;
    drbdd-c-noflush) echo "5 VM drbdd protocol C, disk-flushes = false, /dev/ublkb0" ;;
    drbdd-c-1q) echo "5 VM drbdd protocol C, one ublk queue, /dev/ublkb0" ;;
    drbdd-c-pinned) echo "5 VM drbdd protocol C, ublk queue threads pinned per CPU, /dev/ublkb0" ;;
    drbdd-c-alt) echo "5 VM drbdd protocol C, other build ($(json_str "${VM_BENCH_ALT_LABEL:-VM_BENCH_ALT_DIR}")), /dev/ublkb0" ;;
    ublk-loop-async) echo "5 VM libublk loop example --async, /dev/ublkb0" ;;
    ublk-loop-q2) echo "5 VM libublk loop example, 2 queues, /dev/ublkb0" ;;
    drbd84-a) echo "5 VM in-kernel DRBD 8.4 protocol A, loopback" ;;
    drbd84-b) echo "5 VM in-kernel DRBD 8.4 protocol B, loopback" ;;
    drbd84-c) echo "5 VM in-kernel DRBD 8.4 protocol C, loopback" ;;
  esac
}
json_str() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr '\n\t' '  '; }
skip_all() { # every selected row skipped with one reason; exit 0 (the runner shows it)
  echo "vm-rows: SKIP: $*" >&2
  for t in $TARGETS; do
    printf '{"id":"vm-%s","name":"%s","baseline":"vm-raw","skipped":"%s"}\n' "$t" "$(row_name "$t")" "$(json_str "$*")"
  done
  exit 0
}
for t in $TARGETS; do
  case " $ALL_TARGETS $EXTRA_TARGETS " in *" $t "*) ;; *) echo "vm-rows: unknown target '$t' (known: $ALL_TARGETS $EXTRA_TARGETS)" >&2; exit 2 ;; esac
done

# shellcheck source=tests/vm/lib.sh
. "$REPO/tests/vm/lib.sh"

# 1. Host packages (qemu-system-x86 with qemu-utils: see scripts/install-deps.sh).
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86 qemu-utils)
file -L /bin/busybox 2>/dev/null | grep -q static || need+=(busybox-static)
command -v fio >/dev/null || need+=(fio)
command -v drbdmeta >/dev/null || need+=(drbd-utils)
for p in xz:xz-utils cpio:cpio file:file losetup:util-linux; do command -v "${p%%:*}" >/dev/null || need+=("${p#*:}"); done
vm_install_packages "${need[@]}"
command -v qemu-system-x86_64 >/dev/null || skip_all "qemu-system-x86_64 not available (apt-get install qemu-system-x86 qemu-utils)"
file -L /bin/busybox 2>/dev/null | grep -q static || skip_all "static busybox not available (apt-get install busybox-static)"
for t in fio xz cpio losetup drbdmeta cargo; do command -v $t >/dev/null || skip_all "$t not available"; done
DRBDSETUP84=$(ls /usr/lib/drbd/drbdsetup-84 /lib/drbd/drbdsetup-84 2>/dev/null | head -1 || true)
[ -x "$DRBDSETUP84" ] || skip_all "drbdsetup-84 not found (apt-get install drbd-utils)"

mkdir -p "$W"; cd "$W"
vm_fetch_kernel || skip_all "$VM_SKIP_REASON"
echo "vm-rows: kernel $VM_KERNEL_PKG, accel $ACCEL, $RUNS run(s), ${RUNTIME_S}s+${RAMP_S}s ramp per job, ${SIZE_MIB} MiB, targets: $TARGETS" >&2

# 2. Binaries: drbdd + drbdctl static release builds; libublk's loop example from the
#    libublk crate drbdd-ublk depends on (same version), built static.
[ -x "$EXE" ] || (cd "$REPO" && cargo build -q --release -p drbdd-benches) >&2 || skip_all "cannot build drbdd-bench"
vm_build_static "$REPO" release -p drbdd --bin drbdd -p drbdctl --bin drbdctl > build.log 2>&1 \
  || skip_all "static build of drbdd/drbdctl failed (see $W/build.log)"
DRBDD_BINS=("$VM_BIN_DIR/drbdd" "$VM_BIN_DIR/drbdctl")
LIBUBLK_V=$(cd "$REPO" && cargo tree -p drbdd-ublk --depth 1 -e normal 2>/dev/null | sed -n 's/.* libublk v\([0-9.]*\).*/\1/p' | head -1)
LIBUBLK_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/libublk-"$LIBUBLK_V" 2>/dev/null | head -1 || true)
[ -n "$LIBUBLK_V" ] && [ -d "$LIBUBLK_SRC" ] || skip_all "libublk $LIBUBLK_V source not in the cargo registry (run cargo fetch)"
rm -rf libublk && cp -r "$LIBUBLK_SRC" libublk
(cd libublk && RUSTFLAGS='-C target-feature=+crt-static' cargo build -q --release --example loop \
   --target x86_64-unknown-linux-gnu --target-dir "$REPO/target/vm-libublk") >> build.log 2>&1 \
  || skip_all "building libublk $LIBUBLK_V's loop example failed (see $W/build.log)"
UBLK_LOOP="$REPO/target/vm-libublk/x86_64-unknown-linux-gnu/release/examples/loop"
for b in "${DRBDD_BINS[@]}" "$UBLK_LOOP"; do
  file -L "$b" | grep -Eq 'statically linked|static-pie linked' || skip_all "$b is not statically linked"
done

# 3. Initramfs: busybox, modules, binaries, fio job arguments, settings.
rm -rf root && mkdir -p root/{bin,sbin,lib,lib64,proc,sys,dev,tmp,mnt,etc,run,fio}
cp /bin/busybox root/bin/
for m in drivers/block/loop drivers/block/ublk_drv drivers/block/virtio_blk lib/lru_cache lib/libcrc32c drivers/block/drbd/drbd; do
  [ -f "$MODDIR/kernel/$m.ko.xz" ] || skip_all "$VM_KERNEL_PKG has no $m module"
  xz -dc "$MODDIR/kernel/$m.ko.xz" > "root/lib/$(basename $m).ko"
done
cp "${DRBDD_BINS[@]}" root/bin/
case " $TARGETS " in *" drbdd-c-alt "*)
  ALT=${VM_BENCH_ALT_DIR:-}
  for b in drbdd drbdctl; do
    [ -n "$ALT" ] && file -L "$ALT/$b" 2>/dev/null | grep -Eq 'statically linked|static-pie linked' \
      || skip_all "drbdd-c-alt needs VM_BENCH_ALT_DIR with static drbdd and drbdctl (see benches/README.md)"
  done
  mkdir -p root/opt/alt && cp "$ALT/drbdd" "$ALT/drbdctl" root/opt/alt/ ;;
esac
cp "$UBLK_LOOP" root/bin/ublk-loop
vm_copy_with_libs root "$(command -v fio)" "$(command -v losetup)" "$DRBDSETUP84" "$(command -v drbdmeta)"
# VM_BENCH_PERF="TARGET:WORKLOAD ...": profile those jobs with perf (cpu-clock, whole guest).
PERF_JOBS=${VM_BENCH_PERF:-}
if [ -n "$PERF_JOBS" ]; then
  if command -v perf >/dev/null; then vm_copy_with_libs root "$(command -v perf)"
  else echo "vm-rows: VM_BENCH_PERF set but perf is not installed (apt-get install linux-perf); no profiles" >&2; PERF_JOBS=""; fi
fi
SIZE_BYTES=$((SIZE_MIB * 1024 * 1024))
for w in $WORKLOADS; do
  "$EXE" fio-args --workload "$w" --filename @DEV@ --size-bytes "$SIZE_BYTES" --output @OUT@ \
    --runtime-s "$RUNTIME_S" --ramp-s "$RAMP_S" > "root/fio/$w.args" || skip_all "$EXE fio-args --workload $w failed"
  if grep -q ' ' "root/fio/$w.args"; then skip_all "fio-args for $w contain spaces (the guest splits on whitespace)"; fi
done
JOB_LIMIT_S=$((RUNTIME_S + RAMP_S + 120))
cat > root/bench.env <<EOF
RUNS=$RUNS
TARGETS="$TARGETS"
WORKLOADS="$WORKLOADS"
JOB_LIMIT_S=$JOB_LIMIT_S
SYNC_LIMIT_S=600
PERF_JOBS="$PERF_JOBS"
EOF
cp "$HERE/vm/guest-init.sh" root/init && chmod +x root/init
(cd root && find . | cpio -o -H newc --quiet | gzip -1) > initramfs.gz

# 4. Disks (written once, not sparse, so no target pays the host's block allocation) and boot.
# Bench disks hold the fio size plus room for internal metadata.
DISK_MIB=$((SIZE_MIB + 64))
truncate -s 64M results.img; dd if=/dev/zero of=results.img bs=1M count=64 conv=notrunc status=none
for d in disk-b.img disk-c.img; do
  if [ ! -f $d ] || [ "$(stat -c %s $d)" != $((DISK_MIB * 1024 * 1024)) ]; then
    rm -f $d; dd if=/dev/zero of=$d bs=4M count=$((DISK_MIB / 4)) oflag=direct status=none
  fi
done
ntargets=$(echo $TARGETS | wc -w)
limit=$(( 600 + RUNS * ntargets * (6 * (RUNTIME_S + RAMP_S + 15) + 120) ))
T0=$(date +%s)
CPU=(); [ "$ACCEL" = kvm ] && CPU=(-cpu host)
set +e
timeout "$limit" qemu-system-x86_64 -accel "$ACCEL" "${CPU[@]}" -m 3072 -smp 2 -nographic -no-reboot \
  -kernel "$VMLINUZ" -initrd initramfs.gz -append "console=ttyS0 quiet panic=-1" \
  -drive file=results.img,if=virtio,format=raw,cache=none,aio=io_uring \
  -drive file=disk-b.img,if=virtio,format=raw,cache=none,aio=io_uring \
  -drive file=disk-c.img,if=virtio,format=raw,cache=none,aio=io_uring > console.log 2>&1
qemu_rc=$?
set -e
echo "vm-rows: VM wall time $(( $(date +%s) - T0 )) s (qemu exit $qemu_rc, limit $limit s)" >&2
tr -d '\r' < console.log | grep -aoE 'VMB(-INFO|-ERR|:) .*' | sed 's/^/vm-rows: /' >&2 || true
rm -rf results && mkdir results
tar -xf results.img -C results 2>/dev/null || true
PERF_OUT=${VM_BENCH_PERF_DIR:-${TMPDIR:-/tmp}/drbdd-vm-perf}
for f in results/perf-*; do
  [ -f "$f" ] || continue
  mkdir -p "$PERF_OUT" && cp "$f" "$PERF_OUT/" && echo "vm-rows: profile $PERF_OUT/$(basename "$f")" >&2
done

# 5. One JSON line per row: runs with at least one workload measured.
done_marker=$(tr -d '\r' < console.log | grep -ac 'VMB: DONE' || true)
for t in $TARGETS; do
  runs=()
  for r in $(seq 1 "$RUNS"); do
    parts=()
    for w in $WORKLOADS; do
      f=results/run$r-$t-$w.json
      [ -s "$f" ] || continue
      m=$("$EXE" fio-metrics --workload "$w" "$f" 2>/dev/null) || continue
      m=${m#\{}; m=${m%\}}; [ -n "$m" ] && parts+=("$m")
    done
    [ ${#parts[@]} -gt 0 ] && runs+=("{$(IFS=,; echo "${parts[*]}")}")
  done
  if [ ${#runs[@]} -gt 0 ]; then
    printf '{"id":"vm-%s","name":"%s","baseline":"vm-raw","runs":[%s]}\n' "$t" "$(row_name "$t")" "$(IFS=,; echo "${runs[*]}")"
  else
    why=$(tr -d '\r' < console.log | grep -a "VMB-ERR $t " | head -1 | sed "s/.*VMB-ERR $t //")
    [ -n "$why" ] || { [ "$done_marker" = 0 ] && why="the VM did not finish (qemu exit $qemu_rc; see $W/console.log)"; }
    printf '{"id":"vm-%s","name":"%s","baseline":"vm-raw","skipped":"%s"}\n' "$t" "$(row_name "$t")" "$(json_str "${why:-no fio output}")"
  fi
done
[ "${VM_BENCH_KEEP:-0}" = 1 ] || rm -f disk-b.img disk-c.img results.img
true
