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
