#!/usr/bin/env bash
# Per-write CPU time, sleeps and system calls of drbdd's threads on this host:
# two release daemons on 127.0.0.1 (NBD frontend), each on a loop device with
# direct I/O over a fully allocated file under /tmp (block devices, as in the
# VM), a finished initial sync, then fio's nbd engine with one job. Prints, per
# thread, user and system µs per I/O and voluntary/involuntary context
# switches per I/O (from /proc/<pid>/task/*/{stat,status} around the run).
# Root, fio with the nbd engine, losetup. Everything is removed on exit.
#
# Env: PROTO=C (A, B, C)  RW=randwrite  BS=4k  QD=1  N=10000 (I/Os)
#      STRACE=1 also counts the actors' system calls (a second, traced run).
#      KEEP=1 leaves the daemons running (prints how to stop them).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
D=${PROFILE_DIR:-/tmp/drbdd-host-profile}
PORT=${PORT_BASE:-18789}
PROTO=${PROTO:-C} RW=${RW:-randwrite} BS=${BS:-4k} QD=${QD:-1} N=${N:-10000}
die() { echo "host-profile: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (loop devices)"
command -v fio >/dev/null || die "fio is missing (apt-get install fio)"
fio --enghelp 2>/dev/null | grep -qw nbd || die "this fio has no nbd engine"
cargo build -q --release -p drbdd -p drbdctl
BIN=$REPO/target/release
ctl() { local n=$1; shift; "$BIN/drbdctl" --config-dir "$D/$n/etc" --run-dir "$D/$n/run" --node "$n" "$@"; }

LOOPS=()
cleanup() {
  set +e
  if [ "${KEEP:-0}" = 1 ]; then
    echo "kept: kill \$(cat $D/*.pid); losetup -d ${LOOPS[*]}; rm -rf $D"
    return
  fi
  for n in alice bob; do [ -f "$D/$n.pid" ] && kill "$(cat "$D/$n.pid")" 2>/dev/null; done
  sleep 1
  for l in "${LOOPS[@]}"; do losetup -d "$l"; done
  rm -rf "$D"
}
trap cleanup EXIT
rm -rf "$D"
for n in alice bob; do
  mkdir -p "$D/$n/etc/resources.d" "$D/$n/run"
  fallocate -l 256M "$D/$n/disk.img"
  LOOPS+=("$(losetup --direct-io=on -f --show "$D/$n/disk.img")")
done
NAMES=(alice bob)
for n in "${NAMES[@]}"; do
  {
    printf 'resource = "r0"\nfrontend = ["nbd"]\n[net]\nprotocol = "%s"\n[disk]\nresync-rate = "400M"\n' "$PROTO"
    for i in 0 1; do
      printf '[on.%s]\nnode-id = %d\naddress = "127.0.0.1:%d"\nminor = %d\ndisk = "%s"\nmeta-disk = "internal"\n' \
        "${NAMES[$i]}" "$i" $((PORT + i)) "$i" "${LOOPS[$i]}"
    done
  } >"$D/$n/etc/resources.d/r0.toml"
done
for n in alice bob; do ctl "$n" create-md r0 >/dev/null; done
for n in alice bob; do
  "$BIN/drbdd" --config-dir "$D/$n/etc" --run-dir "$D/$n/run" --node "$n" >"$D/$n.log" 2>&1 &
  echo $! >"$D/$n.pid"
done
for n in alice bob; do
  for _ in $(seq 100); do ctl "$n" status >/dev/null 2>&1 && break; sleep 0.1; done
  ctl "$n" up r0 >/dev/null
done
sleep 1
ctl alice primary r0 --force >/dev/null 2>&1
for _ in $(seq 600); do
  ctl alice status r0 | grep -q "peer-disk:UpToDate" && break
  sleep 0.5
done
ctl alice status r0 | grep -q "peer-disk:UpToDate" || die "initial sync did not finish; see $D/*.log"

URI="nbd+unix:///r0?socket=$D/alice/run/r0.nbd"
# "<node>/<thread> utime stime voluntary involuntary", summed over same-named threads.
snap() {
  for n in alice bob; do
    p=$(cat "$D/$n.pid")
    for t in /proc/"$p"/task/*; do
      printf '%s/%s %s %s\n' "$n" "$(tr ' ' _ <"$t/comm")" \
        "$(awk '{print $14, $15}' "$t/stat")" \
        "$(awk '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{nv=$2} END{print v, nv}' "$t/status")"
    done
  done | awk '{u[$1]+=$2; s[$1]+=$3; v[$1]+=$4; nv[$1]+=$5} END {for (k in u) print k, u[k], s[k], v[k], nv[k]}' | sort
}
run_fio() {
  fio --name=p --ioengine=nbd --uri="$URI" --rw="$RW" --bs="$BS" --iodepth="$QD" --size=200M \
    --number_ios="$N" --output-format=json 2>/dev/null | sed -n '/^{/,$p'
}
snap >"$D/s0"
json=$(run_fio)
snap >"$D/s1"
echo "$json" | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
k = "write" if j["write"]["total_ios"] else "read"
print("host-profile: %s %s QD%s protocol %s: %d I/Os, %.0f IOPS, clat p50 %.1f us" % (
    sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], j[k]["total_ios"], j[k]["iops"],
    j[k]["clat_ns"]["percentile"]["50.000000"] / 1000))' "$RW" "$BS" "$QD" "$PROTO"
tick_us=$((1000000 / $(getconf CLK_TCK)))
printf '%-30s %12s %12s %12s %12s\n' thread "user us/io" "sys us/io" "sleeps/io" "preempt/io"
join "$D/s0" "$D/s1" | awk -v n="$N" -v t="$tick_us" '{
  du = ($6 - $2) * t / n; ds = ($7 - $3) * t / n; v = ($8 - $4) / n; nv = ($9 - $5) / n
  if (du + ds + v > 0.05) printf "%-30s %12.1f %12.1f %12.2f %12.2f\n", $1, du, ds, v, nv }'

if [ "${STRACE:-0}" = 1 ]; then
  command -v strace >/dev/null || die "strace is missing"
  for n in alice bob; do
    p=$(cat "$D/$n.pid")
    for t in /proc/"$p"/task/*; do
      [ "$(cat "$t/comm")" = drbdd-res-r0 ] && { strace -c -p "$(basename "$t")" -o "$D/$n.strace" & }
    done
  done
  sleep 0.5
  run_fio >/dev/null
  sleep 0.5
  pkill -INT -f "strace -c -p" || true
  sleep 1
  for n in alice bob; do
    echo "host-profile: $n actor system calls per I/O (traced run, slower):"
    awk -v n="$N" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {printf "  %-16s %6.2f\n", $NF, $4 / n}' "$D/$n.strace"
  done
fi
