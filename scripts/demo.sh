#!/usr/bin/env bash
# drbdd demo: two nodes (alice, bob) on this machine over 127.0.0.1, each with
# its own config dir, run dir and a file-backed 256 MiB disk under
# /tmp/drbdd-demo. alice becomes Primary, bob syncs from her, and alice's
# device is mounted through NBD (nbdfuse -> loop -> ext4) without any kernel
# block driver of ours. Everything is stopped and removed on exit.
#
# Run as root on Debian 12:   ./scripts/demo.sh
# Env: DEMO_DIR=/tmp/drbdd-demo  PORT_BASE=17789  PROFILE=debug|release
#      KEEP=1 (keep the demo dir and logs)  SYNC_TIMEOUT=120 (seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
DEMO_DIR=${DEMO_DIR:-/tmp/drbdd-demo}
PORT_BASE=${PORT_BASE:-17789}
PROFILE=${PROFILE:-debug}
SYNC_TIMEOUT=${SYNC_TIMEOUT:-120}
DISK_MIB=256
NODES=(alice bob)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (loop devices, mount, FUSE): sudo $0"

say "1. packages (scripts/install-deps.sh)"
./scripts/install-deps.sh

say "2. build drbdd and drbdctl ($PROFILE)"
if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "cargo not found; installing the Rust toolchain with rustup (https://rustup.rs)"
    command -v curl >/dev/null || apt-get install -y -qq curl
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
if [ "$PROFILE" = release ]; then
  cargo build --release -p drbdd -p drbdctl
else
  cargo build -p drbdd -p drbdctl
fi
BIN="$REPO/target/$PROFILE"
[ -x "$BIN/drbdd" ] && [ -x "$BIN/drbdctl" ] || die "build did not produce $BIN/drbdd and $BIN/drbdctl"

# ---------------------------------------------------------------- cleanup
DAEMON_PIDS=()
FUSE_PID=""
LOOP=""
MNT="$DEMO_DIR/mnt"
FUSE_DIR="$DEMO_DIR/fuse"
cleanup() {
  local rc=$?
  set +e
  say "cleanup"
  mountpoint -q "$MNT" 2>/dev/null && { umount "$MNT" || umount -l "$MNT"; }
  [ -n "$LOOP" ] && losetup -d "$LOOP"
  if [ -n "$FUSE_PID" ]; then
    fusermount3 -u "$FUSE_DIR" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$FUSE_PID" 2>/dev/null || break; sleep 0.1; done
    kill "$FUSE_PID" 2>/dev/null
  fi
  for pid in "${DAEMON_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${DAEMON_PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  if [ "${KEEP:-0}" = 1 ]; then
    echo "kept $DEMO_DIR (logs: $DEMO_DIR/*/drbdd.log)"
  else
    rm -rf "$DEMO_DIR"
  fi
  [ "$rc" -eq 0 ] && echo "demo: done" || echo "demo: FAILED (exit $rc); rerun with KEEP=1 to keep the logs"
  exit "$rc"
}
trap cleanup EXIT INT TERM

ctl() { local node=$1; shift; "$BIN/drbdctl" --config-dir "$DEMO_DIR/$node/etc" --run-dir "$DEMO_DIR/$node/run" --node "$node" "$@"; }
# One field of `drbdctl status r0 --json` (first occurrence: the resource's
# own `disk`, `size_bytes`; the first peer's `connection`,
# `done_tenths_percent`). Plain grep/sed, so the demo needs no JSON tool.
json_field() { # $1=node $2=field name
  ctl "$1" status r0 --json 2>/dev/null | grep -o "\"$2\": *[^,}]*" | head -1 | sed 's/^[^:]*: *//; s/"//g; s/ *$//'
}

progress() { # alice's resync progress towards bob, e.g. "done:42.5%"
  local t; t=$(json_field alice done_tenths_percent)
  case "$t" in ''|null) ;; *) printf 'done:%d.%d%%' $((t / 10)) $((t % 10)) ;; esac
}

say "3. two nodes in $DEMO_DIR (ports $PORT_BASE, $((PORT_BASE + 1)))"
if [ -d "$DEMO_DIR" ]; then
  mountpoint -q "$MNT" 2>/dev/null && die "$MNT is still mounted from an earlier run; umount it first"
  rm -rf "$DEMO_DIR"
fi
for i in 0 1; do
  n=${NODES[$i]}
  mkdir -p "$DEMO_DIR/$n/etc/resources.d" "$DEMO_DIR/$n/run"
  truncate -s "${DISK_MIB}M" "$DEMO_DIR/$n/disk.img"
done
for n in "${NODES[@]}"; do
  cat > "$DEMO_DIR/$n/etc/resources.d/r0.toml" <<EOF
# Resource r0 of the drbdd demo (same file on both nodes).
resource = "r0"
frontend = ["nbd"]

[net]
protocol = "C"

[disk]
resync-rate = "200M"

[on.alice]
node-id = 0
address = "127.0.0.1:$PORT_BASE"
minor = 0
disk = "$DEMO_DIR/alice/disk.img"
meta-disk = "internal"

