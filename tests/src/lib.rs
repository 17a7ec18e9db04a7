//! Helpers shared by the end-to-end tests under `tests/tests/`: where the repository and the
//! guest build outputs are, and how to run a command in the guest lab (resources/lab/run-in-lab).
//!
//! Tests that boot a guest are `#[ignore]`d so a plain `cargo test --workspace` passes on a
//! machine without the guest built; `make lab-test` (part of `make test`) builds the guest and
//! runs them with `--ignored`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the repository")
        .to_path_buf()
}

/// Where `make guest` puts its outputs.
pub fn guest_dir() -> PathBuf {
    repo_root().join("build/guest")
}

/// The guest kernel (bzImage) built by `make guest-kernel`.
pub fn guest_kernel() -> PathBuf {
    guest_dir().join("bzImage")
}

/// The guest kernel as an ELF (boots through the PVH entry point).
pub fn guest_vmlinux() -> PathBuf {
    guest_dir().join("vmlinux")
}

/// The guest initramfs built by `make guest-initramfs`.
pub fn guest_initramfs() -> PathBuf {
    guest_dir().join("initramfs.cpio.gz")
}

/// How the line starts that vmm prints on stderr at exit when its lost-event watcher had to
/// recover a lost interrupt or notification (`vmm::host::event_loop::LOST_EVENT_SUMMARY`). With
/// level-triggered virtio interrupts that is a bug, so every lab run fails on it.
pub const LOST_EVENT_SUMMARY: &str = "vmm: lost-event watcher recovered";

/// What a command run in the lab left behind.
#[derive(Debug)]
pub struct LabRun {
    /// The command's exit status (0-255); 124 means a timeout and 125 a lab failure, each
    /// explained by a `run-in-lab:` line on stderr. `None` if killed by a signal.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl LabRun {
    /// The command exited 0 and printed no FAIL line.
    pub fn assert_ok(&self) {
        assert_eq!(self.status, Some(0), "{}", self.describe());
        assert!(!self.stdout.contains("FAIL"), "{}", self.describe());
    }

    /// No vmm in the run reported lost-event recoveries (on stderr, or on stdout where a script
    /// merged the two). `run_in_lab` checks this for every run; a script that sends vmm's
    /// stderr to a file must show that file for the check to see it.
    pub fn assert_no_lost_events(&self) {
        let report = [&self.stderr, &self.stdout]
            .into_iter()
            .flat_map(|stream| stream.lines())
            .find(|line| line.contains(LOST_EVENT_SUMMARY));
        if let Some(line) = report {
            panic!(
                "vmm's lost-event watcher had to recover lost events: {line}\n{}",
                self.describe()
            );
        }
        // A script's summary of every vmm it ran (LOST_EVENTS_TRAP).
        if let Some((runs, events)) = self.lost_event_totals() {
            assert_eq!(
                events,
                0,
                "vmm's lost-event watcher recovered {events} events over {runs} runs\n{}",
                self.describe()
            );
        }
    }

    /// Keeps a script's lost-event summary for the whole test run: one "RUNS EVENTS" line in
    /// build/lab-lost-events.log.
    fn record_lost_events(&self) {
        let Some((runs, events)) = self.lost_event_totals() else {
            return;
        };
        let log = repo_root().join("build/lab-lost-events.log");
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(file, "{runs} {events}");
        }
    }

    /// The (vmm runs, recovered events) of a lab script, from its `lab-lost-events:` line.
    pub fn lost_event_totals(&self) -> Option<(u64, u64)> {
        let line = self
            .stdout
            .lines()
            .rev()
            .find_map(|line| line.trim().strip_prefix("lab-lost-events: "))?;
        let mut numbers = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|word| !word.is_empty())
            .map(|word| word.parse::<u64>().ok());
        Some((numbers.next()??, numbers.next()??))
    }

    /// Each of `lines` appears on stdout as a whole line (surrounding spaces ignored).
    pub fn assert_lines(&self, lines: &[&str]) {
        for line in lines {
            assert!(
                self.stdout.lines().any(|l| l.trim() == *line),
                "expected the line {line:?}\n{}",
                self.describe()
            );
        }
    }

    /// How many ZONE_APPEND requests the zoned disk served, from the line vmm logs at exit with
    /// VMM_LOG=info ("zoned disk served N reads, N writes, N appends, ...").
    pub fn zoned_appends(&self) -> u64 {
        self.stderr
            .split("zoned disk served")
            .nth(1)
            .and_then(|rest| rest.split(" appends").next())
            .and_then(|counts| counts.rsplit(", ").next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no request counts on stderr\n{}", self.describe()))
    }

    /// Both streams, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `command` (program and arguments, relative paths from the repository root) through
/// resources/lab/run-in-lab, which uses a real KVM here or boots the nested lab. Panics if a vmm
/// in it reported lost-event recoveries (`LabRun::assert_no_lost_events`).
pub fn run_in_lab(timeout_secs: u32, command: &[&str]) -> LabRun {
    run_in_lab_with_progress(timeout_secs, command, None)
}

/// `run_in_lab`, and each stdout line starting with `progress` is also echoed to stderr as it
/// arrives (seen with `--nocapture`), for long runs that report as they go.
pub fn run_in_lab_with_progress(
    timeout_secs: u32,
    command: &[&str],
    progress: Option<&str>,
) -> LabRun {
    let root = repo_root();
    let mut child = Command::new(root.join("resources/lab/run-in-lab"))
        .arg("--timeout")
        .arg(timeout_secs.to_string())
        .arg("--")
        .args(command)
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start resources/lab/run-in-lab: {e}"));
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut bytes);
        bytes
    });
    let mut stdout = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped"));
    loop {
        let start = stdout.len();
        match lines.read_until(b'\n', &mut stdout) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&stdout[start..]);
                if progress.is_some_and(|p| line.starts_with(p)) {
                    eprint!("{line}");
                }
            }
        }
    }
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("cannot wait for resources/lab/run-in-lab: {e}"));
    let stderr = stderr_reader.join().unwrap_or_default();
    let run = LabRun {
        status: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    run.record_lost_events();
    run.assert_no_lost_events();
    run
}

