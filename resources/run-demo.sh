#!/usr/bin/env bash
# make run: boots the project's guest with our VMM and a fresh zoned disk, and shows what the guest
# sees: the zoned queue attributes, the zone report, and the conformance suite zoned-check. Runs
# through resources/lab/run-in-lab, which uses the host's KVM directly where it can boot Linux and
# the nested lab otherwise.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
image=build/run/zoned.img
options=${VMM_RUN_ZONED:-size=1G,zone-size=64M,max-open=8,max-active=12}
mkdir -p build/run
rm -f "$image"
echo "run: fresh zoned disk $image ($options)" >&2
guest='
cd /sys/block/vda/queue
echo "== /dev/vda: zoned=$(cat zoned) zone_sectors=$(cat chunk_sectors) nr_zones=$(cat nr_zones) max_open=$(cat max_open_zones) max_active=$(cat max_active_zones) zone_append_max_bytes=$(cat zone_append_max_bytes)"
echo "== blkzone report (first 4 zones)"
blkzone report -c 4 /dev/vda
echo "== zoned-check /dev/vda (the conformance suite)"
zoned-check /dev/vda
'
exec resources/lab/run-in-lab --timeout 900 -- target/release/vmm --kernel build/guest/bzImage \
    --initrd build/guest/initramfs.cpio.gz --memory 1G --zoned-disk "$image,$options" --boot-time -- "$guest"
