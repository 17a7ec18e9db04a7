use super::*;
use crate::zoned::geometry::GeometryOverrides;
use crate::zoned::image::tests::{geometry, Scratch};
use crate::zoned::image::{crc32, slot_crc, ZonedImage, HEADER_SIZE};
use crate::zoned::state::ZoneOp;
use std::time::{Duration, SystemTime};

/// An image as the device leaves it after some work, its reset zone reclaimed: zone 0
/// (conventional) written, zone 1 CLOSED at +8, zone 2 FULL by writes, zone 3 FULL by a
/// FINISH at +16, zone 4 written and reset, zone 5 opened and closed again, the rest EMPTY.
fn worked(dir: &Scratch, name: &str) -> PathBuf {
    let path = dir.path(name);
    let mut disk = ZonedImage::create(&path, geometry()).unwrap();
    disk.write(0, &[0x11; 4096]).unwrap();
    disk.write(256, &[0x22; 8 * 512]).unwrap();
    disk.write(512, &[0x33; 192 * 512]).unwrap();
    disk.write(768, &[0x44; 16 * 512]).unwrap();
    disk.zone_op(ZoneOp::Finish, 768).unwrap();
    disk.write(1024, &[0x55; 32 * 512]).unwrap();
    disk.flush().unwrap();
    disk.zone_op(ZoneOp::Reset, 1024).unwrap();
    disk.zone_op(ZoneOp::Open, 1280).unwrap();
    disk.zone_op(ZoneOp::Close, 1280).unwrap();
    disk.flush().unwrap();
    disk.reclaim(Duration::MAX);
    path
}

/// Everything about a file that a read-only look must leave alone.
fn snapshot(path: &Path) -> (Vec<u8>, SystemTime, u64) {
    let metadata = std::fs::metadata(path).unwrap();
    (
        std::fs::read(path).unwrap(),
        metadata.modified().unwrap(),
        metadata.blocks(),
    )
}

/// Checks `path`, asserting the file is unchanged; returns the findings' lines.
fn check_lines(path: &Path) -> Vec<String> {
    let before = snapshot(path);
    let report = check(path).unwrap();
    assert_eq!(snapshot(path), before, "check changed {}", path.display());
    report.findings.iter().map(|f| f.to_string()).collect()
}

/// Checks `path` expecting exactly one finding, of `severity`, that contains `expected`.
fn one_finding(path: &Path, severity: Severity, expected: &str) {
    let before = snapshot(path);
    let report = check(path).unwrap();
    assert_eq!(snapshot(path), before, "check changed {}", path.display());
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    let finding = &report.findings[0];
    assert_eq!(finding.severity, severity, "{finding}");
    let line = finding.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(line.contains(expected), "expected {expected:?} in {line:?}");
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn slot_offset(zone: u64, slot: u64) -> u64 {
    HEADER_SIZE + zone * 32 + slot * 16
}

/// A slot with a valid checksum for `zone`.
fn slot(zone: usize, cond: ZoneCondition, wp: u64, generation: u16) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&wp.to_le_bytes());
    s[8] = cond as u8;
    s[10..12].copy_from_slice(&generation.to_le_bytes());
    let crc = slot_crc(zone, &s);
    s[12..16].copy_from_slice(&crc.to_le_bytes());
    s
}

/// Rewrites the header with `edit` applied and a valid checksum.
fn edit_header(path: &Path, edit: impl FnOnce(&mut [u8])) {
    let mut header = std::fs::read(path).unwrap()[..4096].to_vec();
    edit(&mut header);
    let crc = crc32(&header[..124]);
    header[124..128].copy_from_slice(&crc.to_le_bytes());
    patch(path, 0, &header);
}

