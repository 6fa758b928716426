#!/usr/bin/env bash
# File-system benchmark: the same workload (bench/fs-workload.sh: sequential write and read
# MB/s, small-file create and stat per second) on a host directory directly, through a
# `--share` of it (virtio-fs, virtiofsd), and on an ext4 volume (`--volume`, virtio-blk), per
# backend:
#   host: QEMU microvm with its software CPU (--backend qemu-tcg)
#   L1:   capsule's VMM (--backend kvm) inside the suite's L1 machine (QEMU TCG with emulated
#         AMD SVM); relative figures, measured on an emulated CPU
# Usage: bench/fs.sh [--runs N] [--size MiB] [--files N] [--host-only|--l1-only]
#        bench/fs.sh --inside BACKEND ...   (one backend on this machine; what the L1 part runs)
# Needs: the default guest (scripts/build-guest.sh, or $CAPSULE_GUEST_DIR), virtiofsd
# (scripts/install-virtiofsd.sh), busybox-static and e2fsprogs (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
runs=3; size=128; files=1000; mode=both; inside=
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --files) files=$2; shift 2 ;;
    --host-only) mode=host; shift ;;
    --l1-only) mode=l1; shift ;;
    --inside) inside=$2; shift 2 ;;
    *) echo "fs.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# The median of the numbers on stdin.
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# One backend on this machine: prints one table row per place.
run_inside() {
  local backend=$1 capsule=${CAPSULE_BIN:-$repo/target/debug/capsule}
  local work; work=$(mktemp -d "${TMPDIR:-/tmp}/capsule-fs-bench.XXXXXX")
  export CAPSULE_STATE_DIR=$work/state
  mkdir -p "$work/share" "$work/state"
  cp "$repo/bench/fs-workload.sh" "$work/workload.sh"
  truncate -s $((size * 4 + 64))M "$work/vol.ext4"
  mkfs.ext4 -q -F "$work/vol.ext4"
  trap '"$capsule" rm --force fsbench >/dev/null 2>&1 || true; rm -rf "$work"' RETURN
  "$capsule" create fsbench --backend "$backend" --memory 512 \
    --share "$work/share:/virtiofs" --share "$work:/bench:ro" --volume "$work/vol.ext4:/blk" >/dev/null
  local place dir results=$work/results
  for place in host virtiofs blk; do
    : > "$results.$place"
    for _ in $(seq "$runs"); do
      case $place in
        host) sh "$work/workload.sh" "$work/share" "$size" "$files" ;;
        virtiofs) "$capsule" exec fsbench -- sh /bench/workload.sh /virtiofs "$size" "$files" drop ;;
        blk) "$capsule" exec fsbench -- sh /bench/workload.sh /blk "$size" "$files" drop ;;
      esac >> "$results.$place"
    done
    local row="| $backend | $place |"
    for key in seq_write_MBps seq_read_MBps create_per_s stat_per_s; do
      row+=" $(awk -v k=$key '$1 == k { print $2 }' "$results.$place" | median) |"
    done
    echo "$row"
  done
}

if [ -n "$inside" ]; then
  run_inside "$inside"
  exit 0
fi

capsule_bin=$(./scripts/build-capsule.sh)
./scripts/install-virtiofsd.sh >/dev/null
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "workload: $size MiB sequential, $files small files; median of $runs runs"
echo "| backend | where | seq write MB/s | seq read MB/s | creates/s | stats/s |"
echo "|---|---|---|---|---|---|"
if [ $mode != l1 ]; then
  CAPSULE_BIN=$capsule_bin nice -n 10 "$0" --inside qemu-tcg --runs "$runs" --size "$size" --files "$files"
fi
[ $mode = host ] && exit 0
./scripts/build-l1.sh >/dev/null
cargo build -q -p capsule-tests --bin capsule-l1
l1=${CARGO_TARGET_DIR:-$repo/target}/debug/capsule-l1
# In L1 the host's root is read-only: the work directory is on L1's tmpfs /tmp.
CAPSULE_BIN=$capsule_bin nice -n 10 "$l1" --timeout 3600 -- \
  "CAPSULE_BIN=$capsule_bin bench/fs.sh --inside kvm --runs $runs --size $size --files $files" |
  grep '^| kvm'
