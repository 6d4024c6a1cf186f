#!/bin/sh
# Installs drbdd, drbdctl and the systemd units. Run as root from the repo root
# after `cargo build --release -p drbdd -p drbdctl`.
# Usage: packaging/systemd/install.sh [PREFIX]   (default PREFIX=/usr/local)
set -eu
prefix=${1:-/usr/local}
here=$(dirname "$0")
target=${CARGO_TARGET_DIR:-target}/release
install -D -m 0755 "$target/drbdd" "$prefix/sbin/drbdd"
install -D -m 0755 "$target/drbdctl" "$prefix/sbin/drbdctl"
for unit in drbdd.service drbdd@.service drbdd-promote@.service; do
    sed "s|/usr/local/sbin|$prefix/sbin|g" "$here/$unit" > "/etc/systemd/system/$unit"
    chmod 0644 "/etc/systemd/system/$unit"
done
install -d -m 0755 /etc/drbdd/resources.d
systemctl daemon-reload
echo "installed; enable with: systemctl enable --now drbdd.service drbdd@<resource>.service"
