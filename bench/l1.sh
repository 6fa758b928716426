#!/usr/bin/env bash
# Inside the L1 machine (docs/testing.md: QEMU's software CPU with emulated AMD SVM), side by side
# in one run: the guest kernel with a busybox init that prints a marker, on capsule's VMM and on
# QEMU microvm with -accel kvm (time to the marker, VMM CPU, VMM RSS; bench/src/bin/boot_bench.rs),
# then `capsule create --backend kvm` to the end of the first `capsule exec`.
# The inner guest runs on an emulated CPU: these are relative figures, not hardware ones.
# Usage: bench/l1.sh [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=10
[ "${1:-}" = "--runs" ] && runs=$2
./scripts/install-deps.sh >/dev/null
./scripts/build-l1.sh >/dev/null
guest_dir=$(./scripts/build-guest.sh --print-dir 2>/dev/null)
capsule_bin=$(./scripts/build-capsule.sh)
cargo build --release -q -p capsule-bench --bin boot-bench
cargo build --release -q -p capsule-images --bin capsule-mkinitramfs
cargo build -q -p capsule-tests --bin capsule-l1
target=${CARGO_TARGET_DIR:-$PWD/target}

# The L1 sees this machine's root read-only and has its own /tmp: build what it boots here.
out=$target/bench-l1
mkdir -p "$out"
printf '#!/bin/busybox sh\n/bin/busybox echo capsule-bench: init reached\nexec /bin/busybox sleep 1000000\n' > "$out/init"
"$target/release/capsule-mkinitramfs" -o "$out/marker.cpio" --init "$out/init" \
  --add-file /bin/busybox:/bin/busybox --dir /dev --dir /proc >/dev/null

cat > "$out/inside.sh" <<INSIDE
set -eu
echo "L1: \$(uname -r), \$(nproc) vCPU, KVM modules: \$(ls /sys/module | grep -E '^kvm' | xargs)"
echo "qemu: \$(qemu-system-x86_64 --version | head -1)"
echo
echo "### guest kernel + busybox init to its marker (median of $runs, alternating)"
"$target/release/boot-bench" --capsule "$capsule_bin" --qemu-accel kvm --runs $runs \
  --memory 256 --kernel "$guest_dir/vmlinux" --initrd "$out/marker.cpio" \
  --ready 'capsule-bench: init reached' --timeout 120
echo
echo "### capsule create --backend kvm -> end of the first capsule exec (ms)"
export CAPSULE_STATE_DIR=/tmp/bench-state CAPSULE_GUEST_DIR="$guest_dir"
for i in \$(seq $runs); do
  t0=\$(date +%s%N)
  "$capsule_bin" create "b\$i" --backend kvm >/dev/null
  "$capsule_bin" exec "b\$i" -- true
  t1=\$(date +%s%N)
  "$capsule_bin" rm --force "b\$i" >/dev/null
  echo \$(( (t1 - t0) / 1000000 ))
done | sort -n | awk '{ v[NR] = \$1 } END { printf "| create -> first exec done | median %d ms | min %d | max %d | n=%d |\\n", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2), v[1], v[NR], NR }'
INSIDE
echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, kernel $(uname -r), KVM modules: $(ls /sys/module | grep -E '^kvm' | xargs)"
CAPSULE_BIN=$capsule_bin exec "$target/debug/capsule-l1" -- sh "$out/inside.sh"
