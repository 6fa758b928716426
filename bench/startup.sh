#!/usr/bin/env bash
# Start-up benchmark (bench/src/bin/startup_bench.rs): capsule's VMM vs QEMU microvm, time from
# spawn to the first KVM_RUN, to the guest's first serial byte and to its init.
#   host: the tiny idle test guest (here /dev/kvm may be kvm-pvm: QEMU gets its default CPU)
#   L1:   the real guest kernel + initramfs inside an L1 machine (QEMU TCG with emulated AMD SVM,
#         -smp 1; Debian's kernel with kvm_amd), QEMU with -accel kvm -cpu host. L1 figures are
#         relative: they are measured on an emulated CPU.
# Usage: bench/startup.sh [--runs N] [--host-only|--l1-only]
# Needs: the default guest in ~/.cache/capsule/guest (scripts/build-guest.sh) and what
# scripts/install-deps.sh installs; the L1 machine comes from scripts/build-l1.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
runs=10; mode=both
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --host-only) mode=host; shift ;;
    --l1-only) mode=l1; shift ;;
    *) echo "startup.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
capsule_bin=$(./scripts/build-capsule.sh)
cargo build -q -p capsule-bench --bin startup-bench
bench=${CARGO_TARGET_DIR:-$repo/target}/debug/startup-bench
guest=${CAPSULE_GUEST_DIR:-$HOME/.cache/capsule/guest}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, kernel $(uname -r), KVM modules: $(ls /sys/module | grep -E '^kvm' | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "qemu: $(qemu-system-x86_64 --version | head -1)"

if [ $mode != l1 ]; then
  echo "== host, tiny guest"
  cpu=none; [ -e /sys/module/kvm_pvm ] || cpu=host
  nice -n 10 "$bench" --capsule "$capsule_bin" --runs "$runs" --qemu-cpu $cpu
fi
[ $mode = host ] && exit 0

echo "== L1, real guest kernel"
# The L1 machine of the test suite (docs/testing.md); the measured files are copied to its tmpfs
# first, so that 9p reads of the host's root are not part of the figures.
./scripts/build-l1.sh >/dev/null
cargo build -q -p capsule-tests --bin capsule-l1
l1=${CARGO_TARGET_DIR:-$repo/target}/debug/capsule-l1
nice -n 10 "$l1" --timeout 3600 -- "cp '$capsule_bin' '$bench' '$guest/vmlinux' '$guest/initramfs.cpio' /tmp/ &&
  echo \"L1: \$(uname -r), \$(nproc) CPU, KVM: \$(ls /sys/module | grep -E '^kvm' | xargs)\" &&
  /tmp/startup-bench --capsule /tmp/capsule --kernel /tmp/vmlinux --initrd /tmp/initramfs.cpio \
    --cmdline quiet --runs $runs --timeout 120" | grep -v '^\['
