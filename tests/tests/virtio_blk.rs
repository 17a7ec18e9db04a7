//! Plain virtio-blk disks over the virtio-mmio transport, seen from real guests booted by our VMM
//! in the lab: sizes, order and serials (GET_ID) through command-line discovery; fio's verified
//! writes at queue depth 1 and 32; data surviving into the next boot and matching the host file;
//! read-only disks; and Debian's prebuilt cloud kernel finding the disk through ACPI alone.
//! Run by `make lab-test`.
//!
//! Each test runs one bash script in the lab (run_script_in_lab), so the disk images live in the
//! lab's fresh /tmp and several VMM runs can share them. Guests print what they see as KEY=VALUE
//! words, and the tests assert on those values.

use vmm_tests::{cloud_guest, run_script_in_lab, shell_quote, value_of, LabRun};

/// One VMM run of the project's guest in a lab script: `"$VMM" --kernel ... ARGS -- COMMAND`.
fn vmm(args: &str, guest_command: &str) -> String {
    format!(
        r#""$VMM" --kernel "$KERNEL" --initrd "$INITRD" {args} -- {}"#,
        shell_quote(guest_command)
    )
}

/// The guest command that lists the virtio-blk disks: `disks=vda,vdb`.
const LIST_DISKS: &str = r#"echo disks=$(cd /sys/block && echo vd* | tr " " ,)"#;

