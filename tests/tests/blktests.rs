//! blktests' zbd group, run as a user runs it: from a blktests checkout on the host, through
//! `vmm --host-root --rwdir .`, on our zoned disk as TEST_DEV. The checkout is a copy of the
//! snapshot in ../shared/blktests (test data, never committed) under build/blktests, with its
//! src/ helpers built there.
//!
//! Run by `make lab-test` (and alone by `make blktests`): in the lab both geometries take about
//! 17 minutes together (see README "Running your own test suites" for the results and why
//! zbd/007 is not run). Each geometry's verdicts and runtimes go to build/blktests-NAME.txt.

use std::path::PathBuf;
use std::process::Command;

use vmm_tests::{repo_root, run_script_in_lab_with_progress, LabRun};

/// A fresh copy of the blktests snapshot with its helpers built, or a panic saying why not.
fn blktests_checkout() -> PathBuf {
    let root = repo_root();
    let snapshot = root.join("../shared/blktests");
    assert!(
        snapshot.join("check").is_file(),
        "no blktests snapshot at {}",
        snapshot.display()
    );
    let checkout = root.join("build/blktests");
    let _ = std::fs::remove_dir_all(&checkout);
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&snapshot)
        .arg(&checkout)
        .status()
        .expect("cp runs");
    assert!(copied.success(), "cannot copy {}", snapshot.display());
    // The snapshot is read-only in CI; the copy must be writable (results/).
    let writable = Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(&checkout)
        .status()
        .expect("chmod runs");
    assert!(writable.success());
    let built = Command::new("make")
        .args(["-s", "-j2"])
        .current_dir(&checkout)
        .status()
        .expect("make runs");
    assert!(built.success(), "blktests' helpers did not build");
    checkout
}

/// Runs `./check zbd` on a zoned disk with `geometry` and returns the run.
fn check_zbd(geometry: &str) -> LabRun {
    let checkout = blktests_checkout();
    let script = format!(
        r#"cd {checkout}
echo 'TEST_DEVS=(/dev/vda)' >config
# The image goes to the repository's disk: the lab's /tmp is RAM, too small for 2 GiB.
mkdir -p ../tmp && export TMPDIR=$(cd ../tmp && pwd)
export VMM_VIRTIOFSD=/usr/lib/qemu/virtiofsd
status=0
"$VMM" --kernel "$KERNEL" --memory 2560M --host-root --rwdir . --zoned-disk tmp,{geometry} \
    -- ./check zbd 2>&1 | grep -v -e '^fv_' -e '^virtio_' -e '^stop_all' || status=$?
echo check_status=$status
"#,
        checkout = checkout.display()
    );
    run_script_in_lab_with_progress(3000, &script, Some("zbd/"))
}

/// The run's stdout without the terminal escapes `./check` draws its progress with.
fn plain_output(run: &LabRun) -> String {
    run.stdout
        .replace("\x1b[1A", "\n")
        .split("\x1b[")
        .map(|part| part.split_once('m').map_or(part, |(_, rest)| rest))
        .collect()
}

/// Each test's verdict: ("zbd/001", "passed"), ...
fn verdicts(run: &LabRun) -> Vec<(String, String)> {
    plain_output(run)
        .lines()
        .filter_map(|line| {
            let name = line.split_whitespace().next()?;
            let verdict = line.rsplit_once('[')?.1.strip_suffix(']')?;
            name.starts_with("zbd/")
                .then(|| (name.to_string(), verdict.to_string()))
        })
        .collect()
}

/// Each test's final verdict line with its runtime, and the reasons blktests gives for a test
/// it did not run (the indented lines after the verdict), on stderr (`make blktests` shows
/// it) and in build/blktests-NAME.txt (kept after `make test`).
fn report(run: &LabRun, name: &str) {
    let plain = plain_output(run);
    let mut lines = plain.lines().map(str::trim_end).peekable();
    let mut summary = String::new();
    while let Some(line) = lines.next() {
        if line.starts_with("zbd/") && line.ends_with(']') {
            let runtime = lines
                .next_if(|next| next.trim_start().starts_with("runtime"))
                .map(str::trim)
                .unwrap_or("");
            summary.push_str(&format!("{line}  {runtime}\n"));
            if line.ends_with("[not run]") {
                while let Some(reason) = lines.next_if(|next| next.starts_with(char::is_whitespace))
                {
                    summary.push_str(&format!("    {}\n", reason.trim()));
                }
            }
        }
    }
    eprint!("{summary}");
    let _ = std::fs::write(
        repo_root().join(format!("build/blktests-{name}.txt")),
        summary,
    );
}

fn assert_none_failed(run: &LabRun) {
    let verdicts = verdicts(run);
    assert!(!verdicts.is_empty(), "no results\n{}", run.describe());
    let failed: Vec<_> = verdicts.iter().filter(|(_, v)| v == "failed").collect();
    assert!(failed.is_empty(), "failed: {failed:?}\n{}", run.describe());
}

#[test]
#[ignore = "boots the guest in the lab for 5-15 minutes; run by `make lab-test`"]
fn blktests_zbd_group_on_a_plain_zoned_disk() {
    let run = check_zbd("size=2G,zone-size=64M");
    report(&run, "plain");
    assert_none_failed(&run);
}

#[test]
#[ignore = "boots the guest in the lab for 5-15 minutes; run by `make lab-test`"]
fn blktests_zbd_group_with_conventional_zones_capacity_and_limits() {
    let run = check_zbd(
        "size=2G,zone-size=64M,zone-capacity=48M,conventional-zones=4,max-open=8,max-active=12",
    );
    report(&run, "limits");
    assert_none_failed(&run);
}
