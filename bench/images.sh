#!/usr/bin/env bash
# Image build benchmark: `capsule image build` on a ~200 MiB tree, from a directory (ext4 and
# erofs) and from an OCI image layout (one gzip layer), against plain `mkfs.ext4 -d` on the same
# tree as the baseline. Prints time and MiB/s of input data for each.
# Usage: bench/images.sh [--mib N] [--runs N] [--dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

mib=200
runs=3
base=/var/tmp
while [ $# -gt 0 ]; do
  case "$1" in
    --mib) mib=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --dir) base=$2; shift 2 ;;
    *) echo "usage: $0 [--mib N] [--runs N] [--dir DIR]" >&2; exit 2 ;;
  esac
done

./scripts/install-deps.sh >/dev/null
cargo build --release -q -p capsule-cli --bin capsule
capsule=$PWD/target/release/capsule

work=$(mktemp -d "$base/capsule-images-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, kernel $(uname -r)"
echo "disk: $(df -h "$work" | awk 'NR==2 {print $1 " (" $2 ", " $5 " used)"}'), $(findmnt -no FSTYPE -T "$work")"
echo "tools: e2fsprogs $(dpkg-query -W -f='${Version}' e2fsprogs), erofs-utils $(dpkg-query -W -f='${Version}' erofs-utils)"

# The tree: 80 % of the data in 128 KiB files, 20 % in 4 KiB files, over 10 directories,
# with a few symlinks.
tree=$work/tree
per_big=$((mib * 8 / 10 * 1048576 / 10))
per_small=$((mib * 2 / 10 * 1048576 / 10))
for d in $(seq 0 9); do
  mkdir -p "$tree/d$d/sub"
  head -c "$per_big" /dev/urandom | split -b 128K -a 4 - "$tree/d$d/big_"
  head -c "$per_small" /dev/urandom | split -b 4K -a 5 - "$tree/d$d/sub/small_"
  for j in $(seq 0 9); do ln -s "../big_aaaa" "$tree/d$d/sub/link$j"; done
done
data=$(du -sb --apparent-size "$tree" | cut -f1)
files=$(find "$tree" -type f | wc -l)
echo "tree: $(awk "BEGIN {printf \"%.1f\", $data / 1048576}") MiB in $files files"

# An OCI layout of the same tree, one gzip layer.
oci=$work/oci
mkdir -p "$oci/blobs/sha256"
tar -C "$tree" --sort=name -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -1 -c "$work/layer.tar" > "$work/layer.tar.gz"
rm "$work/layer.tar"
layer=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar.gz")
mv "$work/layer.tar.gz" "$oci/blobs/sha256/$layer"
config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]}}"
printf '%s' "$config" > "$work/config"
config_digest=$(sha256sum "$work/config" | cut -d' ' -f1)
mv "$work/config" "$oci/blobs/sha256/$config_digest"
manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_digest\",\"size\":${#config}},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer\",\"size\":$layer_size}]}"
printf '%s' "$manifest" > "$work/manifest"
manifest_digest=$(sha256sum "$work/manifest" | cut -d' ' -f1)
mv "$work/manifest" "$oci/blobs/sha256/$manifest_digest"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"platform":{"architecture":"amd64","os":"linux"}}]}' \
  "$manifest_digest" "${#manifest}" > "$oci/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$oci/oci-layout"
echo "oci layout: one gzip layer of $(awk "BEGIN {printf \"%.1f\", $layer_size / 1048576}") MiB"

measure() { # name, command...
  local name=$1; shift
  local best=""
  for _ in $(seq "$runs"); do
    rm -f "$work"/out*
    sync
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
    t1=$(date +%s.%N)
    local s
    s=$(awk "BEGIN {print $t1 - $t0}")
    if [ -z "$best" ] || awk "BEGIN {exit !($s < $best)}"; then best=$s; fi
  done
  local size
  size=$(stat -c %s "$(ls "$work"/out* | grep -v sha256 | head -1)")
  printf '%-44s %7.2f s %8.1f MiB/s   image %6.1f MiB\n' "$name" "$best" \
    "$(awk "BEGIN {print $data / 1048576 / $best}")" "$(awk "BEGIN {print $size / 1048576}")"
}

mkfs_baseline() {
  truncate -s $(((mib * 3 / 2 + 64) << 20)) "$work/out.ext4"
  mkfs.ext4 -q -F -b 4096 -d "$tree" "$work/out.ext4"
}

echo "best of $runs runs; MiB/s = input data / wall time"
measure "mkfs.ext4 -d (baseline, no staging/pinning)" mkfs_baseline
measure "capsule image build --from-dir (ext4)" "$capsule" image build --from-dir "$tree" -o "$work/out.ext4"
measure "capsule image build --from-dir (erofs)" "$capsule" image build --from-dir "$tree" --format erofs -o "$work/out.erofs"
measure "capsule image build --from-oci gzip (ext4)" "$capsule" image build --from-oci "$oci" -o "$work/out.ext4"
# Staging creates every file once on the host; where file creation is slow (a busy virtual
# disk), staging on tmpfs shows what the builder itself costs.
if [ -d /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt $(((mib * 2) << 10)) ]; then
  measure "  same, staging in /dev/shm (TMPDIR)" env TMPDIR=/dev/shm "$capsule" image build --from-oci "$oci" -o "$work/out.ext4"
  measure "capsule image build --from-dir (ext4), TMPDIR=/dev/shm" env TMPDIR=/dev/shm "$capsule" image build --from-dir "$tree" -o "$work/out.ext4"
fi
a=$("$capsule" image build --from-oci "$oci" -o "$work/det1.ext4" 2>/dev/null | cut -d' ' -f1)
b=$("$capsule" image build --from-oci "$oci" -o "$work/det2.ext4" 2>/dev/null | cut -d' ' -f1)
if [ "$a" = "$b" ]; then echo "determinism: two builds from the OCI layout are identical ($a)"; else echo "determinism: builds DIFFER ($a vs $b)"; fi
