#!/usr/bin/env bash
# Installs the Debian packages capsule needs to build, test and benchmark.
# Idempotent: packages already present are not reinstalled. Needs root (or sudo).
set -euo pipefail

packages=(
  # guest kernel build (guest-kernel-config/build.sh)
  linux-source-6.12 build-essential bc bison flex libelf-dev libssl-dev cpio kmod dwarves rsync
  # guests under software CPU (tier T2) and the QEMU backend
  qemu-system-x86
  # guest userland and image builders
  busybox-static e2fsprogs erofs-utils zstd
  # hand-testing the vsock Unix socket; the network benchmark's host end
  socat
  # VM networks: bridges and TAPs (ip), NAT and published ports (nft)
  iproute2 nftables
  # guest-kernel-config/build.sh keeps the kernel tree in git (pristine + series)
  git
  # the L1 test machine (scripts/build-l1.sh): its kernel is unpacked from an xz bzImage payload
  xz-utils file
  # virtiofsd, built from crates.io (scripts/install-virtiofsd.sh)
  libseccomp-dev libcap-ng-dev pkg-config
  # capsule as containerd's runtime: the shim tests drive Debian's containerd with ctr, pods
  # through its CRI plugin with CNI's bridge plugin; script(1) gives `ctr run -t` a terminal
  containerd containernetworking-plugins bsdutils
  # the CRI test's gRPC client (the k8s-cri crate) compiles the CRI protos with protoc
  protobuf-compiler
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# CNI's result cache, where containerd's CRI plugin writes (the L1 test machine mounts a tmpfs
# on it, since it sees the host's /var/lib read-only).
[ -d /var/lib/cni ] || { [ "$(id -u)" -eq 0 ] && mkdir -p /var/lib/cni; } || true

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
