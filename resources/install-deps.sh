#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages a part of the project needs. Idempotent and quiet when
# everything is already there. Usage: install-deps.sh GROUP...   (groups: build)
set -euo pipefail
declare -A groups=(
  [build]="build-essential pkg-config"
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
