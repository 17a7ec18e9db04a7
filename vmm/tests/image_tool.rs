//! `vmm image` as users run it: the built binary creates, reports and checks images, exits with
//! the documented statuses, says what is wrong with bad inputs in one line, and never changes
//! a file it only reads.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use devices::zoned::image::crc32;

/// Runs vmm with `args`: exit status, stdout, stderr.
fn vmm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("run vmm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmm-image-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Bytes and modification time: what a read-only look must leave as it was.
fn snapshot(path: &Path) -> (Vec<u8>, SystemTime) {
    (
        std::fs::read(path).unwrap(),
        std::fs::metadata(path).unwrap().modified().unwrap(),
    )
}

/// `vmm image ARGS` fails with status 2 and one line on stderr containing `expected`, printing
/// nothing on stdout.
fn one_line_error(args: &[&str], expected: &str) {
    let (code, stdout, stderr) = vmm(args);
    assert_eq!(code, 2, "{args:?}: {stderr}");
    assert_eq!(stdout, "", "{args:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {stderr:?}");
    assert!(lines[0].starts_with("vmm: "), "{stderr:?}");
    assert!(
        lines[0].contains(expected),
        "{args:?}: expected {expected:?} in {stderr:?}"
    );
}

#[test]
fn create_report_and_check_an_image() {
    let dir = Scratch::new("roundtrip");
    let path = dir.path("disk.img");
    let (code, stdout, stderr) = vmm(&[
        "image",
        "create",
        text(&path),
        "--size",
        "64M",
        "--zone-size",
        "16M",
        "--conventional-zones",
        "1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with(&format!(
        "created {}: size=64M,zone-size=16M,",
        path.display()
    )));
    assert!(stdout.ends_with(" (4 zones)\n"), "{stdout}");
    let before = snapshot(&path);
    let (code, stdout, stderr) = vmm(&["image", "report", text(&path)]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines[3],
        "  start: 0x000018000, len 0x008000, cap 0x008000, wptr 0x000000 reset:0 non-seq:0, \
         zcond: 1(em) [type: 2(SEQ_WRITE_REQUIRED)]"
    );
    let (code, json, _) = vmm(&["image", "report", "--json", text(&path), "--zone", "3"]);
    assert_eq!(code, 0);
    assert!(json.starts_with("{\n") && json.ends_with("\n}\n"), "{json}");
    assert!(
        json.contains("\"zones\": [\n    {\"index\": 3, \"start\": 98304,"),
        "{json}"
    );
    let (code, stdout, _) = vmm(&["image", "check", text(&path)]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains(": clean: "), "{stdout}");
    assert_eq!(snapshot(&path), before, "report or check changed the image");
    one_line_error(
        &["image", "create", text(&path)],
        "already exists; refusing to overwrite it",
    );
    assert_eq!(snapshot(&path), before);
}

