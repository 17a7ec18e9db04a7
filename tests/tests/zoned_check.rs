//! The guest's conformance suite (resources/guest/zoned-check) passes on our zoned disk with
//! several geometries, and fails where it must: on a disk that is not zoned. Run by
//! `make lab-test`.

use vmm_tests::{run_script_in_lab, LabRun};

fn summary(run: &LabRun) -> &str {
    run.stdout
        .lines()
        .rfind(|l| l.contains("zoned-check:") && l.contains("passed"))
        .unwrap_or_else(|| panic!("no zoned-check summary\n{}", run.describe()))
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn zoned_check_passes_on_file_backed_zoned_disks() {
    let run = run_script_in_lab(
        900,
        r#"
        set +e
        for options in size=1G,zone-size=16M,conventional-zones=2,max-open=6,max-active=8 \
                       size=600M,zone-size=16M,zone-capacity=12M \
                       size=700M,zone-size=8M,max-active=10; do
            "$VMM" --kernel "$KERNEL" --initrd "$INITRD" --memory 1G --zoned-disk /tmp/check.img,$options -- zoned-check /dev/vda
            echo "geometry $options: status $?"
            rm -f /tmp/check.img
        done
        "#,
    );
    assert_eq!(run.status, Some(0), "{}", run.describe());
    for geometry in [
        "size=1G,zone-size=16M,conventional-zones=2,max-open=6,max-active=8",
        "size=600M,zone-size=16M,zone-capacity=12M",
        "size=700M,zone-size=8M,max-active=10",
    ] {
        assert!(
            run.stdout
                .contains(&format!("geometry {geometry}: status 0")),
            "{geometry}\n{}",
            run.describe()
        );
    }
    assert!(!run.stdout.contains("FAIL"), "{}", run.describe());
    // The limits, the boundary write, fio and btrfs really ran on the first geometry.
    for check in [
        "PASS open-limit",
        "PASS active-limit",
        "PASS boundary-write",
        "PASS fio-seq-qd128-none",
        "PASS btrfs-zone-append",
    ] {
        assert!(run.stdout.contains(check), "{check}\n{}", run.describe());
    }
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn zoned_check_fails_on_a_disk_that_is_not_zoned() {
    let run = run_script_in_lab(
        300,
        r#"
        truncate -s 64M /tmp/plain.img
        set +e
        "$VMM" --kernel "$KERNEL" --initrd "$INITRD" --disk /tmp/plain.img -- zoned-check --quick /dev/vda
        echo "status $?"
        "#,
    );
    assert!(
        run.stdout.contains("FAIL zoned-model"),
        "{}",
        run.describe()
    );
    assert!(run.stdout.contains("status 1"), "{}", run.describe());
    assert!(summary(&run).contains("1 failed"), "{}", run.describe());
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn zoned_check_passes_on_null_blk_through_the_host_device_backend() {
    // The outer VM of the lab is the only place with a real zoned block device: null_blk made
    // through configfs (memory_backed so that writes are kept), passed through to the guest.
    let run = run_script_in_lab(
        900,
        r#"
        nullb() {
            local d=/sys/kernel/config/nullb/$1; shift
            mkdir "$d"
            while [ $# -gt 0 ]; do echo "$2" > "$d/$1"; shift 2; done
            echo 1 > "$d/power"
        }
        nullb nullb1 size 1024 blocksize 512 zoned 1 zone_size 16 zone_nr_conv 2 zone_max_open 6 zone_max_active 8 memory_backed 1
        nullb nullb2 size 768 blocksize 512 zoned 1 zone_size 16 zone_capacity 12 memory_backed 1
        set +e
        for dev in /dev/nullb1 /dev/nullb2; do
            "$VMM" --kernel "$KERNEL" --initrd "$INITRD" --memory 1G --zoned-disk $dev -- zoned-check /dev/vda
            echo "device $dev: status $?"
        done
        "#,
    );
    assert_eq!(run.status, Some(0), "{}", run.describe());
    assert!(
        run.stdout.contains("device /dev/nullb1: status 0"),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout.contains("device /dev/nullb2: status 0"),
        "{}",
        run.describe()
    );
    assert!(!run.stdout.contains("FAIL"), "{}", run.describe());
    for check in [
        "PASS open-limit",
        "PASS active-limit",
        "PASS boundary-write",
        "PASS fio-rand-qd128-none",
        "PASS btrfs-zone-append",
    ] {
        assert!(run.stdout.contains(check), "{check}\n{}", run.describe());
    }
}
