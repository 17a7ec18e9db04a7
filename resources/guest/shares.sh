# Sourced by the guest's /init (init and hostroot-init; busybox sh only). Mounts what vmm shares
# over virtio-fs (docs/guest-interface.md): vmm.shares64=BASE64 on the kernel command line holds
# one "TAG ro|rw GUEST_PATH" line per `--share`/`--rwdir`.

# param NAME: the value of NAME=... on the kernel command line; fails if it is not there or
# empty. Shell builtins only: every process the init starts before the command costs boot time.
param() {
	local line word
	read -r line </proc/cmdline
	set -f
	for word in $line; do
		case $word in "$1="?*)
			set +f
			echo "${word#*=}"
			return 0
			;;
		esac
	done
	set +f
	return 1
}

# param64 NAME: param NAME, base64-decoded.
param64() {
	local value
	value=$(param "$1") || return 1
	echo "$value" | busybox base64 -d
}

# mount_shares ROOT: mounts each share at ROOT/GUEST_PATH; prints why and fails if one cannot be.
mount_shares() {
	local root=$1 lines tag mode path options
	lines=$(param64 vmm.shares64) || return 0
	while read -r tag mode path; do
		[ -n "$tag" ] || continue
		options=rw
		[ "$mode" = ro ] && options=ro
		if [ ! -d "$root$path" ] && ! busybox mkdir -p "$root$path" 2>/dev/null; then
			echo "vmm-init: cannot create the mount point $path for a share (the host root is read-only): share it at an existing directory, or one under /tmp, /run or /var/tmp"
			return 1
		fi
		if ! busybox mount -t virtiofs -o "$options" "$tag" "$root$path"; then
			echo "vmm-init: cannot mount the share $path (virtio-fs tag $tag)"
			return 1
		fi
	done <<-END
	$lines
	END
}
