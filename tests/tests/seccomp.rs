//! vmm's seccomp filters as the kernel sees them while a guest runs: every thread of the vmm
//! process is in filter mode (`Seccomp: 2` in /proc/PID/task/TID/status) by default, and none is
//! with `--seccomp off`. The filter's refusals are unit-tested in vmm/src/host/seccomp.rs; the rest of
//! the lab suite runs with the filters on. Run by `make lab-test`.

use vmm_tests::{run_script_in_lab, values_of};

/// Starts vmm (2 vCPUs, a zoned disk) with `SECCOMP_ARGS`, waits until the guest is in userspace,
/// prints `thread=NAME:MODE:FILTERS` for each thread of the vmm process, then lets the guest end.
const SCRIPT: &str = r#"
for mode in on off; do
    "$VMM" --kernel "$KERNEL" --initrd "$INITRD" --cpus 2 --seccomp $mode \
        --zoned-disk tmp,size=64M,zone-size=4M -- 'echo guest-ready; sleep 60' \
        > /tmp/out.$mode 2>&1 &
    pid=$!
    for _ in $(seq 600); do grep -q guest-ready /tmp/out.$mode && break; sleep 0.1; done
    for task in /proc/$pid/task/*; do
        echo "$mode-thread=$(cat $task/comm):$(awk '/^Seccomp:/ {print $2}' $task/status):$(awk '/^Seccomp_filters:/ {print $2}' $task/status)"
    done
    kill -TERM $pid
    set +e; wait $pid; echo "$mode-status=$?"; set -e
    grep "^vmm:" /tmp/out.$mode || true
done
"#;

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn every_vmm_thread_runs_under_a_seccomp_filter_unless_turned_off() {
    let run = run_script_in_lab(300, SCRIPT);
    assert_eq!(run.status, Some(0), "{}", run.describe());
    for (mode, filters) in [("on", "2:3"), ("off", "0:0")] {
        let threads = values_of(&run.stdout, &format!("{mode}-thread"));
        // Every task of the process, including kernel workers KVM runs in it (kvm-nx-lpage-re
        // on hosts with the NX huge page mitigation), has the filter or none.
        assert!(
            threads.iter().all(|t| t.ends_with(&format!(":{filters}"))),
            "--seccomp {mode}: {threads:?}\n{}",
            run.describe()
        );
        // Filter mode 2, three filters each (the thread's own, the one that turns clone3 into
        // ENOSYS and the one that fails file opens with EACCES): the vCPUs install theirs
        // before the main thread does.
        let mut ours: Vec<&str> = threads
            .iter()
            .filter(|t| !t.starts_with("kvm-"))
            .map(|t| t.as_str())
            .collect();
        ours.sort();
        assert_eq!(
            ours,
            [
                format!("vcpu0:{filters}"),
                format!("vcpu1:{filters}"),
                format!("vmm:{filters}")
            ],
            "--seccomp {mode}\n{}",
            run.describe()
        );
    }
    // SIGTERM ends both runs the usual way (128 + 15), not through a seccomp violation (159).
    assert_eq!(
        values_of(&run.stdout, "on-status"),
        ["143"],
        "{}",
        run.describe()
    );
    assert_eq!(
        values_of(&run.stdout, "off-status"),
        ["143"],
        "{}",
        run.describe()
    );
    assert!(!run.stdout.contains("seccomp:"), "{}", run.describe());
}
