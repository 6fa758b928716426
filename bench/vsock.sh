#!/usr/bin/env bash
# vsock device throughput through its host path (mock driver, in-process guest memory, host side
# a real Unix socket), next to memcpy bandwidth measured in the same run.
# Usage: bench/vsock.sh [MiB per direction, default 1024]
set -euo pipefail
cd "$(dirname "$0")/.."
VSOCK_BENCH_MIB="${1:-1024}" cargo bench -p capsule-vsock --features test-utils --bench throughput
