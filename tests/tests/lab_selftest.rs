//! The guest lab checks itself with QEMU as the inner VMM: the guest's /init runs the command from
//! the kernel command line, and its exit status travels back through port 0xf4, QEMU, the outer
//! VM and run-in-lab unchanged. Run with `make lab-test` (needs `make guest`).

use vmm_tests::run_in_qemu_guest;

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn qemu_guest_returns_command_status_7_and_its_output() {
    let run = run_in_qemu_guest("echo hello; exit 7");
    assert_eq!(run.status, Some(7), "{}", run.describe());
    assert!(run.stdout.contains("hello"), "{}", run.describe());
    assert!(
        run.stdout.contains("vmm-init: userspace reached"),
        "{}",
        run.describe()
    );
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn qemu_guest_returns_status_0_for_a_successful_command() {
    let run = run_in_qemu_guest("test -c /dev/console && echo guest-ok");
    assert_eq!(run.status, Some(0), "{}", run.describe());
    assert!(run.stdout.contains("guest-ok"), "{}", run.describe());
}
