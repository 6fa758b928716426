#!/usr/bin/env bash
# Fuzzes the vsock device's packet and descriptor-chain path (vsock/fuzz, target `packets`),
# installing what it needs first: a nightly toolchain (cargo-fuzz builds with sanitizers) and
# cargo-fuzz itself. Not part of the test suite; the suite runs a seeded property test of the
# same harness instead.
# Usage: scripts/fuzz.sh [seconds, default 300]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
case "$seconds" in
  '' | *[!0-9]*) echo "fuzz.sh: seconds must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "==> installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
echo "==> fuzzing vsock packets for ${seconds}s (findings land in vsock/fuzz/artifacts/)"
cd vsock
exec cargo +nightly fuzz run packets -- -max_total_time="$seconds" -rss_limit_mb=4096
