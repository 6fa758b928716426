#!/usr/bin/env bash
# TCP throughput between a container and the host, end to end through capsule's networking
# (virtio-net, TAP, bridge), per backend:
#   host: QEMU's software CPU (--backend qemu-tcg)
#   L1:   capsule's VMM (--backend kvm) inside the L1 machine (emulated SVM; relative figures)
# Each direction moves one file of N MiB over HTTP with busybox on both ends (httpd serves,
# wget fetches into /dev/null): the container's busybox in the guest, the host's busybox-static
# bound to the network's gateway. busybox nc is not used: its small reads and writes, not the
# network, bound it. The time of one `capsule exec -- true` is subtracted from the transfer the
# container side starts.
# Usage: bench/net-e2e.sh [--mib N] [--host-only|--l1-only]
# Traffic stays on the bench's own network (10.77.250.0/24, made and removed here).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
mib=64; mode=both; inner=
while [ $# -gt 0 ]; do
  case "$1" in
    --mib) mib=$2; shift 2 ;;
    --host-only) mode=host; shift ;;
    --l1-only) mode=l1; shift ;;
    --inner) inner=$2; shift 2 ;;  # internal: run one backend here
    *) echo "net-e2e.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

now() { date +%s.%N; }

# One backend, on this machine: prints "direction MiB seconds MB/s".
run_inner() {
  local backend=$1
  capsule=${CAPSULE_BIN:-$repo/target/debug/capsule}
  export CAPSULE_STATE_DIR=${TMPDIR:-/tmp}/capsule-net-bench.$$
  net=benchnet gw=10.77.250.1
  cleanup() {
    "$capsule" rm --force nb >/dev/null 2>&1 || true
    "$capsule" network rm $net >/dev/null 2>&1 || true
    kill %1 2>/dev/null || true
    rm -rf "$CAPSULE_STATE_DIR"
  }
  trap cleanup EXIT
  "$capsule" network rm $net >/dev/null 2>&1 || true
  "$capsule" network create $net --subnet 10.77.250.0/24 >/dev/null
  "$capsule" create nb --backend "$backend" --net $net >/dev/null
  local addr; addr=$("$capsule" ls | awk '$1 == "nb" { print $6 }')
  local t0 t1 base
  t0=$(now); "$capsule" exec nb -- true; t1=$(now)
  base=$(echo "$t1 - $t0" | bc -l)

  local www=$CAPSULE_STATE_DIR/www
  mkdir -p "$www"
  head -c $((mib << 20)) /dev/zero > "$www/zero"
  busybox httpd -f -p "$gw:5302" -h "$www" &
  sleep 0.3
  t0=$(now)
  "$capsule" exec nb -- wget -q -O /dev/null "http://$gw:5302/zero"
  t1=$(now)
  report "host->container" "$(echo "$t1 - $t0 - $base" | bc -l)"

  "$capsule" exec nb -- sh -c "mkdir -p /tmp/w && dd if=/dev/zero of=/tmp/w/zero bs=1048576 count=$mib 2>/dev/null && httpd -p 80 -h /tmp/w"
  sleep 0.3
  t0=$(now)
  busybox wget -q -O /dev/null "http://$addr/zero"
  t1=$(now)
  report "container->host" "$(echo "$t1 - $t0" | bc -l)"
}

report() {
  printf '%-16s %5d MiB %8.2f s %8.1f MB/s\n' "$1" "$mib" "$2" "$(echo "$mib * 1.048576 / $2" | bc -l)"
}

if [ -n "$inner" ]; then
  run_inner "$inner"
  exit 0
fi

cargo build -q -p capsule-cli
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ $mode != l1 ]; then
  echo "== host, --backend qemu-tcg"
  nice -n 10 "$0" --inner qemu-tcg --mib "$mib"
fi
[ $mode = host ] && exit 0
echo "== L1, --backend kvm (capsule's VMM; relative figures)"
./scripts/build-l1.sh >/dev/null
cargo build -q -p capsule-tests --bin capsule-l1
l1=${CARGO_TARGET_DIR:-$repo/target}/debug/capsule-l1
nice -n 10 "$l1" --timeout 3600 -- "$repo/bench/net-e2e.sh --inner kvm --mib $mib" | grep -E '^(container|host)'
