//! The guest runs the host's own programs: `--host-root` (the host's `/` over virtio-fs),
//! `--share` and `--rwdir`, each served by a virtiofsd that vmm starts; and what goes wrong with
//! them is a one-line error and a non-zero exit, never a hang.
//!
//! In the lab the "host" is the outer VM, whose own root is the real host's over virtio-fs. The
//! Rust virtiofsd, re-exporting that FUSE mount, now and then fails lookups there (ESTALE, EBADF;
//! not seen on a local file system), so the host-root tests use QEMU's C virtiofsd
//! (`VMM_VIRTIOFSD`); the shares of local (tmpfs) directories use the default, the Rust one.

use vmm_tests::{run_script_in_lab, shell_quote, value_of, LabRun};

/// QEMU's virtiofsd on Debian 12, for shares of the lab's FUSE root (see the module doc).
const QEMU_VIRTIOFSD: &str = "VMM_VIRTIOFSD=/usr/lib/qemu/virtiofsd";

fn assert_status(run: &LabRun, key: &str, expected: &str) {
    assert_eq!(value_of(run, key), expected, "{}", run.describe());
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn host_root_runs_the_command_in_the_callers_directory_with_its_path_and_status() {
    // No --initrd: --host-root boots the project's host-root initramfs.
    let command = "echo debian=$(cat /etc/debian_version) pwd=$(pwd) \
         path_has_marker=$(case :$PATH: in *:/vmm-marker:*) echo yes;; *) echo no;; esac); \
         echo root_ro=$(touch /usr/vmm-probe 2>/dev/null && echo no || echo yes); \
         echo tmp_writable=$(touch /tmp/x && echo yes); \
         echo modules=$(ls /lib/modules/$(uname -r)/kernel/drivers/block/null_blk/); \
         modprobe null_blk nr_devices=1 && echo nullb=$(ls /dev/nullb0); \
         echo procsub=$(cat <(echo ok)); \
         echo from-guest > out/written; exit 7";
    let script = format!(
        r#"cd "$(dirname "$KERNEL")/../.."
mkdir -p build/host-root-test/out && cd build/host-root-test
rm -f out/written
status=0
PATH=$PATH:/vmm-marker {QEMU_VIRTIOFSD} "$VMM" --kernel "$KERNEL" --host-root --rwdir out -- {} || status=$?
echo vmm_status=$status
echo host_sees=$(cat out/written)
"#,
        shell_quote(command)
    );
    let run = run_script_in_lab(300, &script);
    assert_status(&run, "vmm_status", "7");
    assert!(
        run.stdout.contains("debian=12"),
        "the host's files are not the guest's root\n{}",
        run.describe()
    );
    assert!(
        value_of(&run, "pwd").ends_with("/build/host-root-test"),
        "{}",
        run.describe()
    );
    assert_status(&run, "path_has_marker", "yes");
    assert_status(&run, "root_ro", "yes");
    assert_status(&run, "tmp_writable", "yes");
    assert_status(&run, "modules", "null_blk.ko");
    assert_status(&run, "nullb", "/dev/nullb0");
    assert_status(&run, "procsub", "ok");
    assert_status(&run, "host_sees", "from-guest");
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn shares_are_mounted_writable_or_read_only_where_asked() {
    // The project's initramfs root (no --host-root), two shares of one tmpfs directory.
    let command = "echo content=$(cat /mnt/rw/file) ro_content=$(cat /mnt/ro/file); \
         echo new >/mnt/rw/new && echo rw_write=ok; \
         echo x >/mnt/ro/x 2>/dev/null && echo ro_write=allowed || echo ro_write=refused";
    let script = format!(
        r#"mkdir -p /tmp/share && echo hello >/tmp/share/file
"$VMM" --kernel "$KERNEL" --share /tmp/share:/mnt/rw --share /tmp/share:/mnt/ro,ro -- {}
echo host_new=$(cat /tmp/share/new) host_x=$(ls /tmp/share/x 2>/dev/null || echo none)
"#,
        shell_quote(command)
    );
    let run = run_script_in_lab(300, &script);
    assert_eq!(run.status, Some(0), "{}", run.describe());
    assert_status(&run, "content", "hello");
    assert_status(&run, "ro_content", "hello");
    assert_status(&run, "rw_write", "ok");
    assert_status(&run, "ro_write", "refused");
    assert_status(&run, "host_new", "new");
    assert_status(&run, "host_x", "none");
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn a_virtiofsd_that_dies_mid_run_stops_vmm_with_a_message() {
    // The guest kills every virtiofsd through a marker file the host side watches: the guest
    // itself cannot reach host processes, so a watcher on the lab side does it once the guest
    // has written the marker into the share.
    let command = "echo started >/mnt/s/marker; sleep 120; echo still-running";
    let script = format!(
        r#"mkdir -p /tmp/s
( while [ ! -e /tmp/s/marker ]; do sleep 0.2; done; pkill -KILL -x virtiofsd ) &
status=0
timeout 100 "$VMM" --kernel "$KERNEL" --share /tmp/s:/mnt/s -- {} 2>/tmp/err || status=$?
echo vmm_status=$status
cat /tmp/err
"#,
        shell_quote(command)
    );
    let run = run_script_in_lab(300, &script);
    assert_status(&run, "vmm_status", "1");
    assert!(
        run.stdout.contains("virtiofsd) closed its connection"),
        "{}",
        run.describe()
    );
    assert!(!run.stdout.contains("still-running"), "{}", run.describe());
}
