#!/usr/bin/env bash
# Builds capsule's guest kernel: Debian's linux-source-6.12 + patches/ + config.fragment.
#
# Usage: build.sh [--print-path] [--jobs N] [--force]
#   --print-path  build when needed, then print only the result directory on stdout
#                 (progress goes to stderr); the directory holds vmlinux, bzImage, config
#   --jobs N      parallel make jobs (default 2; the build runs under nice -n 10)
#   --force       rebuild even when the cache holds a result for this input
#
# Result: ~/.cache/capsule/kernel/<key>/{vmlinux,bzImage,config}, plus include/ (the uapi headers
# of this kernel) and kselftest/ (the kernel's own selftest sources that the integration tests
# build: pidfd, mount API, their helpers), key = sha256 of the source
# package version, the fragment, every patch, the uapi header copy, this script and the compiler
# version. An unchanged input is a cache hit and returns at once.
# Work tree (kept for fast incremental rebuilds): ~/.cache/capsule/kernel-work/.
# CAPSULE_CACHE=DIR puts both under DIR instead of ~/.cache/capsule (XDG_CACHE_HOME is honoured).
set -euo pipefail
# The whole script is one compound command, so bash reads it all before running it and an edit
# to this file during a build cannot derail that build.
{

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache_root=${CAPSULE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/capsule}
src_pkg=linux-source-6.12
src_tar=/usr/src/linux-source-6.12.tar.xz
fragment=$here/config.fragment
header_copy=$here/include/uapi/linux/container.h

print_path=0
force=0
jobs=2
while [ $# -gt 0 ]; do
  case "$1" in
    --print-path) print_path=1 ;;
    --force) force=1 ;;
    --jobs) jobs=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

step_no=0
step() { step_no=$((step_no + 1)); printf '[kernel %d] %s\n' "$step_no" "$*" >&2; }
fail() { printf 'build.sh: FAILED at step "%s": %s\n' "$current_step" "$*" >&2; exit 1; }
begin() { current_step=$1; step "$1"; }
current_step=start

src_version() { dpkg-query -W -f='${Status} ${Version}\n' "$src_pkg" 2>/dev/null |
  awk '$3 == "installed" { print $4 }'; }

version=$(src_version || true)
if [ -z "$version" ] || [ ! -f "$src_tar" ]; then
  begin "install $src_pkg and build dependencies"
  "$repo/scripts/install-deps.sh" >&2 || fail "scripts/install-deps.sh failed"
  version=$(src_version)
  [ -n "$version" ] && [ -f "$src_tar" ] || fail "$src_pkg is still not installed"
fi

mapfile -t patches < <(find "$here/patches" -maxdepth 1 -name '*.patch' | LC_ALL=C sort)

# The cache key: everything that decides the output.
key=$( {
  echo "source $src_pkg $version"
  echo "compiler $(gcc --version | head -n 1)"
  echo "fragment"; cat "$fragment"
  echo "header"; cat "$header_copy"
  echo "script"; cat "$0"
  for p in "${patches[@]}"; do echo "patch $(basename "$p")"; cat "$p"; done
} | sha256sum | cut -c1-64)
out=$cache_root/kernel/$key

cache_hit() {
  if [ "$force" = 0 ] && [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ] && [ -f "$out/config" ]; then
    if [ "$print_path" = 1 ]; then echo "$out"; else echo "kernel: cache hit: $out" >&2; fi
    exit 0
  fi
}
cache_hit

work=$cache_root/kernel-work
src=$work/src-$version
obj=$work/obj-$version
mkdir -p "$work"
exec 9>"$work/lock"
if ! flock -n 9; then
  echo "build.sh: another kernel build holds $work/lock; waiting" >&2
  flock 9
  # The build we waited for may have been this one.
  cache_hit
fi

begin "dependencies"
"$repo/scripts/install-deps.sh" >&2 || fail "scripts/install-deps.sh failed"

git_src() { git -C "$src" -c user.name=capsule -c user.email=capsule@localhost \
  -c gc.auto=0 -c core.autocrlf=false "$@"; }

if ! git_src rev-parse -q --verify "refs/tags/pristine" >/dev/null 2>&1; then
  begin "extract $src_tar (one time, about 2 minutes)"
  rm -rf "$src" "$src.tmp"
  mkdir -p "$src.tmp"
  tar -C "$src.tmp" --strip-components=1 -xf "$src_tar" || fail "tar failed"
  mv "$src.tmp" "$src"
  git_src init -q
  git_src add -f -A . || fail "git add of the pristine tree failed"
  git_src commit -q -m "$src_pkg $version (pristine)" || fail "git commit failed"
  git_src tag pristine