/// Boots the project's guest in QEMU's microvm (resources/lab/qemu-guest, the reference peer of
/// our VMM) inside the lab, running `guest_command` with bash in the guest.
pub fn run_in_qemu_guest(guest_command: &str) -> LabRun {
    let kernel = guest_kernel();
    let initramfs = guest_initramfs();
    assert!(
        kernel.exists() && initramfs.exists(),
        "the guest is not built ({} / {}): run `make guest`",
        kernel.display(),
        initramfs.display()
    );
    run_in_lab(
        300,
        &[
            "resources/lab/qemu-guest",
            "--kernel",
            &kernel.to_string_lossy(),
            "--initrd",
            &initramfs.to_string_lossy(),
            "--run",
            guest_command,
        ],
    )
}

/// Our VMM, as `make build` (a dependency of `make lab-test`) leaves it.
pub fn vmm_binary() -> PathBuf {
    let vmm = repo_root().join("target/release/vmm");
    assert!(
        vmm.exists(),
        "no VMM at {}: run `make build`",
        vmm.display()
    );
    vmm
}

fn assert_guest_built() {
    assert!(
        guest_kernel().exists() && guest_initramfs().exists(),
        "the guest is not built ({}): run `make guest`",
        guest_dir().display()
    );
}

/// Boots the project's guest with our VMM in the lab: `vmm --kernel bzImage --initrd initramfs
/// EXTRA_ARGS... -- GUEST_COMMAND`, so the guest's /init runs GUEST_COMMAND with bash and the VMM
/// exits with its status.
pub fn run_vmm(extra_args: &[&str], guest_command: &str) -> LabRun {
    assert_guest_built();
    let (vmm, kernel, initrd) = (vmm_binary(), guest_kernel(), guest_initramfs());
    let mut command = vec![
        vmm.to_string_lossy().into_owned(),
        "--kernel".into(),
        kernel.to_string_lossy().into_owned(),
        "--initrd".into(),
        initrd.to_string_lossy().into_owned(),
    ];
    command.extend(extra_args.iter().map(|a| a.to_string()));
    command.push("--".into());
    command.push(guest_command.into());
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    run_in_lab(300, &command)
}

/// A bash function for lab scripts: `script_disk FILE` pads a guest script with newlines to whole
/// sectors, so that it can be attached read-only as a raw disk and run with `bash /dev/vdX`. The
/// kernel command line (2 KiB) is too small for long guest scripts.
const SCRIPT_DISK: &str = r#"script_disk() {
    local size; size=$(stat -c %s "$1")
    head -c $(( (512 - size % 512) % 512 )) /dev/zero | tr '\0' '\n' >> "$1"
}"#;

/// Every vmm a lab script runs appends `lost-events=N` to one file (vmm's VMM_LOST_EVENTS_LOG,
/// world-writable for the unprivileged runs), summed up on stdout when the script ends, so that
/// the watcher's recoveries count even where a script sends vmm's stderr elsewhere.
const LOST_EVENTS_TRAP: &str = r#"export VMM_LOST_EVENTS_LOG=$(mktemp /tmp/vmm-lost-events.XXXXXX)
chmod 666 "$VMM_LOST_EVENTS_LOG"
trap 'echo "lab-lost-events: $(grep -c . "$VMM_LOST_EVENTS_LOG") runs, $(awk -F= "{ s += \$2 } END { print s + 0 }" "$VMM_LOST_EVENTS_LOG") events"' EXIT"#;

/// Runs a bash `script` in the lab, so that several VMM runs share one lab boot (e.g. to check
/// that data survives from one guest boot to the next). The script sees `$VMM`, `$KERNEL`,
/// `$VMLINUX` and `$INITRD` and the function `script_disk` (see `SCRIPT_DISK`), `set -e` is on,
/// and `/tmp` is a fresh RAM file system.
pub fn run_script_in_lab(timeout_secs: u32, script: &str) -> LabRun {
    run_script_in_lab_with_progress(timeout_secs, script, None)
}