#[test]
fn an_image_reads_back_as_vmm_opens_it_and_changes_nothing() {
    let dir = Scratch::new("roundtrip");
    let path = worked(&dir, "disk.img");
    let before = snapshot(&path);
    let image = InspectedImage::open(&path).unwrap();
    assert_eq!(snapshot(&path), before);
    assert_eq!(*image.geometry(), geometry());
    let opened = ZonedImage::open(&path, &GeometryOverrides::default()).unwrap();
    for i in 0..8 {
        assert_eq!(image.zones().zone(i), opened.zones().zone(i), "zone {i}");
        assert_eq!(
            image.zones().saved_state(i),
            opened.zones().saved_state(i),
            "zone {i}"
        );
    }
    drop(opened);
    let cond = |i| image.zones().saved_state(i);
    assert_eq!(cond(0), (ZoneCondition::NotWritePointer, 256));
    assert_eq!(cond(1), (ZoneCondition::Closed, 264));
    assert_eq!(cond(2), (ZoneCondition::Full, 704));
    assert_eq!(cond(3), (ZoneCondition::Full, 784));
    assert_eq!(cond(4), (ZoneCondition::Empty, 1024));
    assert_eq!(cond(5), (ZoneCondition::Empty, 1280));
    // Zone 7 was never written: slot A, generation 1, from creation. Zone 1 was written once
    // by a flush: slot B, generation 2. Zone 4 three times: a flush, its reset, and the next
    // flush (a reset is a change like any other).
    assert_eq!(image.current_slot(7), Some(('A', 1)));
    assert_eq!(image.current_slot(1), Some(('B', 2)));
    assert_eq!(image.current_slot(4), Some(('B', 4)));
    assert_eq!(image.current_slot(8), None);
}

#[test]
fn a_fresh_image_and_one_the_device_worked_on_are_clean() {
    let dir = Scratch::new("clean");
    let fresh = dir.path("fresh.img");
    drop(ZonedImage::create(&fresh, geometry()).unwrap());
    let path = worked(&dir, "worked.img");
    for path in [fresh, path] {
        assert_eq!(check_lines(&path), Vec::<String>::new());
        let report = check(&path).unwrap();
        assert_eq!(report.geometry, Some(geometry()));
        assert_eq!(report.current_slots[0] + report.current_slots[1], 8);
        assert_eq!(report.unreclaimed_bytes, 0);
    }
}

#[test]
fn a_reset_zone_not_yet_reclaimed_is_a_warning_not_an_error() {
    let dir = Scratch::new("unreclaimed");
    let path = dir.path("disk.img");
    let mut disk = ZonedImage::create(&path, geometry()).unwrap();
    disk.write(1024, &[0x55; 64 * 512]).unwrap();
    disk.flush().unwrap();
    disk.zone_op(ZoneOp::Reset, 1024).unwrap();
    // vmm stops without reclaiming, as after a kill.
    drop(disk);
    one_finding(
        &path,
        Severity::Warning,
        "zone 4: 32 KiB stored above its write pointer 0x400",
    );
    assert_eq!(check(&path).unwrap().unreclaimed_bytes, 32 << 10);
    // The image is sound: vmm opens it, and the zone reads as zeros.
    let mut disk = ZonedImage::open(&path, &GeometryOverrides::default()).unwrap();
    let mut buf = [0xEE; 512];
    disk.read(1024, &mut buf).unwrap();
    assert_eq!(buf, [0; 512]);
}

#[test]
fn data_beyond_a_write_pointer_is_found_and_named() {
    let dir = Scratch::new("beyond");
    let path = worked(&dir, "disk.img");
    // Into zone 1 (CLOSED at 264), a page above its write pointer, straight into the file.
    let data_offset = 1 << 20;
    patch(&path, data_offset + 304 * 512, &[0xAB; 4096]);
    one_finding(
        &path,
        Severity::Warning,
        "zone 1: 4 KiB stored above its write pointer 0x108 (zone end 0x200): unreclaimed",
    );
    // The file-system block holding a write pointer also holds what lies above it.
    let path = dir.path("partial.img");
    let mut disk = ZonedImage::create(&path, geometry()).unwrap();
    disk.write(1536, &[0xCD; 3 * 512]).unwrap();
    disk.flush().unwrap();
    drop(disk);
    assert_eq!(check_lines(&path), Vec::<String>::new());
}

