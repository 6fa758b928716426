#!/usr/bin/env bash
# Start-up benchmark (bench/src/bin/startup_bench.rs): capsule's VMM vs QEMU microvm, time from
# spawn to the first KVM_RUN, to the guest's first serial byte and to its init.
#   host: the tiny idle test guest (here /dev/kvm may be kvm-pvm: QEMU gets its default CPU)
#   L1:   the real guest kernel + initramfs inside an L1 machine (QEMU TCG with emulated AMD SVM,
#         -smp 1; Debian's kernel with kvm_amd), QEMU with -accel kvm -cpu host. L1 figures are
#         relative: they are measured on an emulated CPU.
# Usage: bench/startup.sh [--runs N] [--host-only|--l1-only]
# Needs: an unpacked linux-image-amd64 package in $L1_DEB (default /tmp/l1deb/x; fetch with
# `apt-get download linux-image-amd64-...` and `dpkg-deb -x`), the default guest in
# ~/.cache/capsule/guest (scripts/build-guest.sh), busybox-static and qemu-system-x86.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
runs=10; mode=both
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --host-only) mode=host; shift ;;
    --l1-only) mode=l1; shift ;;
    *) echo "startup.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
capsule_bin=$(./scripts/build-capsule.sh)
cargo build -q -p capsule-bench --bin startup-bench
bench=${CARGO_TARGET_DIR:-$repo/target}/debug/startup-bench
guest=${CAPSULE_GUEST_DIR:-$HOME/.cache/capsule/guest}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, kernel $(uname -r), KVM modules: $(ls /sys/module | grep -E '^kvm' | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "qemu: $(qemu-system-x86_64 --version | head -1)"

if [ $mode != l1 ]; then
  echo "== host, tiny guest"
  cpu=none; [ -e /sys/module/kvm_pvm ] || cpu=host
  nice -n 10 "$bench" --capsule "$capsule_bin" --runs "$runs" --qemu-cpu $cpu
fi
[ $mode = host ] && exit 0

echo "== L1, real guest kernel"
deb=${L1_DEB:-/tmp/l1deb/x}
release=$(ls "$deb/lib/modules")
work=${L1_WORK:-/tmp/capsule-startup-l1}
rm -rf "$work"; mkdir -p "$work"/{modroot/lib,root/bin,root/etc,root/lib/modules,out,files}
for d in dev proc sys host out tmp; do mkdir -p "$work/root/$d"; done
cp -a "$deb/lib/modules" "$work/modroot/lib/"
depmod -b "$work/modroot" "$release"
: > "$work/root/etc/modules.order"
for m in virtio_pci 9pnet_virtio 9p irqbypass ccp kvm kvm_amd; do
  modprobe -d "$work/modroot" -S "$release" --show-depends $m | awk '$1=="insmod"{print $2}' |
    while read -r ko; do
      n=$(basename "$ko"); grep -qx "$n" "$work/root/etc/modules.order" && continue
      cp "$ko" "$work/root/lib/modules/"; echo "$n" >> "$work/root/etc/modules.order"
    done
done
cp "$(command -v busybox)" "$work/root/bin/busybox"
ln -sf busybox "$work/root/bin/sh"
cp "$capsule_bin" "$bench" "$guest/vmlinux" "$guest/initramfs.cpio" "$work/files/"
cat > "$work/root/init" <<'INIT'
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/usr/sbin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
ln -s /proc/self/fd /dev/fd
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose host /host
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none out /out
# The host's libraries and QEMU, read-only; the benchmarked files are copied to tmpfs.
ln -s /host/usr /usr; ln -s /host/lib64 /lib64; ln -s /host/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu
cp /host$(cat /etc/files)/* /tmp/
echo "L1: $(uname -r), $(grep -c processor /proc/cpuinfo) CPU, KVM: $(ls /sys/module | grep -E '^kvm' | xargs)" > /out/result.txt
/tmp/startup-bench --capsule /tmp/capsule --kernel /tmp/vmlinux --initrd /tmp/initramfs.cpio \
  --cmdline quiet --runs "$(cat /etc/runs)" --timeout 120 >> /out/result.txt 2>/out/bench.err
poweroff -f
INIT
chmod +x "$work/root/init"
echo "$work/files" > "$work/root/etc/files"; echo "$runs" > "$work/root/etc/runs"
(cd "$work/root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) > "$work/initramfs.cpio"
# no_timer_check: the L1 kernel's own IO-APIC timer check fails now and then under a loaded TCG.
nice -n 10 timeout 3600 qemu-system-x86_64 -accel tcg -cpu qemu64,+svm,+npt -smp 1 -m 2048 \
  -nographic -no-reboot -nic none -kernel "$deb/boot/vmlinuz-$release" -initrd "$work/initramfs.cpio" \
  -append 'console=ttyS0 quiet no_timer_check' \
  -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on \
  -virtfs "local,path=$work/out,mount_tag=out,security_model=none" > "$work/l1-console.log" 2>&1
cat "$work/out/result.txt"
