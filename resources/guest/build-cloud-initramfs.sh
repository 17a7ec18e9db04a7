#!/usr/bin/env bash
# build-cloud-initramfs: a guest built around Debian's prebuilt 6.12 cloud kernel, the kernel many
# users boot. That kernel has CONFIG_VIRTIO_MMIO=m and no CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so it
# finds virtio-mmio disks only through ACPI and only once virtio_mmio.ko and virtio_blk.ko are
# loaded (both have no dependencies: virtio and virtio_ring are built in).
#
#   build-cloud-initramfs.sh       prints "kernel PATH" and "initrd PATH"
#
# - kernel: the cloud kernel the lab already runs as its outer kernel, taken from the lab's cache
#   (${XDG_CACHE_HOME:-~/.cache}/vmm/lab/linux-image-6.12.*-cloud-amd64-unsigned-VERSION/vmlinuz,
#   newest VERSION). The lab downloads it on first use: run any resources/lab/run-in-lab command
#   first.
# - the two modules: the lab's cache keeps only the modules the outer VM needs, so this downloads
#   the same package version once (apt-get download) and keeps the two modules, decompressed, in
#   ${XDG_CACHE_HOME:-~/.cache}/vmm/cloud-guest/PACKAGE-VERSION/.
# - initrd: build/cloud-guest/initramfs.cpio.gz, the project's initramfs (`make guest-initramfs`)
#   followed by a second gzip'd cpio holding /lib/modules/vmm/{virtio_mmio,virtio_blk}.ko (Linux
#   unpacks concatenated archives in order). The guest command loads them with
#   `busybox insmod /lib/modules/vmm/virtio_mmio.ko` and the same for virtio_blk.ko.
set -euo pipefail
me=build-cloud-initramfs
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
die() { echo "$me: $*" >&2; exit 1; }

cache=${XDG_CACHE_HOME:-$HOME/.cache}/vmm
kernel_dir=$(printf "%s\n" "$cache"/lab/linux-image-6.12.*-cloud-amd64-unsigned-* | grep -v '\.tmp$' | sort -V | tail -n1 || true)
[[ -n $kernel_dir && -f $kernel_dir/complete && -f $kernel_dir/vmlinuz ]] \
  || die "no cloud kernel in the lab's cache ($cache/lab): run any resources/lab/run-in-lab command first, it downloads the kernel"
project_initrd=$repo/build/guest/initramfs.cpio.gz
[[ -f $project_initrd ]] || die "no $project_initrd: run \`make guest\`"

# The lab's directory is named PACKAGE-VERSION, the package being linux-image-*-unsigned.
name=${kernel_dir##*/}
package=${name%%-unsigned-*}-unsigned
version=${name#"$package"-}
modules=$cache/cloud-guest/$name
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [[ ! -f $modules/complete ]]; then
  (cd "$tmp" && apt-get download -q "$package=$version" >/dev/null 2>&1) \
    || die "apt-get download $package=$version failed; is a Debian package mirror reachable?"
  dpkg-deb -x "$tmp"/*.deb "$tmp/x" || die "could not unpack $package"
  mkdir -p "$modules.tmp"
  for m in virtio_mmio virtio_blk; do
    ko=$(find "$tmp/x/lib/modules" -name "$m.ko.xz" | head -n1)
    [[ -n $ko ]] || die "$package has no $m module"
    xz -dc "$ko" >"$modules.tmp/$m.ko"
  done
  touch "$modules.tmp/complete"
  rm -rf "$modules" && mv "$modules.tmp" "$modules"
fi

out=$repo/build/cloud-guest
mkdir -p "$out"
stage=$tmp/stage
mkdir -p "$stage/lib/modules/vmm"
cp "$modules"/virtio_mmio.ko "$modules"/virtio_blk.ko "$stage/lib/modules/vmm/"
{
  cat "$project_initrd"
  (cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --quiet | gzip -1)
} >"$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
echo "kernel $kernel_dir/vmlinuz"
echo "initrd $out/initramfs.cpio.gz"