#[test]
fn a_flipped_header_byte_is_one_error() {
    let dir = Scratch::new("header");
    let path = worked(&dir, "disk.img");
    patch(&path, 20, &[0x40]);
    one_finding(
        &path,
        Severity::Error,
        "error: corrupt header: checksum mismatch",
    );
    // A valid checksum over an impossible geometry.
    let path = worked(&dir, "geometry.img");
    edit_header(&path, |h| h[24..32].copy_from_slice(&300u64.to_le_bytes()));
    one_finding(
        &path,
        Severity::Error,
        "corrupt header: zone size of 300 sectors",
    );
}

#[test]
fn a_flipped_byte_in_either_slot_is_one_error_naming_the_slot() {
    let dir = Scratch::new("slots");
    // Zone 7 was never written: slot A holds generation 1, slot B generation 0, both EMPTY.
    for (slot, current, generation) in [(0u64, 'B', 0), (1, 'A', 1)] {
        let path = worked(&dir, &format!("slot{slot}.img"));
        let offset = slot_offset(7, slot) + 3;
        let byte = std::fs::read(&path).unwrap()[offset as usize];
        patch(&path, offset, &[byte ^ 0x04]);
        let name = if slot == 0 { 'A' } else { 'B' };
        one_finding(
            &path,
            Severity::Error,
            &format!(
                "error: zone 7: slot {name} is corrupt (checksum mismatch); the zone's state is \
                 slot {current}'s (generation {generation}), with which vmm still opens the image"
            ),
        );
    }
    // Zone 1's newer state (slot B) lost: it is EMPTY again, and its data above that.
    let path = worked(&dir, "newer.img");
    patch(&path, slot_offset(1, 1) + 3, &[0xFF]);
    let lines = check_lines(&path);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with("error: zone 1: slot B is corrupt"),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("warning: zone 1: 4 KiB stored above"),
        "{lines:#?}"
    );
    // Both slots of a zone: vmm refuses the image.
    let path = worked(&dir, "both.img");
    patch(&path, slot_offset(2, 0) + 3, &[0xFF]);
    patch(&path, slot_offset(2, 1) + 3, &[0xFF]);
    one_finding(
        &path,
        Severity::Error,
        "zone 2: both slots are corrupt (A: checksum mismatch; B: checksum mismatch); vmm \
         refuses to open the image",
    );
    // A valid checksum over a reserved byte or an unknown condition.
    let path = worked(&dir, "reserved.img");
    let mut bad = slot(6, ZoneCondition::Empty, 1536, 0);
    bad[9] = 7;
    let crc = slot_crc(6, &bad);
    bad[12..16].copy_from_slice(&crc.to_le_bytes());
    patch(&path, slot_offset(6, 1), &bad);
    one_finding(
        &path,
        Severity::Error,
        "zone 6: slot B is corrupt (reserved byte 0x07, not 0)",
    );
    let path = worked(&dir, "condition.img");
    let mut bad = slot(6, ZoneCondition::Empty, 1536, 0);
    bad[8] = 9;
    let crc = slot_crc(6, &bad);
    bad[12..16].copy_from_slice(&crc.to_le_bytes());
    patch(&path, slot_offset(6, 1), &bad);
    one_finding(
        &path,
        Severity::Error,
        "zone 6: slot B is corrupt (unknown condition 9)",
    );
    // Generations two apart.
    let path = worked(&dir, "generations.img");
    patch(
        &path,
        slot_offset(6, 1),
        &slot(6, ZoneCondition::Empty, 1536, 5),
    );
    one_finding(
        &path,
        Severity::Error,
        "zone 6: the slots' generations 1 (A) and 5 (B) are not consecutive",
    );
}