#[test]
fn check_exit_statuses_and_one_line_per_problem() {
    let dir = Scratch::new("check");
    let path = dir.path("disk.img");
    let (code, _, stderr) = vmm(&[
        "image",
        "create",
        text(&path),
        "--size",
        "4M",
        "--zone-size",
        "1M",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // Data above zone 2's write pointer (the data area starts at 1 MiB): a warning.
    file.write_all_at(&[9; 4096], (1 << 20) + (2 << 20) + 8192)
        .unwrap();
    let (code, stdout, _) = vmm(&["image", "check", text(&path)]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.starts_with("warning: zone 2: 4 KiB stored above"),
        "{stdout}"
    );
    // A flipped byte in zone 1's slot A and in zone 3's slot B: two errors.
    file.write_all_at(&[0xFF], 4096 + 32 + 2).unwrap();
    file.write_all_at(&[0xFF], 4096 + 3 * 32 + 16 + 2).unwrap();
    let before = snapshot(&path);
    let (code, stdout, stderr) = vmm(&["image", "check", text(&path)]);
    assert_eq!((code, stderr.as_str()), (3, ""), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].starts_with("error: zone 1: slot A is corrupt (checksum mismatch)"));
    assert!(lines[1].starts_with("error: zone 3: slot B is corrupt (checksum mismatch)"));
    assert!(lines[2].starts_with("warning: zone 2:"));
    assert_eq!(lines[3], format!("{}: 2 errors, 1 warning", path.display()));
    // Both slots of zone 1: vmm would refuse it, and so does report.
    file.write_all_at(&[0xFF], 4096 + 32 + 16 + 2).unwrap();
    let (code, stdout, _) = vmm(&["image", "check", text(&path)]);
    assert_eq!(code, 3);
    assert!(
        stdout.contains("zone 1: both slots are corrupt"),
        "{stdout}"
    );
    one_line_error(
        &["image", "report", text(&path)],
        "has a corrupt zone table at zone 1: both slots are corrupt",
    );
    // A flipped header byte: the header is the finding.
    file.write_all_at(&[0x40], 20).unwrap();
    let before_header = snapshot(&path);
    let (code, stdout, _) = vmm(&["image", "check", text(&path)]);
    assert_eq!(code, 3);
    assert!(
        stdout.starts_with("error: corrupt header: checksum mismatch\n"),
        "{stdout}"
    );
    one_line_error(
        &["image", "report", text(&path)],
        "has a corrupt header: checksum mismatch",
    );
    assert_eq!(snapshot(&path), before_header);
    assert_ne!(before, before_header);
}

#[test]
fn bad_inputs_are_one_line_and_change_nothing() {
    let dir = Scratch::new("bad");
    let missing = dir.path("missing.img");
    for command in ["report", "check"] {
        one_line_error(
            &["image", command, text(&missing)],
            "No such file or directory",
        );
        one_line_error(
            &["image", command, text(&dir.0)],
            "is a directory, not a zoned image file",
        );
        one_line_error(
            &["image", command, "/dev/null"],
            "/dev/null is a character device",
        );
    }
    let foreign = dir.path("foreign");
    std::fs::write(&foreign, vec![b'x'; 8192]).unwrap();
    let short = dir.path("short.img");
    std::fs::write(&short, b"VMMZONED and no more").unwrap();
    let version = dir.path("version.img");
    let (code, _, _) = vmm(&[
        "image",
        "create",
        text(&version),
        "--size",
        "4M",
        "--zone-size",
        "1M",
    ]);
    assert_eq!(code, 0);
    let mut header = std::fs::read(&version).unwrap()[..4096].to_vec();
    header[8] = 7;
    let crc = crc32(&header[..124]);
    header[124..128].copy_from_slice(&crc.to_le_bytes());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&version)
        .unwrap()
        .write_all_at(&header, 0)
        .unwrap();
    for path in [&foreign, &short, &version] {
        let before = snapshot(path);
        for command in ["report", "check"] {
            let (code, stdout, stderr) = vmm(&["image", command, text(path)]);
            assert!(
                code == 2 || code == 3,
                "{command} {path:?}: {code} {stdout} {stderr}"
            );
            assert_eq!(
                stdout.lines().count() + stderr.lines().count(),
                if code == 2 { 1 } else { 2 }
            );
        }
        assert_eq!(snapshot(path), before, "{path:?} changed");
    }
    one_line_error(
        &["image", "report", text(&foreign)],
        "is not a vmm zoned image",
    );
    one_line_error(
        &["image", "report", text(&short)],
        "is truncated: 20 bytes, expected 4096",
    );
    one_line_error(
        &["image", "check", text(&version)],
        "has format version 7; only version 1",
    );
    // A block device, if this machine has one to name.
    let device = std::fs::read_dir("/dev").ok().and_then(|entries| {
        entries.flatten().map(|e| e.path()).find(|p| {
            use std::os::unix::fs::FileTypeExt;
            p.metadata().is_ok_and(|m| m.file_type().is_block_device())
        })
    });
    if let Some(device) = device {
        one_line_error(
            &["image", "check", text(&device)],
            "is a block device, not a zoned image file",
        );
    }
    one_line_error(&["image", "frobnicate"], "frobnicate");
    one_line_error(&["image", "report"], "IMG");
    one_line_error(&["image", "report", "x", "--count", "0"], "--count");
    one_line_error(
        &[
            "image",
            "create",
            text(&dir.path("new.img")),
            "--colour",
            "red",
        ],
        "--colour",
    );
    assert!(!dir.path("new.img").exists());
}

#[test]
fn help_mentions_the_image_tool() {
    let (code, stdout, _) = vmm(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("vmm image create|report|check IMG"),
        "{stdout}"
    );
    let (code, stdout, _) = vmm(&["image", "--help"]);
    assert_eq!(code, 0);
    for subcommand in ["create", "report", "check"] {
        assert!(stdout.contains(subcommand), "{stdout}");
    }
    let (code, stdout, _) = vmm(&["image", "create", "--help"]);
    assert_eq!(code, 0);
    for option in [
        "--size",
        "--zone-size",
        "--zone-capacity",
        "--conventional-zones",
        "--max-open",
        "--max-active",
        "--max-append",
        "--write-granularity",
        "--logical-block-size",
    ] {
        assert!(stdout.contains(option), "{option}: {stdout}");
    }
    // Without a subcommand: the help, on stderr, and status 2.
    let (code, stdout, stderr) = vmm(&["image"]);
    assert_eq!((code, stdout.as_str()), (2, ""));
    assert!(stderr.contains("Usage: vmm image"), "{stderr}");
}
