#!/usr/bin/env bash
# Installs virtiofsd, the virtio-fs file server behind `capsule create --share` and
# `--rootfs-dir` (one daemon per share, started by the VM's supervisor), from crates.io at the
# version pinned in scripts/virtiofsd.version, into a cache keyed by that version:
#   <cache>/virtiofsd/<version>/bin/virtiofsd
# with <cache> = $CAPSULE_CACHE, else $XDG_CACHE_HOME/capsule, else ~/.cache/capsule.
# The host library finds it there (after $CAPSULE_VIRTIOFSD, before PATH).
# A cache hit returns at once; concurrent callers wait for one build.
# Usage: scripts/install-virtiofsd.sh [--print-path]
# Needs Debian's libseccomp-dev and libcap-ng-dev (scripts/install-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(cat scripts/virtiofsd.version)
print_path=0
case "${1:-}" in
  --print-path) print_path=1 ;;
  "") ;;
  -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "install-virtiofsd: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac
say() { echo "install-virtiofsd: $*" >&2; }

cache_root=${CAPSULE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/capsule}
root=$cache_root/virtiofsd/$version
bin=$root/bin/virtiofsd
mkdir -p "$cache_root/virtiofsd"
exec 9>"$cache_root/virtiofsd/.lock"
flock 9

if [ ! -x "$bin" ]; then
  if [ "${CAPSULE_SKIP_DEPS:-0}" != 1 ]; then ./scripts/install-deps.sh >&2; fi
  say "building virtiofsd $version from crates.io (several minutes)"
  tmp=$root.tmp
  rm -rf "$tmp"
  cargo install virtiofsd --locked --version "$version" --root "$tmp" >&2
  "$tmp/bin/virtiofsd" --version >&2
  rm -rf "$root"
  mv "$tmp" "$root"
fi
if [ "$print_path" = 1 ]; then echo "$bin"; else say "$bin"; fi
