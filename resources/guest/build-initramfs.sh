#!/usr/bin/env bash
# Builds the guest initramfs (gzip'd newc cpio) from the host's Debian packages: busybox-static,
# bash, util-linux, fio, zbd-utils, btrfs-progs and a few coreutils, each with its shared libraries
# and the dynamic loader, plus this directory's /init and the static vmm-exit helper, and the
# guest kernel's modules when build-kernel.sh has put them beside OUTPUT (modules/).
# Beside it, hostroot.cpio.gz: busybox, vmm-exit and hostroot-init, the small initramfs that
# `vmm --host-root` boots to make the host's root file system the guest's.
# Rebuilt only when an input changed (the files here, a package version, the kernel).
# Usage: build-initramfs.sh [OUTPUT]   (default: <repo>/build/guest/initramfs.cpio.gz)
set -euo pipefail
me=build-initramfs
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
output=${1:-$repo/build/guest/initramfs.cpio.gz}
start=$SECONDS

say() { echo "$me: $*  [$((SECONDS - start))s]" >&2; }
die() { echo "$me: $*" >&2; exit 1; }

"$repo/resources/install-deps.sh" guest-initramfs || die "could not install the programs the guest needs (see the line above)"

packages=(busybox-static bash util-linux coreutils fio zbd-utils btrfs-progs libc6)
# Programs copied with their libraries; busybox provides every other command.
programs=(
  bash
  fio
  blkzone blkdiscard blockdev lsblk losetup
  zbd
  btrfs mkfs.btrfs
  dd stat truncate timeout sha256sum md5sum od
)

modules=$(dirname "$output")/modules
hostroot_output=$(dirname "$output")/hostroot.cpio.gz
inputs=$( {
  cat "${BASH_SOURCE[0]}" "$here/init" "$here/hostroot-init" "$here/hostroot-run" "$here/shares.sh" "$here/vmm-exit.c" \
    "$here/zone-ioctl.c" "$here/zoned-check"
  cat "$(dirname "$output")/kernel.key" 2>/dev/null || true
  dpkg-query -W -f='${Package} ${Version}\n' "${packages[@]}"
} | sha256sum | cut -c1-16)
stamp=$output.inputs
if [[ -f $output && -f $hostroot_output && -f $stamp && $(<"$stamp") == "$inputs" ]]; then
  say "up to date: $output ($(stat -c %s "$output") bytes), $hostroot_output"
  exit 0
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/vmm-initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT
say "staging in $stage"

# Debian 12's merged /usr layout, so ldd's paths (/lib64/ld-linux-x86-64.so.2) resolve.
mkdir -p "$stage"/usr/{bin,sbin,lib,lib64} "$stage"/{dev,proc,sys,tmp,run,root,etc,mnt}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$stage/$d"; done

copy_file() { # copy_file HOST_PATH: same path in the image, symlinks resolved
  local dir
  dir=$(readlink -f "$(dirname "$1")")
  mkdir -p "$stage$dir"
  [[ -e $stage$dir/$(basename "$1") ]] || cp -L "$1" "$stage$dir/$(basename "$1")"
}

# ldd lines: "libx.so.1 => /lib/.../libx.so.1 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
libraries_of() { ldd "$1" | sed -n -e 's/.*=> \(\/[^ ]*\) .*/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) (0x.*/\1/p'; }