fn assert_ok(run: &LabRun) {
    assert_eq!(run.status, Some(0), "{}", run.describe());
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn cmdline_disk_has_the_file_size_and_the_given_serial() {
    let guest = format!(
        "{LIST_DISKS}; echo cmdline_devices=$(grep -o virtio_mmio.device= /proc/cmdline | wc -l); \
         echo size=$(cat /sys/block/vda/size) serial=$(cat /sys/block/vda/serial) \
         ro=$(cat /sys/block/vda/ro)"
    );
    let run = run_script_in_lab(
        300,
        &format!(
            "truncate -s 300M /tmp/disk.img\n{}",
            vmm(
                "--disk /tmp/disk.img,serial=vmm-test-serial --discovery cmdline",
                &guest
            )
        ),
    );
    assert_ok(&run);
    assert_eq!(value_of(&run, "disks"), "vda", "{}", run.describe());
    assert_eq!(value_of(&run, "cmdline_devices"), "1", "{}", run.describe());
    // 300 MiB in 512-byte sectors.
    assert_eq!(value_of(&run, "size"), "614400", "{}", run.describe());
    assert_eq!(
        value_of(&run, "serial"),
        "vmm-test-serial",
        "{}",
        run.describe()
    );
    assert_eq!(value_of(&run, "ro"), "0", "{}", run.describe());
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn two_cmdline_disks_appear_in_order_with_their_sizes_and_serials() {
    let guest =
        format!("{LIST_DISKS}; for d in vda vdb; do echo $d=$(cat /sys/block/$d/size),$(cat /sys/block/$d/serial); done");
    let run = run_script_in_lab(
        300,
        &format!(
            "truncate -s 300M /tmp/first.img\ntruncate -s 64M /tmp/second.img\n{}",
            vmm(
                "--disk /tmp/first.img,serial=first --disk /tmp/second.img,serial=second \
                 --discovery cmdline",
                &guest
            )
        ),
    );
    assert_ok(&run);
    assert_eq!(value_of(&run, "disks"), "vda,vdb", "{}", run.describe());
    assert_eq!(value_of(&run, "vda"), "614400,first", "{}", run.describe());
    assert_eq!(value_of(&run, "vdb"), "131072,second", "{}", run.describe());
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn discovery_both_gives_the_project_kernel_exactly_one_disk() {
    // The project kernel has no ACPI, so it finds the disk on the command line only; what matters
    // is that `both` does not make it appear twice.
    let guest = format!("{LIST_DISKS}; echo size=$(cat /sys/block/vda/size)");
    let run = run_script_in_lab(
        300,
        &format!(
            "truncate -s 300M /tmp/disk.img\n{}",
            vmm("--disk /tmp/disk.img --discovery both", &guest)
        ),
    );
    assert_ok(&run);
    assert_eq!(value_of(&run, "disks"), "vda", "{}", run.describe());
    assert_eq!(value_of(&run, "size"), "614400", "{}", run.describe());
}

/// fio jobs of the verify test: name, pattern, queue depth, engine.
const FIO_JOBS: [(&str, &str, u32, &str); 3] = [
    ("seq-qd1-io_uring", "write", 1, "io_uring"),
    ("rand-qd32-io_uring", "randwrite", 32, "io_uring"),
    ("rand-qd32-libaio", "randwrite", 32, "libaio"),
];

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn fio_writes_and_verifies_256_mib_at_queue_depth_1_and_32() {
    // Each job writes a 256 MiB region (from 32 MiB on, so offsets are not all small) with
    // O_DIRECT, then reads it all back and checks every block's crc32c. The lab is TCG-emulated:
    // at bs=4k, QD1 ran at ~3.6 MB/s there (~150 s for write plus verify of 256 MiB), at bs=128k
    // at ~40 MB/s (~15 s), so the jobs use 128 KiB blocks and keep the full region.
    let jobs: Vec<String> = FIO_JOBS
        .iter()
        .map(|(name, pattern, depth, engine)| {
            format!(
                "fio --name={name} --filename=/dev/vda --offset=32M --size=256M --bs=128k \
                 --rw={pattern} --iodepth={depth} --ioengine={engine} --direct=1 \
                 --verify=crc32c --do_verify=1 --verify_fatal=1; echo fio_status_{name}=$?"
            )
        })
        .collect();
    let run = run_script_in_lab(
        600,
        &format!(
            "truncate -s 300M /tmp/disk.img\n{}",
            vmm("--disk /tmp/disk.img --discovery cmdline", &jobs.join("\n"))
        ),
    );
    assert_ok(&run);
    for (name, ..) in FIO_JOBS {
        assert_eq!(
            value_of(&run, &format!("fio_status_{name}")),
            "0",
            "{}",
            run.describe()
        );
        assert!(
            run.stdout
                .contains(&format!("{name}: (groupid=0, jobs=1): err= 0:")),
            "fio job {name} reported an error\n{}",
            run.describe()
        );
    }
    // The figures, for `--nocapture`: absolute lab numbers only compare within one lab run.
    for line in run.stdout.lines() {
        if line.contains("(groupid=")
            || line.trim_start().starts_with("WRITE: ")
            || line.trim_start().starts_with("READ: ")
        {
            println!("{}", line.trim_end());
        }
    }
    // Every job wrote and verified (read) the whole region: fio's group summaries.
    for direction in ["WRITE", "READ"] {
        let full = run
            .stdout
            .lines()
            .filter(|line| line.trim_start().starts_with(&format!("{direction}: ")))
            .filter(|line| line.contains("io=256MiB"))
            .count();
        assert_eq!(
            full,
            FIO_JOBS.len(),
            "expected {} {direction} summaries of 256 MiB\n{}",
            FIO_JOBS.len(),
            run.describe()
        );
    }
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn data_written_in_one_boot_is_read_back_in_the_next_and_is_in_the_file() {
    // 32 MiB of random data from 64 KiB block 1601 (100 MiB + 64 KiB) on: an offset that is not a
    // power of two catches sector/byte mix-ups, and the blocks just before and after must stay
    // zero. (64 KiB blocks: at 4 KiB, dd's 8192 O_DIRECT requests per pass took ~30 s in the lab.)
    const FIRST: u32 = 1601;
    const COUNT: u32 = 512;
    let region = format!("bs=64k skip={FIRST} count={COUNT}");
    let write = format!(
        "dd if=/dev/urandom of=/tmp/data bs=1M count=32 status=none && \
         dd if=/tmp/data of=/dev/vda bs=64k seek={FIRST} oflag=direct conv=notrunc status=none && \
         echo written=$(md5sum </tmp/data | cut -d\" \" -f1) && \
         echo boot1=$(dd if=/dev/vda {region} iflag=direct status=none | md5sum | cut -d\" \" -f1)"
    );
    let read = format!(
        "echo boot2=$(dd if=/dev/vda {region} iflag=direct status=none | md5sum | cut -d\" \" -f1)"
    );
    let script = format!(
        r#"truncate -s 300M /tmp/disk.img
{}
{}
sum() {{ md5sum | cut -d" " -f1; }}
echo host=$(dd if=/tmp/disk.img {region} status=none | sum)
echo zeros=$(head -c 32M /dev/zero | sum)
echo zero_block=$(head -c 64K /dev/zero | sum)
echo before=$(dd if=/tmp/disk.img bs=64k skip={} count=1 status=none | sum)
echo after=$(dd if=/tmp/disk.img bs=64k skip={} count=1 status=none | sum)
"#,
        vmm("--disk /tmp/disk.img --discovery cmdline", &write),
        vmm("--disk /tmp/disk.img --discovery cmdline", &read),
        FIRST - 1,
        FIRST + COUNT,
    );
    let run = run_script_in_lab(300, &script);
    assert_ok(&run);
    let written = value_of(&run, "written");
    assert_ne!(written, value_of(&run, "zeros"), "{}", run.describe());
    for seen in ["boot1", "boot2", "host"] {
        assert_eq!(
            value_of(&run, seen),
            written,
            "{seen} differs from what was written\n{}",
            run.describe()
        );
    }
    let zero_block = value_of(&run, "zero_block");
    for neighbour in ["before", "after"] {
        assert_eq!(
            value_of(&run, neighbour),
            zero_block,
            "the block {neighbour} the region was written\n{}",
            run.describe()
        );
    }
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn read_only_disk_refuses_writes_and_the_file_is_unchanged() {
    let guest = "echo ro=$(cat /sys/block/vda/ro); \
         echo first_block=$(dd if=/dev/vda bs=4k count=1 iflag=direct status=none | md5sum | cut -d\" \" -f1); \
         if dd if=/dev/zero of=/dev/vda bs=4k count=1 oflag=direct conv=notrunc; \
         then echo write=succeeded; else echo write=failed; fi";
    let script = format!(
        r#"head -c 4M /dev/urandom >/tmp/disk.img
truncate -s 64M /tmp/disk.img
echo file_before=$(md5sum </tmp/disk.img | cut -d" " -f1)
echo host_first_block=$(head -c 4096 /tmp/disk.img | md5sum | cut -d" " -f1)
{}
echo file_after=$(md5sum </tmp/disk.img | cut -d" " -f1)
"#,
        vmm("--disk /tmp/disk.img,ro --discovery cmdline", guest)
    );
    let run = run_script_in_lab(300, &script);
    assert_ok(&run);
    assert_eq!(value_of(&run, "ro"), "1", "{}", run.describe());
    assert_eq!(value_of(&run, "write"), "failed", "{}", run.describe());
    assert_eq!(
        value_of(&run, "first_block"),
        value_of(&run, "host_first_block"),
        "the guest reads the file's data\n{}",
        run.describe()
    );
    assert_eq!(
        value_of(&run, "file_after"),
        value_of(&run, "file_before"),
        "{}",
        run.describe()
    );
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn host_block_device_backs_a_disk_with_its_size_and_data() {
    // A memory-backed null_blk device made through configfs (the lab loads null_blk with no
    // devices and mounts configfs): the size comes from the block device, not from file metadata,
    // and what the guest writes is on the device afterwards.
    let guest = "echo size=$(cat /sys/block/vda/size); \
         fio --name=blockdev-verify --filename=/dev/vda --size=64M --bs=128k --rw=randwrite \
         --iodepth=16 --ioengine=io_uring --direct=1 --verify=crc32c --verify_fatal=1 \
         | grep -E \"err=|READ:|WRITE:\"; echo fio_status=$?; \
         dd if=/dev/urandom of=/tmp/data bs=64k count=16 status=none; \
         dd if=/tmp/data of=/dev/vda bs=64k seek=2001 oflag=direct status=none; \
         echo written=$(md5sum </tmp/data | cut -d\" \" -f1)";
    let script = format!(
        r#"nullb=/sys/kernel/config/nullb/vmmtest
mkdir "$nullb"
echo 256 >"$nullb/size"
echo 1 >"$nullb/memory_backed"
echo 1 >"$nullb/power"
# Recent kernels name the disk after the configfs item, older ones nullbINDEX.
dev=/dev/vmmtest
[[ -b $dev ]] || dev=/dev/nullb$(cat "$nullb/index")
echo host_bytes=$(blockdev --getsize64 "$dev")
{}
echo on_device=$(dd if="$dev" bs=64k skip=2001 count=16 iflag=direct status=none | md5sum | cut -d" " -f1)
"#,
        vmm("--disk \"$dev\" --discovery cmdline", guest)
    );
    let run = run_script_in_lab(300, &script);
    assert_ok(&run);
    assert_eq!(
        value_of(&run, "host_bytes"),
        "268435456",
        "{}",
        run.describe()
    );
    assert_eq!(value_of(&run, "size"), "524288", "{}", run.describe());
    assert_eq!(value_of(&run, "fio_status"), "0", "{}", run.describe());
    assert!(
        run.stdout
            .contains("blockdev-verify: (groupid=0, jobs=1): err= 0:"),
        "{}",
        run.describe()
    );
    assert_eq!(
        value_of(&run, "on_device"),
        value_of(&run, "written"),
        "{}",
        run.describe()
    );
}

/// Boots Debian's cloud kernel with `vmm_args` (disks, discovery). The guest loads the virtio
/// modules, waits up to 5 s for the disks `expected` (`vda,vdb`) to appear, prints what it sees
/// about vda, runs `then` and exits with 5, so the script's `status=` shows whether vmm-exit works
/// under this kernel.
fn run_cloud_kernel(vmm_args: &str, expected: &str, then: &str) -> LabRun {
    let cloud = cloud_guest();
    let guest = format!(
        "busybox insmod /lib/modules/vmm/virtio_mmio.ko || exit 90; \
         busybox insmod /lib/modules/vmm/virtio_blk.ko || exit 91; \
         disks() {{ (cd /sys/block && echo vd* | tr \" \" ,); }}; \
         for i in $(seq 50); do [ \"$(disks)\" = {expected} ] && break; sleep 0.1; done; \
         echo kernel=$(uname -r) cmdline_devices=$(grep -o virtio_mmio.device= /proc/cmdline | wc -l); \
         echo disks=$(disks) size=$(cat /sys/block/vda/size) \
         serial=$(cat /sys/block/vda/serial) sysfs=$(readlink -f /sys/block/vda); \
         {then}
         exit 5"
    );
    let script = format!(
        r#"truncate -s 300M /tmp/disk.img
truncate -s 64M /tmp/second.img
set +e
"$VMM" --kernel {} --initrd {} {vmm_args} -- {}
echo status=$?
"#,
        shell_quote(&cloud.kernel.to_string_lossy()),
        shell_quote(&cloud.initrd.to_string_lossy()),
        shell_quote(&guest)
    );
    run_script_in_lab(300, &script)
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn debian_cloud_kernel_finds_two_disks_through_acpi_alone_and_verifies_data() {
    // Two DSDT devices (each its own window and IRQ), the second read-only; Debian's own
    // virtio_blk driver then writes and verifies 64 MiB on the first.
    let run = run_cloud_kernel(
        "--disk /tmp/disk.img,serial=cloud-disk --disk /tmp/second.img,ro,serial=second \
         --discovery acpi",
        "vda,vdb",
        "echo vdb=$(cat /sys/block/vdb/size),$(cat /sys/block/vdb/serial),ro$(cat /sys/block/vdb/ro) \
         vdb_sysfs=$(readlink -f /sys/block/vdb); \
         fio --name=cloud-verify --filename=/dev/vda --size=64M --bs=128k --rw=randwrite \
         --iodepth=16 --ioengine=io_uring --direct=1 --verify=crc32c --verify_fatal=1 \
         | grep -E \"err=|READ:|WRITE:\"; echo fio_status=$?;",
    );
    assert_ok(&run);
    // The guest's own status came back through vmm-exit (ioperm + outb) under this kernel too.
    assert_eq!(value_of(&run, "status"), "5", "{}", run.describe());
    assert!(
        value_of(&run, "kernel").ends_with("-cloud-amd64"),
        "{}",
        run.describe()
    );
    assert_eq!(value_of(&run, "cmdline_devices"), "0", "{}", run.describe());
    assert_eq!(value_of(&run, "disks"), "vda,vdb", "{}", run.describe());
    assert_eq!(value_of(&run, "size"), "614400", "{}", run.describe());
    assert_eq!(value_of(&run, "serial"), "cloud-disk", "{}", run.describe());
    assert_eq!(
        value_of(&run, "vdb"),
        "131072,second,ro1",
        "{}",
        run.describe()
    );
    // Both under ACPI platform devices (_HID LNRO0005), in the order given, not command-line ones.
    assert!(
        value_of(&run, "sysfs").contains("/LNRO0005:00/"),
        "{}",
        run.describe()
    );
    assert!(
        value_of(&run, "vdb_sysfs").contains("/LNRO0005:01/"),
        "{}",
        run.describe()
    );
    assert_eq!(value_of(&run, "fio_status"), "0", "{}", run.describe());
    assert!(
        run.stdout
            .contains("cloud-verify: (groupid=0, jobs=1): err= 0:"),
        "{}",
        run.describe()
    );
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn debian_cloud_kernel_with_discovery_both_sees_one_disk() {
    let run = run_cloud_kernel(
        "--disk /tmp/disk.img,serial=cloud-disk --discovery both",
        "vda",
        "",
    );
    assert_ok(&run);
    assert_eq!(value_of(&run, "status"), "5", "{}", run.describe());
    assert_eq!(value_of(&run, "cmdline_devices"), "1", "{}", run.describe());
    assert_eq!(value_of(&run, "disks"), "vda", "{}", run.describe());
    assert_eq!(value_of(&run, "size"), "614400", "{}", run.describe());
}
