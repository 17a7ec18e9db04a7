//! Bad input on the command line gets one clear line on stderr and exit status 2, never a panic.

use std::io::Write;
use std::process::Command;

fn vmm(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("run vmm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(args: &[&str], expected: &str) {
    let (code, stderr) = vmm(args);
    assert_eq!(code, 2, "exit status for {args:?}: stderr {stderr:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line for {args:?}, got {stderr:?}");
    assert!(lines[0].starts_with("vmm: "), "{stderr:?}");
    assert!(
        lines[0].contains(expected),
        "{args:?}: expected {expected:?} in {stderr:?}"
    );
}

fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("vmm-cli-{}-{name}", std::process::id()));
    std::fs::File::create(&path)
        .unwrap()
        .write_all(contents)
        .unwrap();
    path
}

#[test]
fn missing_kernel_option() {
    assert_one_line_error(&[], "--kernel");
}

#[test]
fn missing_kernel_file() {
    assert_one_line_error(
        &["--kernel", "/nonexistent/bzImage"],
        "cannot open kernel /nonexistent/bzImage",
    );
}

#[test]
fn kernel_that_is_not_a_kernel() {
    let path = temp_file("text", b"just some text, certainly not a kernel\n");
    assert_one_line_error(
        &["--kernel", path.to_str().unwrap()],
        "is not a Linux kernel",
    );
    assert_one_line_error(&["--kernel", "/"], "cannot read kernel /");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn elf_program_is_not_a_vmlinux() {
    let exe = std::env::current_exe().unwrap();
    assert_one_line_error(&["--kernel", exe.to_str().unwrap()], "not a kernel");
}

#[test]
fn bzimage_with_old_boot_protocol_or_32_bit_only() {
    let mut image = vec![0u8; 0x400];
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020bu16.to_le_bytes());
    let old = temp_file("old", &image);
    assert_one_line_error(&["--kernel", old.to_str().unwrap()], "boot protocol 2.11");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // loaded high, but no 64-bit entry in xloadflags
    let only32 = temp_file("32bit", &image);
    assert_one_line_error(&["--kernel", only32.to_str().unwrap()], "not a 64-bit");
    std::fs::remove_file(old).unwrap();
    std::fs::remove_file(only32).unwrap();
}

#[test]
fn bad_memory_and_cpu_values() {
    assert_one_line_error(
        &["--kernel", "k", "--memory", "lots"],
        "invalid size 'lots'",
    );
    assert_one_line_error(&["--kernel", "k", "--memory", "8M"], "too small");
    assert_one_line_error(&["--kernel", "k", "--memory", "99999T"], "too large");
    assert_one_line_error(
        &["--kernel", "k", "--cpus", "0"],
        "--cpus 0 is out of range",
    );
    assert_one_line_error(&["--kernel", "k", "--cpus", "two"], "not a number of vCPUs");
}

/// The smallest file that passes as a 64-bit bzImage (it would not run, but it loads).
fn fake_bzimage() -> Vec<u8> {
    let mut image = vec![0u8; 0x1000];
    image[0x1f1] = 4; // setup_sects
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    image
}

#[test]
fn initrd_that_does_not_fit_or_does_not_exist() {
    let kernel = temp_file("fake-bzimage", &fake_bzimage());
    let initrd = std::env::temp_dir().join(format!("vmm-cli-{}-big-initrd", std::process::id()));
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    assert_one_line_error(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--memory",
            "32M",
        ],
        "does not fit in guest memory",
    );
    assert_one_line_error(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            "/nonexistent/initrd",
        ],
        "cannot open initrd /nonexistent/initrd",
    );
    std::fs::remove_file(kernel).unwrap();
    std::fs::remove_file(initrd).unwrap();
}

#[test]
fn bad_disk_options() {
    let kernel = temp_file("fake-bzimage-disk", &fake_bzimage());
    let k = kernel.to_str().unwrap();
    assert_one_line_error(
        &["--kernel", k, "--disk", "/nonexistent/disk.img"],
        "disk /nonexistent/disk.img",
    );
    assert_one_line_error(
        &["--kernel", k, "--disk", "x.img,rw"],
        "--disk option 'rw' is unknown",
    );
    assert_one_line_error(&["--kernel", k, "--disk", ""], "--disk needs a path");
    std::fs::remove_file(kernel).unwrap();
}

#[test]
fn unknown_discovery_mode() {
    assert_one_line_error(
        &["--kernel", "k", "--discovery", "devicetree"],
        "invalid value 'devicetree' for '--discovery <MODE>' [possible values: cmdline, acpi, both]",
    );
}

#[test]
fn unknown_seccomp_mode() {
    assert_one_line_error(
        &["--kernel", "k", "--seccomp", "maybe"],
        "invalid value 'maybe' for '--seccomp <on|off>' [possible values: on, off]",
    );
}

