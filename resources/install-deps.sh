#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages a part of the project needs. Idempotent and quiet when
# everything is already there. Usage: install-deps.sh GROUP...
# (groups: build, guest-kernel, guest-initramfs, lab, bench, virtiofsd, host-tools)
# `virtiofsd` also builds the Rust virtiofsd from crates.io into /usr/local/bin when no virtiofsd
# (PATH, /usr/libexec) is there; `host-tools` are what a guest booted with `vmm --host-root` runs
# from the host for blktests' zbd group, and /lib/modules for the guest kernel's modules.
set -euo pipefail
declare -A groups=(
  [build]="build-essential pkg-config"
  # resources/guest/build-kernel.sh: Debian's 6.12 source plus what its build needs.
  [guest-kernel]="linux-source-6.12 build-essential bc flex bison libelf-dev libssl-dev cpio xz-utils kmod"
  # resources/guest/build-initramfs.sh: the programs copied into the guest, and gcc for vmm-exit.
  [guest-initramfs]="busybox-static bash util-linux coreutils fio zbd-utils btrfs-progs cpio gzip gcc libc6-dev"
  # resources/lab/run-in-lab: the outer VM (QEMU TCG) and its initramfs tools.
  [lab]="qemu-system-x86 busybox-static cpio gzip xz-utils"
  # resources/bench: the report's plots (PNG), and QEMU as the peer VMM in the lab.
  [bench]="python3 python3-matplotlib qemu-system-x86"
  # The Rust virtiofsd's build dependencies (cargo install virtiofsd, below).
  [virtiofsd]="libseccomp-dev libcap-ng-dev pkg-config"
  # blktests (./check zbd) on the host root: its helpers' build, and the programs its tests run.
  [host-tools]="make gcc libc6-dev fio util-linux kmod udev gawk dmsetup cryptsetup-bin xfsprogs f2fs-tools btrfs-progs"
)
has_virtiofsd() { command -v virtiofsd >/dev/null || [[ -x /usr/libexec/virtiofsd ]]; }
for g in "$@"; do
  if [[ $g == host-tools && ! -d /lib/modules ]]; then mkdir -p /lib/modules 2>/dev/null || sudo mkdir -p /lib/modules; fi
  # Only what is missing: with a virtiofsd there, neither its build dependencies nor a build.
  if [[ $g == virtiofsd ]] && has_virtiofsd; then set -- "${@/virtiofsd/}"; fi
done
build_virtiofsd=0
for g in "$@"; do [[ $g == virtiofsd ]] && build_virtiofsd=1; done
want=()
for g in "$@"; do
  [[ -n $g ]] || continue
  [[ -n "${groups[$g]:-}" ]] || { echo "install-deps: unknown group '$g'" >&2; exit 2; }
  for p in ${groups[$g]}; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || want+=("$p")
  done
done
sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
if ((${#want[@]})); then
  echo "install-deps: installing ${want[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq >/dev/null || { echo "install-deps: apt-get update failed; is a Debian package mirror reachable?" >&2; exit 1; }
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null \
    || { echo "install-deps: apt-get install ${want[*]} failed" >&2; exit 1; }
fi
if ((build_virtiofsd)); then
  # The maintained Rust virtiofsd (Debian 12 has no package of it): about a minute on 2 cores.
  echo "install-deps: building virtiofsd from crates.io into /usr/local/bin (cargo install virtiofsd)" >&2
  log=$(mktemp)
  "${sudo_cmd[@]}" env PATH="$PATH" cargo install --quiet --locked --root /usr/local virtiofsd >"$log" 2>&1 \
    || { echo "install-deps: cargo install virtiofsd failed; last lines:" >&2; tail -n 5 "$log" >&2; rm -f "$log"; exit 1; }
  rm -f "$log"
fi

