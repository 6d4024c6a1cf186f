#!/usr/bin/env bash
# The test suite: unit, property and simulation tests, multi-process tests with
# real daemons and real NBD clients, and the ublk VM test. Tests that need a tool,
# root, FUSE, loop devices or a VM print "SKIP: <reason>" when it is missing.
# DRBDD_SOAK=1 runs the long simulation soak; DRBDD_SKIP_VM=1 skips the VM test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh || echo "SKIP: could not install packages; tests needing them will skip"
# Integration tests start the real binaries from target/debug.
cargo build --workspace --bins --examples
cargo test --workspace --no-fail-fast -- --test-threads=2
# VM scenarios: exit 0 PASS, 77 SKIP (printed, does not fail the suite), anything else fails.
vm_scenario() {
  local rc=0
  tests/vm/run.sh "$1" || rc=$?
  case $rc in
    0) ;;
    77) echo "SKIP: VM test $1 (prerequisites missing; see the VM-TEST: SKIP line above)" ;;
    *) echo "FAIL: VM test $1 (exit $rc)"; return 1 ;;
  esac
}
if [ "${DRBDD_SKIP_VM:-0}" = 1 ]; then
  echo "SKIP: ublk VM tests (DRBDD_SKIP_VM=1)"
elif [ -x tests/vm/run.sh ]; then
  vm_rc=0
  vm_scenario --ublk || vm_rc=1
  vm_scenario --drbdd || vm_rc=1
  [ $vm_rc = 0 ] || exit 1
else
  echo "SKIP: ublk VM tests (tests/vm/run.sh not present)"
fi