#[test]
fn bad_zoned_disk_options_create_or_touch_nothing() {
    let kernel = temp_file("fake-bzimage-zoned", &fake_bzimage());
    let k = kernel.to_str().unwrap();
    let dir = std::env::temp_dir();
    let fresh = dir.join(format!("vmm-cli-{}-fresh.img", std::process::id()));
    let f = fresh.to_str().unwrap();
    for (option, expected) in [
        (format!("{f},zone-size=3M"), "not a power of two"),
        (format!("{f},bogus=1"), "unknown zoned disk option 'bogus'"),
        (
            format!("{f},max-open=4,max-active=2"),
            "max-open=4 exceeds max-active=2",
        ),
        (format!("{f},write-granularity=100"), "granularity"),
        (format!("{f},size=1M,zone-size=4M"), "zone"),
        (
            format!("{f},logical-block-size=1024"),
            "zoned disk option 'logical-block-size' must be 512 or 4096, not '1024'",
        ),
        (
            format!("{f},logical-block-size=4096,write-granularity=512"),
            "write granularity of 512 bytes is smaller than the logical block size of 4096 bytes",
        ),
    ] {
        assert_one_line_error(&["--kernel", k, "--zoned-disk", &option], expected);
        assert!(!fresh.exists(), "{option} must not create the image");
    }
    // A wrong kernel is reported before any image is created.
    assert_one_line_error(
        &["--kernel", "/nonexistent/k", "--zoned-disk", f],
        "cannot open kernel",
    );
    assert!(!fresh.exists());
    // Another format, a truncated image: refused, bytes unchanged.
    let foreign = temp_file("foreign.img", b"QFI\xfb this is not a zoned image");
    assert_one_line_error(
        &["--kernel", k, "--zoned-disk", foreign.to_str().unwrap()],
        "not a vmm zoned image",
    );
    assert_eq!(
        std::fs::read(&foreign).unwrap(),
        b"QFI\xfb this is not a zoned image"
    );
    std::fs::remove_file(foreign).unwrap();
    std::fs::remove_file(kernel).unwrap();
}

/// A zone trace FILE that cannot be created (a missing directory, a directory) stops vmm with
/// one line naming it, before the image is created.
#[test]
fn a_zone_trace_that_cannot_be_created() {
    let kernel = temp_file("fake-bzimage-trace", &fake_bzimage());
    let k = kernel.to_str().unwrap();
    let fresh = std::env::temp_dir().join(format!("vmm-cli-{}-trace.img", std::process::id()));
    let f = fresh.to_str().unwrap();
    let _ = std::fs::remove_file(&fresh);
    let dir = std::env::temp_dir();
    for (trace, expected) in [
        (
            "/nonexistent/dir/trace.jsonl".to_string(),
            "zoned disk trace /nonexistent/dir/trace.jsonl: cannot create it: No such file or directory",
        ),
        (
            dir.display().to_string(),
            "cannot create it: Is a directory",
        ),
    ] {
        assert_one_line_error(
            &["--kernel", k, "--zoned-disk", &format!("{f},trace={trace}")],
            expected,
        );
        assert!(!fresh.exists(), "trace={trace} must not create the image");
    }
    std::fs::remove_file(kernel).unwrap();
}

/// A 4Kn image reopened with another logical block size is refused like any other geometry
/// conflict, and stays as it was.
#[test]
fn a_4kn_image_reopened_as_512_is_a_geometry_conflict() {
    let kernel = temp_file("fake-bzimage-4kn", &fake_bzimage());
    let image = std::env::temp_dir().join(format!("vmm-cli-{}-4kn.img", std::process::id()));
    let _ = std::fs::remove_file(&image);
    let options = devices::zoned::ZonedDiskOptions::parse(&format!(
        "{},size=64M,zone-size=4M,logical-block-size=4096",
        image.display()
    ))
    .unwrap();
    drop(devices::zoned::ZonedImage::open_or_create(&options).unwrap());
    let before = std::fs::read(&image).unwrap();
    assert_one_line_error(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--zoned-disk",
            &format!("{},logical-block-size=512", image.display()),
        ],
        "has logical-block-size=4096, but logical-block-size=512 was given",
    );
    assert!(
        std::fs::read(&image).unwrap() == before,
        "the image changed"
    );
    std::fs::remove_file(image).unwrap();
    std::fs::remove_file(kernel).unwrap();
}

#[test]
fn no_access_to_dev_kvm() {
    // Only meaningful where /dev/kvm is closed to other users and we can drop privileges.
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root to run vmm as an unprivileged user");
        return;
    }
    let kernel = temp_file("fake-bzimage-kvm", &fake_bzimage());
    std::fs::set_permissions(&kernel, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_vmm"),
            "--kernel",
        ])
        .arg(&kernel)
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot open /dev/kvm"), "{stderr}");
    std::fs::remove_file(kernel).unwrap();
}

