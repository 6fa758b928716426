#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test tier this machine can run.
# Tiers a machine cannot run are reported as skipped, with the reason, never as passed.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
./scripts/install-deps.sh

step "default guest: kernel (cached by input hash), static agent, initramfs"
./scripts/build-guest.sh

step "virtiofsd for the share tests (crates.io, pinned; cached by version)"
./scripts/install-virtiofsd.sh

step "L1 test machine (Debian's kernel with emulated SVM; cached by package version)"
./scripts/build-l1.sh

step "test tiers on this machine"
cargo run -q -p capsule-tests --bin capsule-tiers

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo nextest run --workspace --locked --no-fail-fast
