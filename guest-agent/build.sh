#!/usr/bin/env bash
# Builds capsule-agent as a static binary for the guest (glibc, crt-static; no musl toolchain
# needed) and prints its path on stdout. The explicit --target keeps RUSTFLAGS off build scripts
# and uses its own target subdirectory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release --locked -p capsule-agent --target "$target" >&2
bin="$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/$target/release/capsule-agent"
if ! file "$bin" | grep -Eq 'statically linked|static-pie linked'; then
  echo "build.sh: $bin is not statically linked: $(file "$bin")" >&2
  exit 1
fi
echo "$bin"