[on.bob]
node-id = 1
address = "127.0.0.1:$((PORT_BASE + 1))"
minor = 1
disk = "$DEMO_DIR/bob/disk.img"
meta-disk = "internal"
EOF
done
cat "$DEMO_DIR/alice/etc/resources.d/r0.toml"

say "4. create-md on both nodes"
for n in "${NODES[@]}"; do ctl "$n" create-md r0; done

say "5. start both daemons"
for n in "${NODES[@]}"; do
  "$BIN/drbdd" --config-dir "$DEMO_DIR/$n/etc" --run-dir "$DEMO_DIR/$n/run" --node "$n" \
    >"$DEMO_DIR/$n/drbdd.log" 2>&1 &
  DAEMON_PIDS+=($!)
done
for n in "${NODES[@]}"; do
  for _ in $(seq 100); do ctl "$n" status >/dev/null 2>&1 && break; sleep 0.1; done
  ctl "$n" status >/dev/null || die "drbdd on $n did not start; see $DEMO_DIR/$n/drbdd.log"
  echo "drbdd on $n is up (log: $DEMO_DIR/$n/drbdd.log)"
done

say "6. drbdctl up r0 on both nodes"
for n in "${NODES[@]}"; do ctl "$n" up r0; done
connected=no
for _ in $(seq 150); do
  [ "$(json_field alice connection)" = Connected ] && { connected=yes; break; }
  sleep 0.1
done
ctl alice status r0
if [ "$connected" = no ]; then
  echo "NOTE: the nodes did not connect within 15 s; continuing without replication (see the logs)."
fi

say "7. primary --force on alice (her data becomes the UpToDate copy)"
ctl alice primary r0 --force
if [ "$connected" = yes ]; then
  echo "waiting for the initial sync to bob (up to ${SYNC_TIMEOUT}s)..."
  synced=no
  for _ in $(seq $((SYNC_TIMEOUT * 2))); do
    [ "$(json_field bob disk)" = UpToDate ] && { synced=yes; break; }
    printf '  bob: disk:%s %s\n' "$(json_field bob disk)" \
      "$(progress)"
    sleep 0.5
  done
  [ "$synced" = yes ] && echo "initial sync done: bob is UpToDate" || echo "NOTE: sync not finished within ${SYNC_TIMEOUT}s; continuing"
fi

say "8. mount alice's r0 through NBD: nbdfuse -> loop -> ext4"
URI="nbd+unix:///r0?socket=$DEMO_DIR/alice/run/r0.nbd"
echo "NBD URI: $URI"
mkdir -p "$FUSE_DIR" "$MNT"
nbdfuse -P "$DEMO_DIR/nbdfuse.pid" "$FUSE_DIR/disk" "$URI" >"$DEMO_DIR/nbdfuse.log" 2>&1 &
FUSE_PID=$!
for _ in $(seq 100); do [ -s "$DEMO_DIR/nbdfuse.pid" ] && [ -e "$FUSE_DIR/disk" ] && break; sleep 0.1; done
[ -e "$FUSE_DIR/disk" ] || die "nbdfuse did not attach; see $DEMO_DIR/nbdfuse.log"
LOOP=$(losetup -f --show --direct-io=on "$FUSE_DIR/disk")
echo "loop device: $LOOP ($(blockdev --getsize64 "$LOOP") bytes)"
mkfs.ext4 -q -F "$LOOP"
mount "$LOOP" "$MNT"
echo "hello from drbdd on $(hostname) at $(date -u +%FT%TZ)" > "$MNT/hello.txt"
dd if=/dev/urandom of="$MNT/random.bin" bs=1M count=16 status=none
sync
(cd "$MNT" && sha256sum hello.txt random.bin)
df -h "$MNT" | tail -1
cat "$MNT/hello.txt"

say "9. drbdctl status (alice, then bob)"
ctl alice status r0 --verbose --statistics
ctl bob status r0 --verbose --statistics

say "10. unmount and demote"
umount "$MNT"
losetup -d "$LOOP"; LOOP=""
fusermount3 -u "$FUSE_DIR"
for _ in $(seq 50); do kill -0 "$FUSE_PID" 2>/dev/null || break; sleep 0.1; done
FUSE_PID=""
for _ in $(seq 50); do ctl alice secondary r0 >/dev/null 2>&1 && break; sleep 0.1; done
ctl alice status r0
SIZE_BYTES=$(json_field alice size_bytes)
for n in "${NODES[@]}"; do ctl "$n" down r0 || true; done
if [ "$connected" = yes ] && [ -n "$SIZE_BYTES" ]; then
  say "11. compare the data areas of both backing files ($SIZE_BYTES bytes)"
  if cmp -n "$SIZE_BYTES" "$DEMO_DIR/alice/disk.img" "$DEMO_DIR/bob/disk.img"; then
    echo "bob's copy is byte-identical to alice's"
  else
    die "bob's data differs from alice's"
  fi
fi
