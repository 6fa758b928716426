#!/usr/bin/env bash
# containerd benchmark: wall time of `ctr run --rm IMAGE id /bin/true` with runc
# (io.containerd.runc.v2) and with capsule (io.containerd.capsule.v2) side by side on the same
# image, and the start of a pod's second container (a container object added to the running
# pod VM: `ctr run --rm` with CRI's sandbox annotations), per backend:
#   host: capsule on QEMU microvm with its software CPU (CAPSULE_BACKEND=qemu-tcg)
#   L1:   capsule's VMM (kvm) inside the suite's L1 machine (QEMU TCG with emulated AMD SVM);
#         relative figures, runc measured in the same L1 run
# Usage: bench/shim.sh [--runs N] [--host-only|--l1-only]
#        bench/shim.sh --inside BACKEND ...   (one backend on this machine; what the L1 part runs)
# Needs: containerd (scripts/install-deps.sh), the default guest (scripts/build-guest.sh, or
# $CAPSULE_GUEST_DIR), capsule and the shim side by side ($CAPSULE_BIN, else a release build).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
runs=5; mode=both; inside=
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --host-only) mode=host; shift ;;
    --l1-only) mode=l1; shift ;;
    --inside) inside=$2; shift 2 ;;
    *) echo "shim.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

run_inside() {
  local backend=$1 capsule=${CAPSULE_BIN:-$repo/target/debug/capsule}
  local work; work=$(mktemp -d "${TMPDIR:-/tmp}/capsule-shim-bench.XXXXXX")
  local sock=$work/containerd.sock image=localhost/capsule-bench:1
  cat > "$work/config.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
EOF
  PATH=$(dirname "$capsule"):$PATH CAPSULE_BACKEND=$backend CAPSULE_STATE_DIR=$work/capsule \
    CAPSULE_POD_DIR=$work/pods containerd --config "$work/config.toml" > "$work/containerd.log" 2>&1 &
  local ctrd=$!
  cleanup() {
    ctr -a "$sock" task kill -s KILL pod >/dev/null 2>&1 || true
    sleep 1
    ctr -a "$sock" task rm -f pod >/dev/null 2>&1 || true
    ctr -a "$sock" containers rm pod >/dev/null 2>&1 || true
    kill "$ctrd" 2>/dev/null || true
    wait "$ctrd" 2>/dev/null || true
    { grep " $work" /proc/self/mountinfo || true; } | awk '{print $5}' | sort -r | xargs -r -n1 umount -l
    rm -rf "$work"
  }
  trap cleanup RETURN
  while [ ! -S "$sock" ]; do sleep 0.1; done
  mkdir -p "$work/tree/bin"
  cp /bin/busybox "$work/tree/bin/"
  for a in sh true sleep; do ln -s busybox "$work/tree/bin/$a"; done
  "$capsule" image build --from-dir "$work/tree" --format oci-archive --ref "$image" \
    -o "$work/image.tar" >/dev/null 2>&1
  ctr -a "$sock" images import "$work/image.tar" >/dev/null
  local runtime t0 i
  for runtime in io.containerd.runc.v2 io.containerd.capsule.v2; do
    : > "$work/times"
    for i in $(seq "$runs"); do
      t0=$(now_ms)
      ctr -a "$sock" run --rm --runtime "$runtime" "$image" "t$i" /bin/true < /dev/null
      echo $(( $(now_ms) - t0 )) >> "$work/times"
    done
    echo "| $backend | ctr run --rm /bin/true | ${runtime#io.containerd.} | $(median < "$work/times") |"
  done
  local pod=(--annotation io.kubernetes.cri.sandbox-id=pod)
  ctr -a "$sock" run -d --runtime io.containerd.capsule.v2 "${pod[@]}" \
    --annotation io.kubernetes.cri.container-type=sandbox "$image" pod sleep 3600 > /dev/null
  : > "$work/times"
  for i in $(seq "$runs"); do
    t0=$(now_ms)
    ctr -a "$sock" run --rm --runtime io.containerd.capsule.v2 "${pod[@]}" \
      --annotation io.kubernetes.cri.container-type=container "$image" "m$i" /bin/true < /dev/null
    echo $(( $(now_ms) - t0 )) >> "$work/times"
  done
  echo "| $backend | pod's next container, ctr run --rm /bin/true | capsule.v2 | $(median < "$work/times") |"
}

if [ -n "$inside" ]; then
  run_inside "$inside"
  exit 0
fi

capsule_bin=$(./scripts/build-capsule.sh)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "median of $runs runs, milliseconds"
echo "| backend | what | runtime | ms |"
echo "|---|---|---|---|"
if [ $mode != l1 ]; then
  CAPSULE_BIN=$capsule_bin nice -n 10 "$0" --inside qemu-tcg --runs "$runs"
fi
[ $mode = host ] && exit 0
./scripts/build-l1.sh >/dev/null
cargo build -q -p capsule-tests --bin capsule-l1
l1=${CARGO_TARGET_DIR:-$repo/target}/debug/capsule-l1
CAPSULE_BIN=$capsule_bin nice -n 10 "$l1" --timeout 3600 -- \
  "CAPSULE_BIN=$capsule_bin bench/shim.sh --inside kvm --runs $runs" | grep '^| kvm'
