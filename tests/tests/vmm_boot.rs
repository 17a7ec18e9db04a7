//! Our VMM boots the project's kernel in the lab and exits with the guest command's status: with
//! the bzImage and the ELF vmlinux (PVH), with 1 and 2 vCPUs. Run by `make lab-test`.

use vmm_tests::{run_script_in_lab, run_vmm};

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn command_status_becomes_the_vmm_exit_status() {
    let run = run_vmm(&[], "echo from-the-guest; exit 7");
    assert_eq!(run.status, Some(7), "{}", run.describe());
    assert!(run.stdout.contains("from-the-guest"), "{}", run.describe());
    assert!(
        run.stdout.contains("vmm-init: userspace reached"),
        "{}",
        run.describe()
    );
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn true_exits_0_and_false_exits_1() {
    let run = run_script_in_lab(
        300,
        r#"
        "$VMM" --kernel "$KERNEL" --initrd "$INITRD" -- true > /tmp/true.out
        echo "true: $?"
        set +e
        "$VMM" --kernel "$KERNEL" --initrd "$INITRD" -- false > /tmp/false.out
        echo "false: $?"
        "$VMM" --kernel "$KERNEL" --initrd "$INITRD" -- 'exit 255' > /tmp/255.out
        echo "255: $?"
        "#,
    );
    assert_eq!(run.status, Some(0), "{}", run.describe());
    for line in ["true: 0", "false: 1", "255: 255"] {
        assert!(
            run.stdout.contains(line),
            "expected {line:?}\n{}",
            run.describe()
        );
    }
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn guest_sees_two_cpus() {
    let run = run_vmm(
        &["--cpus", "2"],
        "echo cpus=$(nproc) online=$(cat /sys/devices/system/cpu/online)",
    );
    assert_eq!(run.status, Some(0), "{}", run.describe());
    assert!(
        run.stdout.contains("cpus=2 online=0-1"),
        "{}",
        run.describe()
    );
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn elf_vmlinux_boots_through_pvh() {
    let run = run_script_in_lab(
        300,
        r#"
        set +e
        "$VMM" --kernel "$VMLINUX" --initrd "$INITRD" --boot-time -- 'echo pvh-kernel $(uname -r); exit 3'
        echo "status: $?"
        "#,
    );
    assert!(run.stdout.contains("pvh-kernel 6.12"), "{}", run.describe());
    assert!(run.stdout.contains("status: 3"), "{}", run.describe());
    assert!(
        run.stderr.contains("vmm: boot time: first KVM_RUN"),
        "{}",
        run.describe()
    );
    assert!(
        !run.stderr.contains("guest userspace never"),
        "{}",
        run.describe()
    );
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn sigterm_stops_the_guest_with_status_143() {
    let run = run_script_in_lab(
        300,
        r#"
        "$VMM" --kernel "$KERNEL" --initrd "$INITRD" -- 'echo guest-sleeping; sleep 600' > /tmp/out 2> /tmp/err &
        pid=$!
        for _ in $(seq 600); do grep -q guest-sleeping /tmp/out && break; sleep 0.1; done
        kill -TERM $pid
        set +e
        wait $pid
        echo "status: $?"
        cat /tmp/err
        "#,
    );
    assert!(run.stdout.contains("status: 143"), "{}", run.describe());
    assert!(
        run.stdout.contains("vmm: stopped by signal 15"),
        "{}",
        run.describe()
    );
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn host_stdin_reaches_the_guest_shell() {
    // No command: the guest starts an interactive shell on the console, fed from vmm's stdin.
    let run = run_script_in_lab(
        300,
        r#"
        set +e
        printf 'echo typed-$((6 * 7))\nexit 5\n' | "$VMM" --kernel "$KERNEL" --initrd "$INITRD"
        echo "status: $?"
        "#,
    );
    assert!(run.stdout.contains("typed-42"), "{}", run.describe());
    assert!(run.stdout.contains("status: 5"), "{}", run.describe());
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn a_panicking_kernel_fails_in_run_mode_and_ends_cleanly_otherwise() {
    // init exits at once, the kernel panics and reboots (panic=-1): no command status arrives.
    let run = run_script_in_lab(
        300,
        r#"
        set +e
        "$VMM" --kernel "$KERNEL" --initrd "$INITRD" --cmdline rdinit=/usr/bin/false -- true 2> /tmp/err > /tmp/out
        echo "run mode: $?"
        cat /tmp/err
        grep -c "Kernel panic" /tmp/out
        "$VMM" --kernel "$KERNEL" --initrd "$INITRD" --cmdline rdinit=/usr/bin/false > /dev/null 2>&1
        echo "plain boot: $?"
        "#,
    );
    assert_eq!(run.status, Some(0), "{}", run.describe());
    assert!(run.stdout.contains("run mode: 1"), "{}", run.describe());
    assert!(
        run.stdout
            .contains("without reporting the command's status"),
        "{}",
        run.describe()
    );
    assert!(run.stdout.contains("plain boot: 0"), "{}", run.describe());
}

/// SIGUSR1 prints the device state and the guest runs on: the disk is activated (DRIVER_OK)
/// and every request it queued was taken (next_avail == avail.idx).
#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn sigusr1_dumps_device_state_and_the_guest_runs_on() {
    let run = run_script_in_lab(
        300,
        r#"
        truncate -s 64M /tmp/dump.img
        "$VMM" --kernel "$KERNEL" --initrd "$INITRD" --disk /tmp/dump.img -- \
            'cat /sys/block/vda/size >/dev/null; echo ready; sleep 3; echo still-running' \
            >/tmp/dump.out 2>/tmp/dump.err &
        pid=$!
        for _ in $(seq 600); do grep -q ready /tmp/dump.out 2>/dev/null && break; sleep 0.1; done
        kill -USR1 $pid
        wait $pid
        echo "vmm-status: $?"
        cat /tmp/dump.out
        cat /tmp/dump.err
        "#,
    );
    assert_eq!(run.status, Some(0), "{}", run.describe());
    run.assert_lines(&["vmm-status: 0", "still-running"]);
    let serial = run
        .stdout
        .lines()
        .find(|l| l.starts_with("vmm: state: serial IER"))
        .unwrap_or_else(|| panic!("no serial state line\n{}", run.describe()));
    assert!(serial.contains("input-enabled true"), "{serial}");
    let disk = run
        .stdout
        .lines()
        .find(|l| l.starts_with("vmm: state: vda status 0xf "))
        .unwrap_or_else(|| panic!("no activated vda line\n{}", run.describe()));
    let number_after = |key: &str| -> u32 {
        let rest = &disk[disk.find(key).unwrap_or_else(|| panic!("{key} in {disk}")) + key.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    assert!(number_after("next_avail ") > 0, "{disk}");
    assert_eq!(
        number_after("next_avail "),
        number_after("avail.idx "),
        "{disk}"
    );
    assert_eq!(
        number_after("next_used "),
        number_after("used.idx "),
        "{disk}"
    );
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn a_guest_that_reaches_its_initrd_before_vmm_has_read_it_waits_for_it() {
    // vmm reads the initrd while the guest starts. The hook holds the reading back until the
    // guest has reached for the initrd, so the guest's access has to wait and then see it whole:
    // the kernel unpacks it (gzip checks it) and runs /init from it.
    let run = run_script_in_lab(
        300,
        r#"
        for kernel in "$KERNEL" "$VMLINUX"; do
            status=0
            VMM_TEST_LATE_INITRD=1 VMM_LOG=info "$VMM" --kernel "$kernel" --initrd "$INITRD" \
                --cpus 2 -- 'echo initrd-whole $(ls /init); exit 6' 2> /tmp/err || status=$?
            echo "$(basename "$kernel") status $status"
            grep -o 'the guest reached .* before vmm had filled guest RAM there' /tmp/err >&2 \
                || { cat /tmp/err >&2; echo "FAIL $(basename "$kernel") did not wait"; }
        done
        "#,
    );
    run.assert_ok();
    run.assert_lines(&["bzImage status 6", "vmlinux status 6"]);
    assert_eq!(
        run.stdout.matches("initrd-whole /init").count(),
        2,
        "{}",
        run.describe()
    );
}
