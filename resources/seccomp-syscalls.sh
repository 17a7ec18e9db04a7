#!/usr/bin/env bash
# seccomp-syscalls.sh: which system calls vmm's threads make once their seccomp filters are on,
# over the kinds of run the lab suite makes. Runs vmm under `strace -f` in the lab and prints, per
# thread kind (main, vCPU), every call made after that thread installed its filter, and any
# SIGSYS (a call the filter refused). Use it when device code starts to need a new call; the
# allow-lists are in vmm/src/host/seccomp.rs.
#
#   make guest build && resources/lab/run-in-lab --timeout 900 -- resources/seccomp-syscalls.sh
#
# Needs strace on the host (apt-get install strace). Exits 1 if any run trapped. The traces stay in
# build/seccomp-trace/RUN/t.TID (one file per thread).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VMM=$repo/target/release/vmm KERNEL=$repo/build/guest/bzImage INITRD=$repo/build/guest/initramfs.cpio.gz
command -v strace > /dev/null || { echo "seccomp-syscalls: strace is missing (apt-get install strace)" >&2; exit 2; }
out=$repo/build/seccomp-trace
rm -rf "$out"; mkdir -p "$out"
n=0

# traced NAME VMM-ARGS...: runs vmm under strace, one output file per thread under $out/NAME.
traced() {
    local name=$1; shift
    mkdir -p "$out/$name"
    local status=0
    strace -f -ff -qq -o "$out/$name/t" "$VMM" --kernel "$KERNEL" --initrd "$INITRD" "$@" \
        > "$out/$name.log" 2>&1 < /dev/null || status=$?
    echo "run $name: vmm exit status $status"
    grep -h "seccomp:" "$out/$name.log" || true
}

# The runs. Each covers a path of the lab suite.
traced boot --cpus 2 --boot-time -- true
traced zoned-check --memory 1G --zoned-disk tmp,size=512M,zone-size=16M,max-open=6,max-active=8 \
    -- zoned-check /dev/vda
truncate -s 64M "$out/plain.img"
traced plain-disk --disk "$out/plain.img" -- \
    'dd if=/dev/urandom of=/dev/vda bs=1M count=8 oflag=direct conv=fsync && dd if=/dev/vda of=/dev/null bs=1M'
traced panic --cmdline rdinit=/usr/bin/false -- true
traced reboot --discovery acpi -- 'reboot -f'
# SIGTERM while the guest runs.
mkdir -p "$out/sigterm"
strace -f -ff -qq -o "$out/sigterm/t" "$VMM" --kernel "$KERNEL" --initrd "$INITRD" -- \
    'echo ready; sleep 60' > "$out/sigterm.log" 2>&1 < /dev/null &
pid=$!
for _ in $(seq 300); do grep -q ready "$out/sigterm.log" && break; sleep 0.1; done
# strace's pid is $pid; vmm is its child.
kill -TERM "$(pgrep -P "$pid" | head -1)"
status=0; wait "$pid" || status=$?
echo "run sigterm: vmm exit status $status"
# A host zoned device (null_blk), if this kernel has it.
if [ -d /sys/kernel/config/nullb ]; then
    d=/sys/kernel/config/nullb/nullb1
    mkdir "$d"
    for kv in size=256 blocksize=512 zoned=1 zone_size=8 zone_nr_conv=1 memory_backed=1; do
        echo "${kv#*=}" > "$d/${kv%%=*}"
    done
    echo 1 > "$d/power"
    traced host-zoned --memory 1G --zoned-disk /dev/nullb1 -- zoned-check /dev/vda
else
    echo "run host-zoned: skipped (no null_blk here)"
fi

# Per thread: the calls after its seccomp() install. The main thread is the one that exec'd vmm,
# vCPU threads are the ones that call KVM_RUN.
for file in "$out"/*/t.*; do
    if grep -q "^execve(" "$file"; then kind=main
    elif grep -q "KVM_RUN" "$file"; then kind=vcpu
    else kind=other
    fi
    if grep -q "^seccomp(" "$file"; then
        sed -n '/^seccomp(/,$p' "$file" | sed 1d | grep -o '^[a-z_0-9]*(' | tr -d '(' \
            >> "$out/calls.$kind" || true
    fi
    if grep -q "^--- SIGSYS" "$file"; then
        echo "TRAPPED in ${file#"$out"/}: $(grep -B1 "^--- SIGSYS" "$file" | head -2 | tr '\n' ' ')"
        n=$((n + 1))
    fi
done
for kind in main vcpu other; do
    echo "$kind: $(sort -u "$out/calls.$kind" 2> /dev/null | tr '\n' ' ')"
done
exit $((n > 0))
