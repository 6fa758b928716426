#!/usr/bin/env bash
# Boot benchmark: capsule vs QEMU microvm on the same tiny guest (see bench/src/bin/boot_bench.rs).
# Usage: bench/boot.sh [--runs N] [--memory MiB] [--qemu-accel kvm|tcg]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh >/dev/null
capsule_bin=$(./scripts/build-capsule.sh)
cargo build --release -q -p capsule-bench --bin boot-bench
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, kernel $(uname -r), KVM modules: $(ls /sys/module | grep -E '^kvm' | xargs)"
echo "qemu: $(qemu-system-x86_64 --version | head -1)"
exec "${CARGO_TARGET_DIR:-target}/release/boot-bench" --capsule "$capsule_bin" "$@"
