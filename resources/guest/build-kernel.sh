#!/usr/bin/env bash
# Builds the guest kernel: Debian's linux-source-6.12, `make tinyconfig` plus kernel.config (merged
# with the kernel's own merge_config.sh), x86_64 bzImage and vmlinux. The source, the object tree
# and the results are cached outside the clone, under ${XDG_CACHE_HOME:-~/.cache}/vmm/guest-kernel,
# keyed by the source package version and a hash of kernel.config and this script, so a second run
# only copies the cached result to build/guest/. The kernel's modules (null_blk, scsi_debug) and
# its modules.builtin go to build/guest/modules/lib/modules/RELEASE, as `make modules_install`
# lays them out, with depmod's indexes: `vmm --host-root` shows them to the guest there.
# Usage: build-kernel.sh [OUTPUT_DIR]   (default: <repo>/build/guest)
set -euo pipefail
me=build-kernel
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out_dir=${1:-$repo/build/guest}
fragment=$here/kernel.config
start=$SECONDS

say() { echo "$me: $*  [$((SECONDS - start))s]" >&2; }
die() { echo "$me: $*" >&2; exit 1; }

"$repo/resources/install-deps.sh" guest-kernel || die "could not install the kernel build dependencies (see the line above)"

version=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null) || die "linux-source-6.12 is not installed"
tarball=/usr/src/linux-source-6.12.tar.xz
[[ -r $tarball ]] || die "$tarball is missing although linux-source-6.12 is installed"
hash=$(cat "$fragment" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
key=$version-$hash

cache=${XDG_CACHE_HOME:-$HOME/.cache}/vmm/guest-kernel
src=$cache/src/$version          # extracted source, shared by every fragment
obj=$cache/obj/$version          # O= tree, reused so a fragment change rebuilds incrementally
result=$cache/out/$key           # bzImage, vmlinux, config of one (version, fragment, script)
mkdir -p "$cache" "$out_dir"

# One build at a time per cache (two clones may run `make guest` together).
exec 9>"$cache/lock"
flock 9

install_result() {
  for f in bzImage vmlinux config; do
    if ! cmp -s "$result/$f" "$out_dir/$f"; then
      cp "$result/$f" "$out_dir/$f.tmp" && mv -f "$out_dir/$f.tmp" "$out_dir/$f"
    fi
  done
  if [[ $(cat "$out_dir/kernel.key" 2>/dev/null) != "$key" || ! -d $out_dir/modules ]]; then
    rm -rf "$out_dir/modules.tmp" "$out_dir/modules"
    cp -a "$result/modules" "$out_dir/modules.tmp" && mv "$out_dir/modules.tmp" "$out_dir/modules"
  fi
  echo "$key" >"$out_dir/kernel.key"
}

if [[ -f $result/complete ]]; then
  install_result
  say "cached kernel $key -> $out_dir/bzImage ($(stat -c %s "$out_dir/bzImage") bytes)"
  exit 0
fi

if [[ ! -f $src/.extracted ]]; then
  say "extracting $tarball (linux-source-6.12 $version) into $src"
  rm -rf "$src" "$src.tmp"
  mkdir -p "$src.tmp"
  tar -xf "$tarball" -C "$src.tmp" --strip-components=1 || die "could not extract $tarball"
  touch "$src.tmp/.extracted"
  mv "$src.tmp" "$src"
fi

export ARCH=x86_64
mkdir -p "$obj"
log=$obj/build.log
: >"$log"
run_logged() { "$@" >>"$log" 2>&1 || die "'$*' failed; see $log"; }

say "configuring: tinyconfig + $(basename "$fragment")"
cd "$src"
run_logged make O="$obj" tinyconfig
# -n: resolve with allnoconfig, so options the fragment makes visible stay off unless asked for.
run_logged scripts/kconfig/merge_config.sh -n -O "$obj" "$obj/.config" "$fragment"

# merge_config drops options whose dependencies are missing with a mere warning: check each one.
missing=()
while IFS= read -r line; do
  [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]] || continue
  grep -qx -- "$line" "$obj/.config" || missing+=("${BASH_REMATCH[1]}")
done <"$fragment"
((${#missing[@]} == 0)) || die "options from $(basename "$fragment") not set in the final .config (missing dependencies?): ${missing[*]}"

jobs=$(nproc)
say "compiling bzImage, vmlinux and modules with -j$jobs (log: $log)"
build_start=$SECONDS
make O="$obj" -j"$jobs" bzImage vmlinux modules >>"$log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  for _ in {1..30}; do kill -0 "$pid" 2>/dev/null && sleep 1; done
  kill -0 "$pid" 2>/dev/null && say "still compiling ($(grep -c '^  CC' "$log") files compiled so far)"
done
wait "$pid" || die "kernel build failed after $((SECONDS - build_start))s; see $log"
build_time=$((SECONDS - build_start))

rm -rf "$result.tmp"
mkdir -p "$result.tmp"
cp "$obj/arch/x86/boot/bzImage" "$obj/vmlinux" "$result.tmp/"
# modules_install runs depmod, which writes modules.builtin.bin and friends: kmod's modprobe
# finds built-in drivers only through them.
run_logged make O="$obj" INSTALL_MOD_PATH="$result.tmp/modules" modules_install
release=$(cat "$obj/include/config/kernel.release")
[[ -f $result.tmp/modules/lib/modules/$release/modules.builtin.bin ]] \
  || die "modules_install left no modules.builtin.bin in $result.tmp/modules/lib/modules/$release; see $log"
rm -f "$result.tmp/modules/lib/modules/$release"/{build,source}
cp "$obj/.config" "$result.tmp/config"
echo "$build_time" >"$result.tmp/build-seconds"
touch "$result.tmp/complete"
rm -rf "$result"
mv "$result.tmp" "$result"
install_result
say "built kernel $key in ${build_time}s of compiling -> $out_dir/bzImage ($(stat -c %s "$out_dir/bzImage") bytes), $out_dir/vmlinux"