#[test]
fn a_write_pointer_beyond_capacity_or_an_impossible_state_is_one_error() {
    let dir = Scratch::new("states");
    let path = worked(&dir, "capacity.img");
    // Zone 6 (sectors 0x600..0x700, capacity 192 = 0xc0): CLOSED at 0x6c8.
    patch(
        &path,
        slot_offset(6, 0),
        &slot(6, ZoneCondition::Closed, 0x6c8, 1),
    );
    patch(
        &path,
        slot_offset(6, 1),
        &slot(6, ZoneCondition::Closed, 0x6c8, 2),
    );
    one_finding(
        &path,
        Severity::Error,
        "zone 6: slot B (current) holds CLOSED with write pointer 0x6c8: the write pointer is \
         beyond the zone's capacity, which ends at 0x6c0; vmm refuses to open the image",
    );
    let path = worked(&dir, "before.img");
    patch(
        &path,
        slot_offset(6, 1),
        &slot(6, ZoneCondition::Closed, 0x10, 2),
    );
    one_finding(&path, Severity::Error, "before the zone's start, 0x600");
    let path = worked(&dir, "empty.img");
    patch(
        &path,
        slot_offset(6, 1),
        &slot(6, ZoneCondition::Empty, 0x608, 2),
    );
    one_finding(
        &path,
        Severity::Error,
        "holds EMPTY with write pointer 0x608: that condition cannot have that write pointer",
    );
    let path = worked(&dir, "conventional.img");
    patch(
        &path,
        slot_offset(0, 1),
        &slot(0, ZoneCondition::Empty, 0, 2),
    );
    one_finding(
        &path,
        Severity::Error,
        "zone 0: slot B (current) holds EMPTY",
    );
    // Each zone possible, but more of them active than max-active=3.
    let path = worked(&dir, "active.img");
    for zone in 4..=6u64 {
        let wp = zone * 256 + 8;
        patch(
            &path,
            slot_offset(zone, 1),
            &slot(zone as usize, ZoneCondition::Closed, wp, 9),
        );
        patch(
            &path,
            slot_offset(zone, 0),
            &slot(zone as usize, ZoneCondition::Closed, wp, 8),
        );
    }
    let lines = check_lines(&path);
    assert_eq!(
        lines,
        [
            "error: 4 zones are active (open or closed), more than the device's max-active 3; \
          vmm refuses to open the image"
        ]
    );
}

#[test]
fn several_problems_are_one_line_each() {
    let dir = Scratch::new("several");
    let path = worked(&dir, "disk.img");
    patch(&path, slot_offset(6, 1) + 1, &[0x80]);
    patch(&path, slot_offset(7, 0) + 1, &[0x80]);
    patch(&path, slot_offset(7, 1) + 1, &[0x80]);
    patch(&path, (1 << 20) + 5 * 256 * 512 + 64 * 512, &[1; 4096]);
    let report = check(&path).unwrap();
    let lines: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("error: zone 6: slot B is corrupt"),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("error: zone 7: both slots"),
        "{lines:#?}"
    );
    assert!(lines[2].starts_with("warning: zone 5: 4 KiB"), "{lines:#?}");
    assert_eq!((report.errors(), report.warnings()), (2, 1));
}

#[test]
fn wrong_sizes_are_errors_and_the_table_is_still_checked() {
    let dir = Scratch::new("sizes");
    let path = worked(&dir, "long.img");
    let size = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(size + 4096)
        .unwrap();
    patch(&path, slot_offset(6, 1) + 1, &[0x80]);
    let lines = check_lines(&path);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(
        lines[0],
        format!("error: the file is {} bytes, expected {size}", size + 4096)
    );
    assert!(lines[1].contains("zone 6: slot B is corrupt"), "{lines:#?}");
    let path = worked(&dir, "short.img");
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(size - 512)
        .unwrap();
    one_finding(
        &path,
        Severity::Error,
        &format!(
            "the file is truncated: {} bytes, expected {size}",
            size - 512
        ),
    );
    let path = worked(&dir, "header.img");
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1000)
        .unwrap();
    one_finding(
        &path,
        Severity::Error,
        "the file is truncated: 1000 bytes, expected 4096",
    );
}

