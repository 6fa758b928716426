#!/usr/bin/env bash
# What the VMM's confinement costs, inside the L1 machine (docs/testing.md), side by side in one
# run: `capsule create --backend kvm` (boot to the agent's first answer) and `capsule exec -- true`
# with the jail and the seccomp filters (the default), with each one off, and with both off,
# the four alternating run by run so that they share the machine's load.
# The inner guest runs on an emulated CPU: these are relative figures, not hardware ones.
# Usage: bench/jail-l1.sh [--runs N] [--execs M]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=6
execs=10
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --execs) execs=$2; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--execs M]" >&2; exit 2 ;;
  esac
done
./scripts/install-deps.sh >/dev/null
./scripts/build-l1.sh >/dev/null
guest_dir=$(./scripts/build-guest.sh --print-dir 2>/dev/null)
capsule_bin=$(./scripts/build-capsule.sh)
cargo build -q -p capsule-tests --bin capsule-l1
target=${CARGO_TARGET_DIR:-$PWD/target}
out=$target/bench-jail
mkdir -p "$out"

cat > "$out/inside.sh" <<INSIDE
set -eu
export CAPSULE_STATE_DIR=/tmp/bench-state CAPSULE_GUEST_DIR="$guest_dir"
echo "L1: \$(uname -r), \$(nproc) vCPU"
now() { date +%s%N; }
median() { sort -n | awk '{ v[NR] = \$1 } END { printf "%d", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
for i in \$(seq $runs); do
  for mode in jail+seccomp no-jail no-seccomp none; do
    case \$mode in
      jail+seccomp) flags= ;;
      no-jail) flags=--no-jail ;;
      no-seccomp) flags=--no-seccomp ;;
      none) flags="--no-jail --no-seccomp" ;;
    esac
    t0=\$(now)
    "$capsule_bin" create "b\$i" --backend kvm --net none \$flags >/dev/null 2>&1
    t1=\$(now)
    for j in \$(seq $execs); do
      e0=\$(now); "$capsule_bin" exec "b\$i" -- true; e1=\$(now)
      echo \$(( (e1 - e0) / 1000 ))
    done > "/tmp/exec-\$mode-\$i"
    echo "\$mode create \$(( (t1 - t0) / 1000000 )) exec \$(median < /tmp/exec-\$mode-\$i)" | tee -a /tmp/raw
    "$capsule_bin" rm --force "b\$i" >/dev/null
  done
done
echo
echo "| configuration | create, median ms (min-max) | exec -- true, median µs (min-max of run medians) | n |"
echo "|---|---|---|---|"
for mode in jail+seccomp no-jail no-seccomp none; do
  c=\$(awk -v m=\$mode '\$1 == m { print \$3 }' /tmp/raw | sort -n)
  e=\$(awk -v m=\$mode '\$1 == m { print \$5 }' /tmp/raw | sort -n)
  echo "| \$mode | \$(echo "\$c" | median) (\$(echo "\$c" | head -1)-\$(echo "\$c" | tail -1)) | \$(echo "\$e" | median) (\$(echo "\$e" | head -1)-\$(echo "\$e" | tail -1)) | \$(echo "\$c" | wc -l) |"
done
INSIDE
echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
CAPSULE_BIN=$capsule_bin exec "$target/debug/capsule-l1" -- sh "$out/inside.sh"
