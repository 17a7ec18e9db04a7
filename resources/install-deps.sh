#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages a part of the project needs. Idempotent and quiet when
# everything is already there. Usage: install-deps.sh GROUP...
# (groups: build, guest-kernel, guest-initramfs, lab, bench)
set -euo pipefail
declare -A groups=(
  [build]="build-essential pkg-config"
  # resources/guest/build-kernel.sh: Debian's 6.12 source plus what its build needs.
  [guest-kernel]="linux-source-6.12 build-essential bc flex bison libelf-dev libssl-dev cpio xz-utils"
  # resources/guest/build-initramfs.sh: the programs copied into the guest, and gcc for vmm-exit.
  [guest-initramfs]="busybox-static bash util-linux coreutils fio zbd-utils btrfs-progs cpio gzip gcc libc6-dev"
  # resources/lab/run-in-lab: the outer VM (QEMU TCG) and its initramfs tools.
  [lab]="qemu-system-x86 busybox-static cpio gzip xz-utils"
  # resources/bench: the report's plots (PNG), and QEMU as the peer VMM in the lab.
  [bench]="python3 python3-matplotlib qemu-system-x86"
)
want=()
for g in "$@"; do
  [[ -n "${groups[$g]:-}" ]] || { echo "install-deps: unknown group '$g'" >&2; exit 2; }
  for p in ${groups[$g]}; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || want+=("$p")
  done
done
((${#want[@]})) || exit 0
echo "install-deps: installing ${want[*]}" >&2
sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq >/dev/null || { echo "install-deps: apt-get update failed; is a Debian package mirror reachable?" >&2; exit 1; }
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null \
  || { echo "install-deps: apt-get install ${want[*]} failed" >&2; exit 1; }
