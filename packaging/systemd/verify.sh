#!/bin/sh
# Runs `systemd-analyze verify` on the units, with binary paths pointed at a
# build (default target/debug) so the ExecStart= checks can find them.
# Usage: packaging/systemd/verify.sh [BINDIR]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bindir=$(cd "${1:-$here/../../target/debug}" && pwd)
command -v systemd-analyze >/dev/null || { echo "SKIP: systemd-analyze not installed"; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in drbdd.service drbdd@.service drbdd-promote@.service; do
    sed "s|/usr/local/sbin|$bindir|g" "$here/$unit" > "$tmp/$unit"
done
cp "$tmp/drbdd@.service" "$tmp/drbdd@r0.service"
cp "$tmp/drbdd-promote@.service" "$tmp/drbdd-promote@r0.service"
cd "$tmp"
systemd-analyze verify --man=no ./drbdd.service ./drbdd@r0.service ./drbdd-promote@r0.service
echo "systemd units verified"
