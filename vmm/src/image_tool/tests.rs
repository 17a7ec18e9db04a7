use super::*;
use devices::zoned::ZoneOp;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vmm-image-tool-{}-{}-{}",
            name,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
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

/// Runs `vmm image ARGS...`: the exit status (or the one-line error) and what went to stdout.
fn image(args: &[&str]) -> (Result<u8, String>, String) {
    let argv = std::iter::once("vmm image").chain(args.iter().copied());
    let matches = command().try_get_matches_from(argv).unwrap();
    let mut out = Vec::new();
    let status = run(&matches, &mut out).map_err(|failure| match failure {
        Failure::Message(message) => message,
        Failure::Output(e) => panic!("output: {e}"),
    });
    (status, String::from_utf8(out).unwrap())
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// 8 zones of 256 KiB (0x200 sectors), capacity 192 KiB (0x180), zone 0 conventional.
const GEOMETRY: [&str; 10] = [
    "--size",
    "2M",
    "--zone-size",
    "256K",
    "--zone-capacity",
    "192K",
    "--conventional-zones",
    "1",
    "--max-active",
    "3",
];

fn create(dir: &Scratch, name: &str) -> PathBuf {
    let path = dir.path(name);
    let mut args = vec!["create", text(&path)];
    args.extend(GEOMETRY);
    let (status, out) = image(&args);
    assert_eq!(status, Ok(exit::OK), "{out}");
    path
}

#[test]
fn create_takes_the_zoned_disk_options_and_report_shows_them() {
    let dir = Scratch::new("create");
    let path = create(&dir, "disk.img");
    let (_, out) = image(&["report", text(&path), "--count", "2"]);
    assert_eq!(
        out,
        "  start: 0x000000000, len 0x000200, cap 0x000200, wptr 0x000000 reset:0 non-seq:0, \
         zcond: 0(nw) [type: 1(CONVENTIONAL)]\n  start: 0x000000200, len 0x000200, cap \
         0x000180, wptr 0x000000 reset:0 non-seq:0, zcond: 1(em) [type: \
         2(SEQ_WRITE_REQUIRED)]\n"
    );
    let (status, out) = image(&["report", text(&path)]);
    assert_eq!((status, out.lines().count()), (Ok(exit::OK), 8));
    // What create printed, the geometry as an option string, opens the image in vmm.
    let other = dir.path("other.img");
    let mut args = vec!["create", text(&other)];
    args.extend(GEOMETRY);
    let (_, created) = image(&args);
    let options = "size=2M,zone-size=256K,zone-capacity=192K,conventional-zones=1,max-open=0,\
                   max-active=3,max-append=256K,write-granularity=512,logical-block-size=512";
    assert_eq!(
        created,
        format!("created {}: {options} (8 zones)\n", other.display())
    );
    let given =
        devices::zoned::ZonedDiskOptions::parse(&format!("{},{options}", path.display())).unwrap();
    assert!(ZonedImage::open_or_create(&given).is_ok());
}

#[test]
fn create_has_the_zoned_disk_defaults() {
    let dir = Scratch::new("defaults");
    let path = dir.path("disk.img");
    let (status, out) = image(&["create", text(&path)]);
    assert_eq!(status, Ok(exit::OK));
    assert!(
        out.ends_with(
            ": size=4G,zone-size=64M,zone-capacity=64M,conventional-zones=0,max-open=0,\
             max-active=0,max-append=1M,write-granularity=512,logical-block-size=512 \
             (64 zones)\n"
        ),
        "{out}"
    );
    let path = dir.path("4kn.img");
    let (status, _) = image(&["create", text(&path), "--logical-block-size", "4K"]);
    assert_eq!(status, Ok(exit::OK));
    let (_, out) = image(&["report", text(&path), "--json"]);
    assert!(
        out.contains("\"write_granularity\": 4096, \"logical_block_size\": 4096"),
        "{out}"
    );
}

#[test]
fn create_refuses_an_existing_file_and_bad_options_create_nothing() {
    let dir = Scratch::new("refuse");
    let path = dir.path("precious");
    std::fs::write(&path, b"precious").unwrap();
    let (status, _) = image(&["create", text(&path), "--size", "1G"]);
    let message = status.unwrap_err();
    assert!(
        message.contains("already exists; refusing to overwrite it"),
        "{message}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    let path = create(&dir, "disk.img");
    let before = std::fs::read(&path).unwrap();
    let (status, _) = image(&["create", text(&path)]);
    assert!(status.unwrap_err().contains("already exists"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let new = dir.path("new.img");
    for (args, expected) in [
        (
            &["--zone-size", "3M"][..],
            "zone size of 6144 sectors is not a power of two",
        ),
        (
            &["--size", "lots"],
            "invalid value 'lots' for zoned disk option 'size'",
        ),
        (&["--size", "1000"], "not a multiple of 512 bytes"),
        (&["--logical-block-size", "1024"], "must be 512 or 4096"),
        (
            &["--max-open", "4", "--max-active", "2"],
            "max-open=4 exceeds max-active=2",
        ),
    ] {
        let mut all = vec!["create", text(&new)];
        all.extend(args);
        let message = image(&all).0.unwrap_err();
        assert!(message.contains(expected), "{args:?}: {message}");
        assert!(!message.contains('\n'), "{message}");
        assert!(!new.exists());
    }
}

/// Opens an image `create` just made. Another test of this process that forks a child (to run
/// a command) lends the child the tool's descriptors until its exec closes them, and with them
/// the tool's lock on the image: a moment in which the image is "in use".
fn open_when_free(path: &Path) -> ZonedImage {
    for _ in 0..100 {
        match ZonedImage::open(path, &GeometryOverrides::default()) {
            Err(devices::zoned::ImageError::InUse(_)) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => return other.unwrap(),
        }
    }
    panic!("{} stays in use", path.display());
}

/// An image the device wrote: zone 1 CLOSED at +8, zone 2 FULL by writes, zone 3 FULL by a
/// FINISH at +0x10, zone 4 written and reset (and reclaimed).
fn worked(dir: &Scratch, name: &str) -> PathBuf {
    let path = create(dir, name);
    let mut disk = open_when_free(&path);
    disk.write(0x200, &[1; 8 * 512]).unwrap();
    disk.write(0x400, &[2; 0x180 * 512]).unwrap();
    disk.write(0x600, &[3; 0x10 * 512]).unwrap();
    disk.zone_op(ZoneOp::Finish, 0x600).unwrap();
    disk.write(0x800, &[4; 0x20 * 512]).unwrap();
    disk.flush().unwrap();
    disk.zone_op(ZoneOp::Reset, 0x800).unwrap();
    disk.flush().unwrap();
    disk.reclaim(std::time::Duration::MAX);
    path
}

#[test]
fn a_report_of_what_the_device_wrote_is_what_a_guest_sees() {
    let dir = Scratch::new("worked");
    let path = worked(&dir, "disk.img");
    let before = std::fs::read(&path).unwrap();
    let (status, out) = image(&["report", text(&path), "--zone", "1", "--count", "4"]);
    assert_eq!(status, Ok(exit::OK));
    let seq = "reset:0 non-seq:0";
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            format!("  start: 0x000000200, len 0x000200, cap 0x000180, wptr 0x000008 {seq}, zcond: 4(cl) [type: 2(SEQ_WRITE_REQUIRED)]"),
            format!("  start: 0x000000400, len 0x000200, cap 0x000180, wptr 0x000200 {seq}, zcond:14(fu) [type: 2(SEQ_WRITE_REQUIRED)]"),
            format!("  start: 0x000000600, len 0x000200, cap 0x000180, wptr 0x000200 {seq}, zcond:14(fu) [type: 2(SEQ_WRITE_REQUIRED)]"),
            format!("  start: 0x000000800, len 0x000200, cap 0x000180, wptr 0x000000 {seq}, zcond: 1(em) [type: 2(SEQ_WRITE_REQUIRED)]"),
        ]
    );
    let (_, json) = image(&[
        "report",
        text(&path),
        "--json",
        "--zone",
        "2",
        "--count",
        "2",
    ]);
    assert_eq!(
        json,
        format!(
            "{{\n  \"image\": {},\n  \"format_version\": 1,\n  \"sector_size\": 512,\n  \
             \"geometry\": {{\"capacity\": 4096, \"zone_size\": 512, \"zone_capacity\": 384, \
             \"nr_zones\": 8, \"conventional_zones\": 1, \"max_open\": 0, \"max_active\": 3, \
             \"max_append_sectors\": 512, \"write_granularity\": 512, \"logical_block_size\": \
             512}},\n  \"active_zones\": 1,\n  \"zones\": [\n    {{\"index\": 2, \"start\": \
             1024, \"len\": 512, \"capacity\": 384, \"wp\": 1536, \"data_end\": 1408, \
             \"type\": \"SEQ_WRITE_REQUIRED\", \"cond\": \"FULL\", \"cond_code\": 14, \
             \"slot\": \"B\", \"generation\": 2}},\n    {{\"index\": 3, \"start\": 1536, \
             \"len\": 512, \"capacity\": 384, \"wp\": 2048, \"data_end\": 1552, \"type\": \
             \"SEQ_WRITE_REQUIRED\", \"cond\": \"FULL\", \"cond_code\": 14, \"slot\": \"B\", \
             \"generation\": 2}}\n  ]\n}}\n",
            json_string(text(&path))
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let message = image(&["report", text(&path), "--zone", "8"])
        .0
        .unwrap_err();
    assert_eq!(message, "--zone 8 is past the last zone (8 zones, 0 to 7)");
}

#[test]
fn read_only_and_offline_zones_print_as_blkzone_prints_them() {
    let zone = |cond| Zone {
        start: 0x400,
        len: 0x200,
        capacity: 0x180,
        wp: u64::MAX,
        zone_type: ZoneType::SequentialWriteRequired,
        cond,
    };
    assert_eq!(
        blkzone_line(&zone(ZoneCondition::ReadOnly)),
        "  start: 0x000000400, len 0x000200, cap 0x000180, wptr 0xfffffffffffffbff reset:0 \
         non-seq:0, zcond:13(ro) [type: 2(SEQ_WRITE_REQUIRED)]"
    );
    assert!(blkzone_line(&zone(ZoneCondition::Offline)).contains("zcond:15(of)"));
}

#[test]
fn json_strings_are_escaped() {
    assert_eq!(
        json_string("a\"b\\c\nd\u{1}é"),
        "\"a\\\"b\\\\c\\nd\\u0001é\""
    );
}

#[test]
fn check_says_clean_warns_of_unreclaimed_data_and_names_damage() {
    let dir = Scratch::new("check");
    let path = worked(&dir, "disk.img");
    let (status, out) = image(&["check", text(&path)]);
    assert_eq!(status, Ok(exit::OK));
    assert_eq!(
        out,
        format!(
            "{}: clean: header valid, 8 zones with both slots valid (the current one A in 4, \
             B in 4), no data above a write pointer\n",
            path.display()
        )
    );
    // Data above zone 5's write pointer: a warning, exit status 1.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[7; 4096], (1 << 20) + 0xa10 * 512)
        .unwrap();
    let (status, out) = image(&["check", text(&path)]);
    assert_eq!(status, Ok(exit::WARNINGS), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("warning: zone 5: 4 KiB stored above its write pointer 0xa00"),
        "{out}"
    );
    assert_eq!(lines[1], format!("{}: 0 errors, 1 warning", path.display()));
    // A flipped bit in the header: one error, exit status 3.
    file.write_all_at(&[0x40], 20).unwrap();
    let before = std::fs::read(&path).unwrap();
    let (status, out) = image(&["check", text(&path)]);
    assert_eq!(status, Ok(exit::CORRUPT), "{out}");
    assert_eq!(
        out,
        format!(
            "error: corrupt header: checksum mismatch\n{}: 1 error, 0 warnings\n",
            path.display()
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // Not an image at all: no check, one line.
    let text_file = dir.path("text");
    std::fs::write(&text_file, b"hello").unwrap();
    let message = image(&["check", text(&text_file)]).0.unwrap_err();
    assert!(
        message.ends_with("is not a vmm zoned image (no VMMZONED magic)"),
        "{message}"
    );
}