fi

# Apply the series to the pristine tree in a scratch index, then check the result out: files
# the series did not change keep their timestamps, so rebuilds stay incremental, and the tree is
# exactly pristine + patches.
begin "apply ${#patches[@]} patches"
index=$work/index.tmp
rm -f "$index"
GIT_INDEX_FILE=$index git_src read-tree pristine
for p in "${patches[@]}"; do
  name=$(basename "$p")
  current_step="apply $name"
  GIT_INDEX_FILE=$index git_src apply --cached --whitespace=nowarn "$p" 2>"$work/apply.log" ||
    { cat "$work/apply.log" >&2; fail "patch $name does not apply"; }
done
tree=$(GIT_INDEX_FILE=$index git_src write-tree)
rm -f "$index"
commit=$(git_src commit-tree -p pristine -m "capsule series $key" "$tree")
git_src checkout -q -f --detach "$commit" || fail "git checkout failed"
git_src clean -q -ffdx

begin "check the uapi header copy"
if [ -f "$src/include/uapi/linux/container.h" ]; then
  cmp -s "$src/include/uapi/linux/container.h" "$header_copy" ||
    fail "guest-kernel-config/include/uapi/linux/container.h differs from the one the patches install"
else
  fail "the patches do not install include/uapi/linux/container.h"
fi

begin "configure (allnoconfig + config.fragment)"
mkdir -p "$obj"
kmake() { nice -n 10 make -C "$src" O="$obj" ARCH=x86_64 "$@"; }
kmake KCONFIG_ALLCONFIG="$fragment" allnoconfig >"$work/config.log" 2>&1 ||
  { tail -n 30 "$work/config.log" >&2; fail "make allnoconfig failed"; }
missing=0
while IFS= read -r line; do
  case "$line" in
    "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}; want= ;;
    CONFIG_*=n) opt=${line%%=*}; want= ;;
    CONFIG_*=*) opt=${line%%=*}; want=$line ;;
    *) continue ;;
  esac
  have=$(grep -m 1 "^$opt=" "$obj/.config" || true)
  if [ "$have" != "$want" ]; then
    echo "  config.fragment: wants '${want:-$opt unset}', got '${have:-unset}'" >&2
    missing=1
  fi
done < "$fragment"
[ "$missing" = 0 ] || fail "options of config.fragment did not survive (unmet dependencies)"

begin "make -j$jobs vmlinux bzImage headers (log: $work/make.log)"
start=$(date +%s)
set +e
kmake -j"$jobs" vmlinux bzImage headers 2>&1 | tee "$work/make.log" | awk '
  / CC | LD | AR | AS /{ n++; if (n % 250 == 0) { printf "  ... %d objects built\n", n > "/dev/stderr"; fflush() } }
  /error:|Error [0-9]/ { print "  " $0 > "/dev/stderr" }'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" != 0 ]; then
  grep -n -m 20 -E 'error:|Error [0-9]' "$work/make.log" >&2 || tail -n 30 "$work/make.log" >&2
  fail "kernel build failed (full log: $work/make.log)"
fi
echo "  built in $(( $(date +%s) - start )) s" >&2

begin "store in $out"
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
cp "$obj/vmlinux" "$out.tmp/vmlinux"
cp "$obj/arch/x86/boot/bzImage" "$out.tmp/bzImage"
cp "$obj/.config" "$out.tmp/config"
cp -r "$obj/usr/include" "$out.tmp/include"
ksrc=$src/tools/testing/selftests
mkdir -p "$out.tmp/kselftest/filesystems"
cp "$ksrc/kselftest.h" "$ksrc/kselftest_harness.h" "$out.tmp/kselftest/"
cp -r "$ksrc/pidfd" "$ksrc/clone3" "$ksrc/mount_setattr" "$ksrc/move_mount_set_group" \
  "$out.tmp/kselftest/"
cp -r "$ksrc/filesystems/statmount" "$out.tmp/kselftest/filesystems/"
echo "$version" >"$out.tmp/source-version"
rm -rf "$out"
mv "$out.tmp" "$out"
if [ "$print_path" = 1 ]; then echo "$out"; else echo "kernel: built $out" >&2; fi
exit 0
}