#[test]
fn an_image_in_use_by_another_process_is_refused() {
    let kernel = temp_file("fake-bzimage-inuse", &fake_bzimage());
    let dir = std::env::temp_dir();
    let image = dir.join(format!("vmm-cli-{}-inuse.img", std::process::id()));
    let raw = temp_file("inuse-raw.img", &[0u8; 4096]);
    let _ = std::fs::remove_file(&image);
    // This process holds the images open (and locked), as a running vmm would.
    let options = devices::zoned::ZonedDiskOptions::parse(&format!(
        "{},size=64M,zone-size=4M",
        image.display()
    ))
    .unwrap();
    let held = devices::zoned::ZonedImage::open_or_create(&options).unwrap();
    let held_raw = devices::block::RawFile::open(&raw, false).unwrap();
    let k = kernel.to_str().unwrap();
    assert_one_line_error(
        &["--kernel", k, "--zoned-disk", image.to_str().unwrap()],
        "in use by another process",
    );
    assert_one_line_error(
        &["--kernel", k, "--disk", raw.to_str().unwrap()],
        "in use by another process",
    );
    assert_one_line_error(
        &["--kernel", k, "--disk", &format!("{},ro", raw.display())],
        "in use by another process",
    );
    drop((held, held_raw));
    for path in [kernel, image, raw] {
        std::fs::remove_file(path).unwrap();
    }
}

fn assert_one_line_error_with_env(env: (&str, &str), args: &[&str], expected: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .env(env.0, env.1)
        .args(args)
        .output()
        .expect("run vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line for {args:?}, got {stderr:?}");
    assert!(
        lines[0].contains(expected),
        "{args:?}: expected {expected:?} in {stderr:?}"
    );
}

#[test]
fn share_of_a_missing_directory() {
    assert_one_line_error(
        &["--kernel", "k", "--share", "/nonexistent/dir"],
        "share /nonexistent/dir: no such directory",
    );
    assert_one_line_error(
        &["--kernel", "k", "--rwdir", "/nonexistent/dir"],
        "share /nonexistent/dir: no such directory",
    );
}

#[test]
fn share_with_an_unknown_option_or_relative_guest_path() {
    assert_one_line_error(
        &["--kernel", "k", "--share", "/tmp,rw"],
        "--share option 'rw' is unknown",
    );
    assert_one_line_error(
        &["--kernel", "k", "--share", "/tmp:mnt"],
        "must be absolute",
    );
}

#[test]
fn map_images_with_a_share() {
    assert_one_line_error(
        &["--kernel", "k", "--map-images", "--share", "/tmp"],
        "--map-images cannot be used with --share",
    );
}

#[test]
fn run_mode_or_host_root_without_a_built_initramfs() {
    assert_one_line_error_with_env(
        ("VMM_GUEST_DIR", "/nonexistent"),
        &["--kernel", "k", "--", "true"],
        "run mode (-- COMMAND) needs an initramfs with the project's /init",
    );
    assert_one_line_error_with_env(
        ("VMM_GUEST_DIR", "/nonexistent"),
        &["--kernel", "k", "--host-root", "--", "true"],
        "--host-root needs the project's host-root initramfs",
    );
}

#[test]
fn no_kernel_outside_a_kernel_tree() {
    assert_one_line_error(&["--", "true"], "--kernel is required");
}

#[test]
fn bad_power_cut_options() {
    let kernel = temp_file("powercut-kernel", &fake_bzimage());
    let k = kernel.to_str().unwrap();
    for (value, expected) in [
        ("soon", "invalid --power-cut 'soon'"),
        ("after=later", "invalid duration 'later'"),
        ("flush=0", "invalid flush count '0'"),
        ("signal,lose=most", "lose=most"),
        ("signal,seed=x", "seed=x"),
    ] {
        assert_one_line_error(&["--kernel", k, "--power-cut", value], expected);
    }
    // A power cut needs a disk whose unflushed writes it can lose.
    assert_one_line_error(
        &["--kernel", k, "--power-cut", "after=1s"],
        "--power-cut needs a --zoned-disk with cache=volatile",
    );
    assert_one_line_error(
        &[
            "--kernel",
            k,
            "--zoned-disk",
            "tmp",
            "--power-cut",
            "signal",
        ],
        "cache=volatile",
    );
    assert_one_line_error(
        &["--kernel", k, "--zoned-disk", "tmp,cache=lots"],
        "'lots' for zoned disk option 'cache'",
    );
    let _ = std::fs::remove_file(kernel);
}

#[test]
fn a_zoned_disk_that_is_a_fifo_or_a_directory_is_refused_not_waited_on() {
    let kernel = temp_file("fake-bzimage-fifo", &fake_bzimage());
    let fifo = std::env::temp_dir().join(format!("vmm-cli-{}-fifo", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["--kernel", kernel.to_str().unwrap(), "--zoned-disk"])
        .arg(&fifo)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let finished = child.try_wait().unwrap().is_some();
    if !finished {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&fifo);
    assert!(finished, "vmm waited on the FIFO");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("is a FIFO, not a zoned image file"),
        "{stderr}"
    );
    let dir = std::env::temp_dir();
    assert_one_line_error(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--zoned-disk",
            dir.to_str().unwrap(),
        ],
        "is a directory, not a zoned image file",
    );
    let _ = std::fs::remove_file(kernel);
}
