#!/usr/bin/env bash
# virtio-net device throughput through its host path (mock driver, in-process guest memory, a
# real TAP the bench creates in a network namespace of its own), next to a plain read/write
# loop on the same TAP, in the same run: packets/s and Gbit/s for 64-byte and 64 KiB frames,
# guest-to-TAP (tx) and TAP-to-guest (rx). Needs root (the namespace and the TAP).
# Usage: bench/net.sh [--seconds S per figure, default 2] [--runs N, median of, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, kernel $(uname -r)"
exec cargo bench -p capsule-vmm --bench virtio_net -- "$@"
