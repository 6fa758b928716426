#!/usr/bin/env bash
# Sets capsule up on a fresh Debian 12 machine and runs the main job on built-in defaults:
#   1. Debian packages (QEMU, kernel source, busybox, e2fsprogs, ...)
#   2. the capsule binary, installed as /usr/local/bin/capsule, and containerd's shim next to it
#      (/usr/local/bin/containerd-shim-capsule-v2, runtime io.containerd.capsule.v2)
#   3. the default guest: container-object kernel (cached in ~/.cache/capsule), agent, initramfs
#   4. virtiofsd (crates.io, pinned, cached in ~/.cache/capsule/virtiofsd) for host directories
#   5. capsule create demo && capsule exec demo -- uname -a
# A second run reuses every cache and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install a Rust toolchain (https://rustup.rs) and run again" >&2
  exit 1
fi

say "Debian packages"
./scripts/install-deps.sh

say "capsule binary"
capsule_bin=$(./scripts/build-capsule.sh)
for bin in "$capsule_bin" "$(dirname "$capsule_bin")/containerd-shim-capsule-v2"; do
  name=$(basename "$bin")
  install -m 0755 "$bin" "/usr/local/bin/$name.new"
  mv "/usr/local/bin/$name.new" "/usr/local/bin/$name"
  echo "installed /usr/local/bin/$name"
done

say "default guest (the first kernel build takes several minutes)"
./scripts/build-guest.sh

say "virtiofsd for --share and --rootfs-dir (the first build takes several minutes)"
./scripts/install-virtiofsd.sh

say "capsule create demo && capsule exec demo -- uname -a"
if capsule ls | awk 'NR > 1 {print $1}' | grep -qx demo; then
  echo "(removing the demo VM of an earlier run)"
  capsule rm --force demo >/dev/null
fi
capsule create demo && capsule exec demo -- uname -a
