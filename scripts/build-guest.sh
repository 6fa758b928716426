#!/usr/bin/env bash
# Builds the default guest that `capsule create` boots and installs it in $CAPSULE_GUEST_DIR, else
# <cache>/guest/ with <cache> = $CAPSULE_CACHE, else $XDG_CACHE_HOME/capsule, else ~/.cache/capsule:
#   vmlinux         the container-object kernel (guest-kernel-config/build.sh, cached by input hash)
#   initramfs.cpio  the guest agent (static) as /init, Debian's static busybox, /sbin/request-key
# Usage: scripts/build-guest.sh [--print-dir]
# CAPSULE_KERNEL_DIR=DIR uses DIR/vmlinux instead of building the kernel (for kernel development).
set -euo pipefail
cd "$(dirname "$0")/.."
print_dir=0
[ "${1:-}" = "--print-dir" ] && print_dir=1
say() { echo "build-guest: $*" >&2; }

./scripts/install-deps.sh >&2

cache_root=${CAPSULE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/capsule}
guest_dir=${CAPSULE_GUEST_DIR:-$cache_root/guest}
mkdir -p "$guest_dir"

say "guest kernel"
kernel_dir=${CAPSULE_KERNEL_DIR:-$(./guest-kernel-config/build.sh --print-path)}

say "guest agent (static)"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -q -p capsule-agent \
  --target x86_64-unknown-linux-gnu >&2
agent=target/x86_64-unknown-linux-gnu/release/capsule-agent
if ! file "$agent" | grep -q "static"; then
  say "error: $agent is not statically linked"; exit 1
fi

say "initramfs"
cargo build --release -q -p capsule-images --bin capsule-mkinitramfs >&2
busybox=/bin/busybox
file "$busybox" | grep -q "statically linked" || { say "error: $busybox is not the static busybox (package busybox-static)"; exit 1; }
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging/etc"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$staging/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$staging/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$staging/etc/hosts"
: > "$staging/etc/resolv.conf"  # bind-mounted over by the agent for a container on a network
args=(--init "$agent" --add-file "$busybox:/bin/busybox" --add-dir "$staging/etc:/etc"
      --symlink "/init:/sbin/request-key" --symlink "/init:/bin/keyctl" --symlink "/init:/bin/container" --mknod "c:5:1:600:/dev/console")
for d in /proc /sys /dev /run /tmp /root /mnt /var /usr/bin /usr/sbin /sbin; do args+=(--dir "$d"); done
for applet in $("$busybox" --list-full); do
  case "$applet" in bin/busybox|sbin/request-key|bin/keyctl|bin/container) continue ;; esac
  args+=(--symlink "/bin/busybox:/$applet")
done
./target/release/capsule-mkinitramfs -o "$staging/initramfs.cpio" "${args[@]}" >&2

install -m 0644 "$kernel_dir/vmlinux" "$guest_dir/vmlinux.tmp" && mv "$guest_dir/vmlinux.tmp" "$guest_dir/vmlinux"
install -m 0644 "$staging/initramfs.cpio" "$guest_dir/initramfs.cpio.tmp" && mv "$guest_dir/initramfs.cpio.tmp" "$guest_dir/initramfs.cpio"
say "installed $guest_dir/{vmlinux,initramfs.cpio} ($(du -h "$guest_dir/initramfs.cpio" | cut -f1) initramfs)"
[ $print_dir -eq 1 ] && echo "$guest_dir"
exit 0
