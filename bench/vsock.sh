#!/usr/bin/env bash
# vsock device throughput through its host path (mock driver, in-process guest memory, host side
# a real Unix socket), next to memcpy bandwidth and a bare Unix socket pair measured in the same
# run. Medians of VSOCK_BENCH_RUNS runs (default 5) per path.
# Usage: bench/vsock.sh [MiB per run, default 512]
# Knobs (see vsock/benches/throughput.rs): VSOCK_BENCH_DIR=h2g|g2h, VSOCK_BENCH_RUNS,
# VSOCK_BENCH_RX_BUF, VSOCK_BENCH_RX_POSTED, VSOCK_BENCH_PEER=splice, VSOCK_BENCH_PIN=0.
set -euo pipefail
cd "$(dirname "$0")/.."
VSOCK_BENCH_MIB="${1:-512}" cargo bench -p capsule-vsock --features test-utils --bench throughput
