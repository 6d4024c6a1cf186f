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
cargo test --workspace -- --test-threads=2
if [ "${DRBDD_SKIP_VM:-0}" = 1 ]; then
  echo "SKIP: ublk VM test (DRBDD_SKIP_VM=1)"
elif [ -x tests/vm/run.sh ]; then
  tests/vm/run.sh
else
  echo "SKIP: ublk VM test (tests/vm/run.sh not present)"
fi
