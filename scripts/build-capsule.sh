#!/usr/bin/env bash
# Builds the release `capsule` binary the way it ships: statically linked (static-pie, glibc),
# and containerd's shim `containerd-shim-capsule-v2` next to it (it runs `capsule` from there).
# Static linking maps only the parts of libc capsule uses and no dynamic loader, which is most of
# the VMM's resident memory besides its own code (bench/RESULTS.md).
# Prints the binary's path. The explicit --target keeps crt-static off build scripts and
# proc-macros, which cannot be linked statically.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked -q \
  -p capsule-cli -p capsule-shim --target "$target" >&2
echo "${CARGO_TARGET_DIR:-$PWD/target}/$target/release/capsule"
