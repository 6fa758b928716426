#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test tier this machine can run.
# Tiers a machine cannot run are reported as skipped, with the reason, never as passed.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
./scripts/install-deps.sh

step "guest kernel (guest-kernel-config/build.sh: a cache hit unless its inputs changed)"
./guest-kernel-config/build.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo nextest run --workspace --locked --no-fail-fast
