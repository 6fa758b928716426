#!/usr/bin/env bash
# Agent/CLI latency per backend (see bench/src/bin/agent_bench.rs). Needs the default guest
# (scripts/build-guest.sh). Usage: bench/agent.sh [--rpc-calls N] [--execs N] [--creates N]
set -euo pipefail
cd "$(dirname "$0")/.."
capsule_bin=$(./scripts/build-capsule.sh)
cargo build --release -q -p capsule-bench --bin agent-bench
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, kernel $(uname -r), KVM modules: $(ls /sys/module | grep -E '^kvm' | xargs)"
CAPSULE_BIN="$capsule_bin" exec "${CARGO_TARGET_DIR:-target}/release/agent-bench" "$@"