/// `run_script_in_lab`, echoing stdout lines that start with `progress` as they arrive (see
/// `run_in_lab_with_progress`).
pub fn run_script_in_lab_with_progress(
    timeout_secs: u32,
    script: &str,
    progress: Option<&str>,
) -> LabRun {
    assert_guest_built();
    let full = format!(
        "set -euo pipefail\nVMM={}\nKERNEL={}\nVMLINUX={}\nINITRD={}\n{SCRIPT_DISK}\n{LOST_EVENTS_TRAP}\n{script}",
        vmm_binary().display(),
        guest_kernel().display(),
        guest_vmlinux().display(),
        guest_initramfs().display()
    );
    run_in_lab_with_progress(timeout_secs, &["bash", "-c", &full], progress)
}

/// Quotes `text` as one bash word, so a guest command can be embedded in a `run_script_in_lab`
/// script: `format!("\"$VMM\" ... -- {}", shell_quote(command))`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Every value printed as a `KEY=VALUE` word in `output` (guest or lab script output), in order.
/// Tests print what they measure this way (`echo size=$(cat /sys/block/vda/size)`) and assert on
/// the values, so a missing line shows up as a missing value rather than a passing `contains`.
pub fn values_of(output: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    output
        .split_whitespace()
        .filter_map(|word| word.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

/// The one value of `KEY=VALUE` in `output`; panics (showing `run`) unless there is exactly one.
pub fn value_of(run: &LabRun, key: &str) -> String {
    let values = values_of(&run.stdout, key);
    match values.as_slice() {
        [value] => value.clone(),
        _ => panic!(
            "expected exactly one {key}=VALUE in the output, found {values:?}\n{}",
            run.describe()
        ),
    }
}

/// A guest built around Debian's prebuilt cloud kernel (the lab's outer kernel), which finds
/// virtio-mmio disks only through ACPI once its initramfs loaded virtio_mmio.ko and virtio_blk.ko;
/// see resources/guest/build-cloud-initramfs.sh.
pub struct CloudGuest {
    /// Debian's vmlinuz, from the lab's cache.
    pub kernel: PathBuf,
    /// The project's initramfs plus /lib/modules/vmm/{virtio_mmio,virtio_blk}.ko.
    pub initrd: PathBuf,
}

/// Builds the cloud-kernel guest with resources/guest/build-cloud-initramfs.sh. The kernel comes
/// from the lab's cache, filled by the lab's first run: if it is missing, one trivial lab run
/// fills it first.
pub fn cloud_guest() -> CloudGuest {
    assert_guest_built();
    let script = repo_root().join("resources/guest/build-cloud-initramfs.sh");
    let build = || {
        Command::new(&script)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()))
    };
    let mut output = build();
    if !output.status.success() && String::from_utf8_lossy(&output.stderr).contains("lab's cache") {
        let warm_up = run_in_lab(300, &["true"]);
        assert_eq!(warm_up.status, Some(0), "{}", warm_up.describe());
        output = build();
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} failed:\n{stdout}{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let path = |key: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(|p| PathBuf::from(p.trim()))
            .unwrap_or_else(|| panic!("no `{key}PATH` line from {}: {stdout}", script.display()))
    };
    CloudGuest {
        kernel: path("kernel "),
        initrd: path("initrd "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_from_key_value_words() {
        let output = "vmm-init: userspace reached\nsize=614400 serial=abc\r\nsize=1\n";
        assert_eq!(values_of(output, "size"), ["614400", "1"]);
        assert_eq!(values_of(output, "serial"), ["abc"]);
        assert!(values_of(output, "ro").is_empty());
    }

    fn run_with_stderr(stderr: &str) -> LabRun {
        LabRun {
            status: Some(0),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn a_scripts_lost_event_summary_is_read_and_fails_the_run_when_not_zero() {
        let run = |stdout: &str| LabRun {
            status: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        };
        assert_eq!(run("x=1\n").lost_event_totals(), None);
        let clean = run("x=1\nlab-lost-events: 3 runs, 0 events\n");
        assert_eq!(clean.lost_event_totals(), Some((3, 0)));
        let lossy = run("lab-lost-events: 2 runs, 5 events\r\n");
        assert_eq!(lossy.lost_event_totals(), Some((2, 5)));
        let failed = std::panic::catch_unwind(|| lossy.assert_no_lost_events());
        assert!(failed.is_err(), "5 recovered events must fail the run");
    }

    #[test]
    fn a_run_without_the_watcher_line_has_no_lost_events() {
        run_with_stderr("vmm: warning: something else\n").assert_no_lost_events();
    }

    #[test]
    #[should_panic(expected = "lost-event watcher had to recover")]
    fn the_watcher_line_at_exit_fails_the_run() {
        run_with_stderr(
            "vmm-init: exit status 0\nvmm: lost-event watcher recovered 1 events: 1 virtio \
             interrupts raised again, 0 completions signalled, 0 requests served, 0 serial \
             interrupts raised again\n",
        )
        .assert_no_lost_events();
    }

    #[test]
    fn shell_quote_keeps_single_quotes() {
        assert_eq!(shell_quote("echo 'a b'"), r"'echo '\''a b'\'''");
    }
}