# Debian's fio links the libraries of its ceph, gluster, rdma, nbd and pmem engines: ~80 MB with
# their dependencies, which would make the guest slow to boot. The guest uses none of those
# engines, so one stub library stands in for all of them. fio is linked with BIND_NOW, so the stub
# defines every function fio imports from them (under the same symbol versions); calling one
# aborts with a message.
fio_stubbed=(libgfapi.so.0 libnbd.so.0 libibverbs.so.1 librdmacm.so.1 librados.so.2 librbd.so.1 libpmemblk.so.1 libpmem.so.1)
# Path of a library by soname (awk reads all input: an early exit would SIGPIPE ldconfig).
library_path() { ldconfig -p | awk -v l="$1" '$1 == l && /x86-64/ && !p { p = $NF } END { print p }'; }
copy_fio() { # copy_fio PATH
  local fio=$1 src=$stage/.fio-stub kept=() lib
  mkdir -p "$src"
  while read -r lib; do
    [[ " ${fio_stubbed[*]} " == *" $lib "* ]] || kept+=("$lib")
  done < <(readelf -d "$fio" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
  # Versions fio needs from the stubbed libraries ("File:" then "Name:" lines of .gnu.version_r).
  readelf -V -W "$fio" | awk -v stubbed=" ${fio_stubbed[*]} " '
    /File:/ { file = $5 } /Name:/ && index(stubbed, " " file " ") { print $3 }' | sort -u >"$src/versions"
  # Unversioned imports are stubbed unless a kept library defines them.
  for lib in "${kept[@]}"; do
    nm -D --defined-only "$(library_path "$lib")"
  done | awk '{ sub(/@.*/, "", $3); print $3 }' | sort -u >"$src/defined"
  readelf --dyn-syms -W "$fio" | awk '$5 == "GLOBAL" && $7 == "UND" && $4 == "FUNC" { print $8 }' | sed 's/ (.*//' |
    while read -r sym; do
      name=${sym%%@*} version=${sym#*@}
      if [[ $sym == *@* ]]; then
        if grep -qxF "$version" "$src/versions"; then echo "$version $name"; fi
      elif ! grep -qxF "$name" "$src/defined"; then
        echo "- $name"
      fi
    done >"$src/symbols"
  {
    echo 'extern long write(int, const void *, unsigned long); extern void abort(void);'
    echo 'static void missing(const char *m, unsigned long n) { write(2, m, n); abort(); }'
    awk '{ m = "vmm guest: fio engine library function " $2 " is a stub\\n";
           printf "void %s(void) { missing(\"%s\", %d); }\n", $2, m, length(m) - 1 }' "$src/symbols"
  } >"$src/stub.c"
  awk '$1 != "-" { s[$1] = s[$1] " " $2 ";" } END { for (v in s) printf "%s { global:%s };\n", v, s[v] }' \
    "$src/symbols" >"$src/stub.map"
  # Versions fio needs but imports no function from still have to exist.
  while read -r v; do grep -q "^$v " "$src/stub.map" || echo "$v { };" >>"$src/stub.map"; done <"$src/versions"
  gcc -shared -fPIC -O2 -nostdlib -Wl,--version-script="$src/stub.map" -o "$src/stub.so" "$src/stub.c" -lc \
    || die "could not build the stub for fio's engine libraries"
  copy_file "$fio"
  for lib in "${fio_stubbed[@]}"; do install -m 0755 "$src/stub.so" "$stage/usr/lib/x86_64-linux-gnu/$lib"; done
  for lib in "${kept[@]}"; do
    lib=$(library_path "$lib")
    copy_file "$lib"
    while read -r dep; do copy_file "$dep"; done < <(libraries_of "$lib")
  done
  while read -r dep; do if [[ $dep == /lib64/ld-linux* ]]; then copy_file "$dep"; fi; done < <(libraries_of "$fio")
  rm -rf "$src"
}

for p in "${programs[@]}"; do
  path=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v "$p") || die "program '$p' not found after installing ${packages[*]}"
  if [[ $p == fio ]]; then copy_fio "$path"; continue; fi
  copy_file "$path"
  while read -r lib; do copy_file "$lib"; done < <(libraries_of "$path")
done

# glibc loads libgcc_s.so.1 itself when a thread is cancelled or unwinds (btrfs scrub cancels
# its workers); ldd does not list it.
lib=$(library_path libgcc_s.so.1)
[[ -n $lib ]] || die "libgcc_s.so.1 not found (package libgcc-s1)"
copy_file "$lib"

cp /bin/busybox "$stage/usr/bin/busybox"
while read -r applet; do
  [[ -e $stage/$applet || -L $stage/$applet ]] || ln -s /usr/bin/busybox "$stage/$applet"
done < <(/bin/busybox --list-full)

gcc -static -O2 -Wall -Wextra -o "$stage/usr/sbin/vmm-exit" "$here/vmm-exit.c" || die "could not compile vmm-exit.c"
install -m 0755 "$here/init" "$stage/init"
install -D -m 0644 "$here/shares.sh" "$stage/usr/lib/vmm/shares.sh"
# The kernel's modules (null_blk, scsi_debug), for `modprobe` in the guest.
if [[ -d $modules/lib/modules ]]; then
  cp -a "$modules/lib/modules" "$stage/usr/lib/modules"
fi
gcc -static -O2 -Wall -Wextra -o "$stage/usr/sbin/zone-ioctl" "$here/zone-ioctl.c" || die "could not compile zone-ioctl.c"
install -m 0755 "$here/zoned-check" "$stage/usr/bin/zoned-check"
echo 'root:x:0:0:root:/root:/usr/bin/bash' >"$stage/etc/passwd"
echo 'root:x:0:' >"$stage/etc/group"
echo vmm-guest >"$stage/etc/hostname"

mkdir -p "$(dirname "$output")"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet | gzip -6) >"$output.tmp" \
  || die "could not pack $output"
mv -f "$output.tmp" "$output"
say "built $output ($(stat -c %s "$output") bytes, $(du -sb "$stage" | cut -f1) bytes unpacked)"

# The host-root initramfs: only what mounts the host's root and runs the command there.
hostroot=$stage/hostroot
mkdir -p "$hostroot"/{bin,dev,proc,sys,newroot,usr/sbin,usr/lib/vmm}
cp /bin/busybox "$hostroot/bin/busybox"
for applet in $(/bin/busybox --list); do
  [[ -e $hostroot/bin/$applet ]] || ln -s busybox "$hostroot/bin/$applet"
done
cp "$stage/usr/sbin/vmm-exit" "$hostroot/usr/sbin/vmm-exit"
install -m 0644 "$here/shares.sh" "$hostroot/usr/lib/vmm/shares.sh"
install -m 0755 "$here/hostroot-init" "$hostroot/init"
install -m 0755 "$here/hostroot-run" "$hostroot/usr/lib/vmm/hostroot-run"
(cd "$hostroot" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet | gzip -6) \
  >"$hostroot_output.tmp" || die "could not pack $hostroot_output"
mv -f "$hostroot_output.tmp" "$hostroot_output"
echo "$inputs" >"$stamp"
say "built $hostroot_output ($(stat -c %s "$hostroot_output") bytes)"
