#!/usr/bin/env bash
# Installs the Debian 12 packages drbdd's build, demo and tests need.
# qemu-system-x86 and qemu-utils go in one command: installing the former alone
# replaces the machine's newer qemu-utils and qemu-io/qemu-nbd vanish.
set -euo pipefail
pkgs=(nbdkit libnbd-bin fio fuse3 e2fsprogs qemu-utils qemu-system-x86 libclang-dev
      busybox-static cpio xz-utils valgrind util-linux iproute2 kmod systemd)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: need root to install packages (run with sudo)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
others=()
for p in "${missing[@]}"; do
  case "$p" in qemu-system-x86|qemu-utils) ;; *) others+=("$p") ;; esac
done
[ ${#others[@]} -eq 0 ] || apt-get install -y -qq "${others[@]}"
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed"; then
  # A backported qemu-utils breaks Debian 12's qemu-system-x86: install both at
  # the version qemu-system-x86 offers, in one command, so qemu-io/qemu-nbd stay.
  v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
  apt-get install -y -qq --allow-downgrades "qemu-system-x86=$v" "qemu-utils=$v"
fi
