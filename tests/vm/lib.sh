# Host-side helpers shared by tests/vm/run.sh and benches/vm-rows.sh (sourced, not run).
#
# vm_install_packages PKG...   apt-get install what is missing (root + apt only; quiet)
# vm_fetch_kernel              newest Debian 12 6.12 cloud kernel into ./kernel/<pkg>;
#                              sets VM_KERNEL_PKG, VMLINUZ, MODDIR; returns 1 with VM_SKIP_REASON
# vm_copy_with_libs ROOT BIN.. copies dynamically linked host binaries and their libraries
# vm_build_static REPO PROFILE CARGO_ARGS...  static (crt-static) build into REPO/target/vm;
#                              sets VM_BIN_DIR
#
# Never exits the caller: every helper returns non-zero and leaves the decision (skip or
# fail) to the script that sourced it.

vm_install_packages() {
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "vm: installing $*" >&2
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 || true
  fi
}

vm_find_kernel_pkg() {
  apt-cache search '^linux-image-6\.12\.[0-9.]+\+deb12-cloud-amd64-unsigned$' 2>/dev/null \
    | awk '{print $1}' | sort -V | tail -1
}

vm_fetch_kernel() {
  VM_KERNEL_PKG=$(vm_find_kernel_pkg)
  if [ -z "$VM_KERNEL_PKG" ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    VM_KERNEL_PKG=$(vm_find_kernel_pkg)
  fi
  if [ -z "$VM_KERNEL_PKG" ]; then
    VM_SKIP_REASON="no linux-image-6.12.*+deb12-cloud-amd64-unsigned package in the apt sources (needs bookworm-backports or a current bookworm point release)"
    return 1
  fi
  if [ ! -d "kernel/$VM_KERNEL_PKG" ]; then
    rm -rf kernel && mkdir -p "kernel/$VM_KERNEL_PKG"
    if ! (cd kernel && apt-get download "$VM_KERNEL_PKG" >/dev/null 2>&1); then
      rm -rf kernel; VM_SKIP_REASON="apt-get download $VM_KERNEL_PKG failed"; return 1
    fi
    if ! dpkg-deb -x kernel/"$VM_KERNEL_PKG"_*.deb "kernel/$VM_KERNEL_PKG"; then
      rm -rf kernel; VM_SKIP_REASON="cannot extract $VM_KERNEL_PKG"; return 1
    fi
  fi
  VMLINUZ=$(ls "kernel/$VM_KERNEL_PKG"/boot/vmlinuz-* | head -1)
  MODDIR=$(ls -d "kernel/$VM_KERNEL_PKG"/lib/modules/* | head -1)
  if [ ! -f "$MODDIR/kernel/drivers/block/ublk_drv.ko.xz" ]; then
    VM_SKIP_REASON="$VM_KERNEL_PKG has no ublk_drv module"; return 1
  fi
}

vm_copy_with_libs() {
  local root=$1 b l; shift
  for b in "$@"; do
    cp "$b" "$root/bin/"
    for l in $(ldd "$b" 2>/dev/null | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
      mkdir -p "$root$(dirname "$l")"; cp -L "$l" "$root$l"
    done
  done
}

vm_build_static() {
  local repo=$1 profile=$2; shift 2
  local args=(--target x86_64-unknown-linux-gnu --target-dir "$repo/target/vm")
  [ "$profile" = release ] && args+=(--release)
  VM_BIN_DIR="$repo/target/vm/x86_64-unknown-linux-gnu/$profile"
  (cd "$repo" && RUSTFLAGS='-C target-feature=+crt-static' cargo build -q "${args[@]}" "$@")
}
