#!/bin/sh
# `capsule create --backend kvm` with and without one --share, alternating, inside the L1
# machine: the cost a share adds to a create (virtiofsd, memfd-backed guest memory, the mount).
# Usage (from the repository root, after scripts/build-capsule.sh, build-guest.sh and
# install-virtiofsd.sh): target/debug/capsule-l1 -- sh bench/fs-create-l1.sh
# Prints "@@create MODE SECONDS" (the whole create) and "@@boot MODE agent answered N s" (the
# machine's own boot, after the daemons started).
export CAPSULE_STATE_DIR=/tmp/st CAPSULE_GUEST_DIR=${CAPSULE_GUEST_DIR:-$HOME/.cache/capsule/guest}
c=${CAPSULE_BIN:-$PWD/target/x86_64-unknown-linux-gnu/release/capsule}
mkdir -p /tmp/share
now() { cut -d' ' -f1 /proc/uptime; }
for i in 1 2 3 4 5; do
  for mode in plain share; do
    extra=; [ $mode = share ] && extra="--share /tmp/share:/srv"
    t0=$(now); $c create vm --backend kvm $extra >/dev/null 2>&1 || echo "create failed"; t1=$(now)
    echo "@@boot $mode $(grep -o 'agent answered [0-9.]* s' /tmp/st/vm/status.json)"
    $c rm --force vm >/dev/null
    echo "@@create $mode $(awk -v a=$t0 -v b=$t1 'BEGIN{printf "%.2f", b-a}')"
  done
done