/// Both ways of looking fail with one line containing `expected`, and the file is unchanged.
fn refused(path: &Path, expected: &str) {
    let metadata = path.symlink_metadata().ok();
    let before = metadata.as_ref().map(|m| m.modified().unwrap());
    // Not a device's contents: that could be a whole disk.
    let regular = metadata.is_some_and(|m| m.is_file());
    let contents = regular.then(|| std::fs::read(path).unwrap());
    let messages = [
        InspectedImage::open(path).err().unwrap().to_string(),
        check(path).unwrap_err().to_string(),
    ];
    for message in messages {
        assert!(!message.contains('\n'), "{message}");
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message:?}"
        );
    }
    assert_eq!(
        path.symlink_metadata().ok().map(|m| m.modified().unwrap()),
        before
    );
    assert_eq!(regular.then(|| std::fs::read(path).unwrap()), contents);
}

#[test]
fn foreign_and_unusable_files_are_refused_untouched() {
    let dir = Scratch::new("foreign");
    refused(&dir.path("missing.img"), "No such file or directory");
    refused(&dir.0, "is a directory, not a zoned image file");
    refused(Path::new("/dev/null"), "/dev/null is a character device");
    let fifo = dir.path("fifo");
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated name, which lives for the call.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    refused(&fifo, "is a FIFO");
    let text = dir.path("text");
    std::fs::write(&text, vec![b'x'; 10000]).unwrap();
    refused(&text, "is not a vmm zoned image (no VMMZONED magic)");
    let empty = dir.path("empty");
    std::fs::write(&empty, b"").unwrap();
    refused(&empty, "is not a vmm zoned image");
    let path = worked(&dir, "version.img");
    edit_header(&path, |h| h[8..12].copy_from_slice(&2u32.to_le_bytes()));
    refused(&path, "has format version 2; only version 1 is supported");
    let block_device = std::fs::read_dir("/dev").ok().and_then(|entries| {
        entries.flatten().map(|entry| entry.path()).find(|path| {
            path.metadata()
                .is_ok_and(|m| m.file_type().is_block_device())
        })
    });
    match block_device {
        Some(device) => refused(&device, "is a block device, not a zoned image file"),
        None => eprintln!("no block device in /dev: that case is not tried"),
    }
}

#[test]
fn an_image_in_use_by_vmm_is_refused() {
    let dir = Scratch::new("in-use");
    let path = worked(&dir, "disk.img");
    let disk = ZonedImage::open(&path, &GeometryOverrides::default()).unwrap();
    let message = InspectedImage::open(&path).err().unwrap().to_string();
    assert!(
        message.contains("is in use by another process"),
        "{message}"
    );
    assert!(check(&path).is_err());
    drop(disk);
    // Two lookers share the lock.
    let first = InspectedImage::open(&path).unwrap();
    assert!(check(&path).unwrap().findings.is_empty());
    drop(first);
}

#[test]
fn a_report_refuses_what_vmm_refuses() {
    let dir = Scratch::new("report-refuses");
    let path = worked(&dir, "disk.img");
    patch(&path, slot_offset(2, 0) + 3, &[0xFF]);
    patch(&path, slot_offset(2, 1) + 3, &[0xFF]);
    let before = snapshot(&path);
    let message = InspectedImage::open(&path).err().unwrap().to_string();
    assert!(
        message.contains("corrupt zone table at zone 2: both slots are corrupt"),
        "{message}"
    );
    assert_eq!(snapshot(&path), before);
}

#[test]
fn sizes_for_people() {
    assert_eq!(byte_size(4096), "4 KiB");
    assert_eq!(byte_size(3 << 20), "3 MiB");
    assert_eq!(byte_size(1536), "1536 bytes");
    assert_eq!(byte_size(5 << 40), "5 TiB");
}
