#!/usr/bin/env bash
# Prepares the "L1" test machine: Debian's own kernel under QEMU's software CPU with emulated AMD
# SVM, in which /dev/kvm is a hardware-style KVM (kvm_amd) and capsule's VMM boots the real guest
# kernel (docs/testing.md). The test harness (tests/src/l1.rs) boots it once per test.
#
# Usage: scripts/build-l1.sh [--print-dir]
#
# Result: <cache>/l1/<key>/ with <cache> = $CAPSULE_CACHE, else $XDG_CACHE_HOME/capsule, else
# ~/.cache/capsule, and key = Debian package name and version + a hash of this script and of
# tests/l1/init:
#   vmlinux         the kernel of package linux-image-amd64's current dependency, taken out of
#                   its compressed bzImage: QEMU's microvm boots it through its PVH entry, which
#                   skips the firmware and the decompressor (together 3x the boot time)
#   initramfs.cpio  Debian's static busybox, tests/l1/init as /init, and the modules init needs
#                   to mount the host's root over 9p (virtio-mmio, 9pnet_virtio, 9p)
#   modroot/        the package's /lib/modules with depmod run, for `modprobe -d` inside L1
#   release         the kernel's release (uname -r)
# An unchanged input is a cache hit and returns at once; concurrent callers wait for one build.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
print_dir=0
case "${1:-}" in
  --print-dir) print_dir=1 ;;
  "") ;;
  -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "build-l1: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac
say() { echo "build-l1: $*" >&2; }

cache_root=${CAPSULE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/capsule}
mkdir -p "$cache_root/l1"
exec 9>"$cache_root/l1/.lock"
flock 9

# The kernel package linux-image-amd64 points at today.
package=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$package" ]; then
  say "no package list yet: apt-get update"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q >&2
  package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$package" ] || { say "error: apt-cache finds no kernel package behind linux-image-amd64"; exit 1; }
version=$(apt-cache show --no-all-versions "$package" | awk '/^Version:/ {print $2; exit}')
inputs=$(cat "$0" tests/l1/init | sha256sum | cut -c1-16)
dir=$cache_root/l1/${package}_${version}-$inputs

if [ ! -f "$dir/initramfs.cpio" ]; then
  say "L1 kernel: $package $version"
  work=$(mktemp -d "$cache_root/l1/.work.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$package=$version" >&2 2>&1) \
    || { say "error: apt-get download $package=$version failed"; exit 1; }
  dpkg-deb -x "$work"/*.deb "$work/pkg"
  release=$(ls "$work/pkg/lib/modules")
  mkdir -p "$work/out/modroot/lib"
  mv "$work/pkg/lib/modules" "$work/out/modroot/lib/modules"
  depmod -b "$work/out/modroot" "$release"
  # The bzImage's payload is one xz stream; its start is the first xz magic in the file.
  bzimage=$work/pkg/boot/vmlinuz-$release
  offset=$(LC_ALL=C grep -m1 -aboP '\xfd7zXZ\x00' "$bzimage" | awk -F: 'NR == 1 {print $1}')
  [ -n "$offset" ] || { say "error: no xz payload in $bzimage"; exit 1; }
  tail -c +$((offset + 1)) "$bzimage" | xz -dcq > "$work/out/vmlinux" 2>/dev/null || true
  file "$work/out/vmlinux" | grep -q "ELF 64-bit" \
    || { say "error: the payload of $bzimage is not an ELF kernel"; exit 1; }
  echo "$release" > "$work/out/release"

  say "L1 initramfs (busybox, 9p modules, tests/l1/init)"
  root=$work/root
  mkdir -p "$root"/{bin,dev,proc,sys,host,job,etc,lib/modules}
  cp /bin/busybox "$root/bin/busybox"
  file "$root/bin/busybox" | grep -q "statically linked" \
    || { say "error: /bin/busybox is not the static busybox (package busybox-static)"; exit 1; }
  ln -s busybox "$root/bin/sh"
  install -m 0755 tests/l1/init "$root/init"
  : > "$root/etc/modules.order"
  for module in virtio_mmio 9pnet_virtio 9p; do
    modprobe -d "$work/out/modroot" -S "$release" --show-depends "$module" |
      awk '$1 == "insmod" {print $2}' | while read -r ko; do
        name=$(basename "$ko")
        grep -qx "$name" "$root/etc/modules.order" && continue
        cp "$ko" "$root/lib/modules/$name"
        echo "$name" >> "$root/etc/modules.order"
      done
  done
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) > "$work/out/initramfs.cpio"
  rm -rf "$dir"
  mv "$work/out" "$dir"
  # Older inputs' results are dead weight (~400 MiB each).
  find "$cache_root/l1" -mindepth 1 -maxdepth 1 -type d ! -path "$dir" -exec rm -rf {} +
  say "cached in $dir"
fi
[ $print_dir -eq 1 ] && echo "$dir"
exit 0
