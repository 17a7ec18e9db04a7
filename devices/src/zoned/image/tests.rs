use super::*;
use crate::zoned::geometry::{GeometryOption, ZonedDiskOptions};
use crate::zoned::state::{ZoneError, ZoneOp};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A scratch directory removed on drop (also for the `inspect` tests).
pub(in crate::zoned) struct Scratch(pub(in crate::zoned) PathBuf);

impl Scratch {
    pub(in crate::zoned) fn new(name: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vmm-zoned-{}-{}-{}",
            name,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub(in crate::zoned) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 8 zones of 256 sectors (128 KiB, whole file-system blocks), zone capacity 192, zone 0
/// conventional, max 2 open / 3 active (also for the `inspect` tests).
pub(in crate::zoned) fn geometry() -> ZonedGeometry {
    ZonedGeometry::new(ZonedGeometry {
        capacity: 8 * 256,
        zone_size: 256,
        zone_capacity: 192,
        conventional_zones: 1,
        max_open: 2,
        max_active: 3,
        max_append_sectors: 64,
        write_granularity: 512,
        logical_block_size: 512,
    })
    .unwrap()
}

fn none() -> GeometryOverrides {
    GeometryOverrides::default()
}

/// Sector contents that say where and when they were written: le64 sector, le64 epoch.
fn pattern(sector: u64, nr: u64, epoch: u64) -> Vec<u8> {
    let mut v = vec![0u8; (nr * 512) as usize];
    for (i, chunk) in v.chunks_exact_mut(512).enumerate() {
        chunk[0..8].copy_from_slice(&(sector + i as u64).to_le_bytes());
        chunk[8..16].copy_from_slice(&epoch.to_le_bytes());
        chunk[16..].fill(0xA5);
    }
    v
}

fn read(d: &mut ZonedImage, sector: u64, nr: u64) -> Vec<u8> {
    let mut buf = vec![0xEEu8; (nr * 512) as usize];
    d.read(sector, &mut buf).unwrap();
    buf
}

impl ImageFile {
    /// The bytes stored for `nr` sectors at `sector`, whatever the zone state says.
    fn read_raw(&self, sector: u64, nr: u64) -> Vec<u8> {
        let mut buf = vec![0u8; (nr * 512) as usize];
        self.file
            .read_exact_at(&mut buf, self.data_pos(sector))
            .unwrap();
        buf
    }
}

fn state(d: &ZonedImage, i: usize) -> (ZoneCondition, u64) {
    d.zones().saved_state(i)
}

#[test]
fn crc32_matches_zlib() {
    assert_eq!(crc32(b""), 0);
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    // Every length and alignment against the bitwise definition.
    let bitwise = |data: &[u8]| {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    0xEDB8_8320 ^ (crc >> 1)
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    };
    let data: Vec<u8> = (0..300u32).map(|i| (i * 131 + 7) as u8).collect();
    for start in 0..9 {
        for end in start..data.len() {
            assert_eq!(
                crc32(&data[start..end]),
                bitwise(&data[start..end]),
                "{start}..{end}"
            );
        }
    }
}

#[test]
fn create_write_reopen_round_trip() {
    let dir = Scratch::new("roundtrip");
    let path = dir.path("disk.img");
    let g = geometry();
    {
        let mut d = ZonedImage::create(&path, g).unwrap();
        d.write(3, &pattern(3, 5, 0)).unwrap(); // conventional
        d.write(256, &pattern(256, 10, 0)).unwrap(); // zone 1 implicit open
        assert_eq!(d.append(512, &pattern(512, 4, 0)), Ok(512)); // zone 2
        d.zone_op(ZoneOp::Close, 512).unwrap(); // zone 2 closed
        d.zone_op(ZoneOp::Finish, 768).unwrap(); // zone 3 finished empty
        d.write(1024, &pattern(1024, 192, 0)).unwrap(); // zone 4 full by writes
        d.write(1280, &pattern(1280, 8, 0)).unwrap();
        d.zone_op(ZoneOp::Finish, 1280).unwrap(); // zone 5 finished with data
        d.zone_op(ZoneOp::Open, 1536).unwrap(); // zone 6 explicitly open, empty
        d.set_zone_condition(1792, ZoneCondition::ReadOnly).unwrap(); // zone 7
        d.flush().unwrap();
        assert_eq!(state(&d, 1), (ZoneCondition::ImplicitOpen, 266));
    }
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(size, Layout::of(&g).file_size);
    let mut d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(*d.geometry(), g);
    assert_eq!(
        state(&d, 1),
        (ZoneCondition::Closed, 266),
        "open comes back closed"
    );
    assert_eq!(state(&d, 2), (ZoneCondition::Closed, 516));
    assert_eq!(state(&d, 3), (ZoneCondition::Full, 768));
    assert_eq!(state(&d, 4), (ZoneCondition::Full, 1216));
    assert_eq!(state(&d, 5), (ZoneCondition::Full, 1288));
    assert_eq!(
        state(&d, 6),
        (ZoneCondition::Empty, 1536),
        "empty open comes back empty"
    );
    assert_eq!(state(&d, 7).0, ZoneCondition::ReadOnly);
    assert_eq!((d.zones().open_zones(), d.zones().active_zones()), (0, 2));
    assert_eq!(read(&mut d, 3, 5), pattern(3, 5, 0));
    assert!(read(&mut d, 0, 3).iter().all(|&b| b == 0));
    assert_eq!(read(&mut d, 256, 10), pattern(256, 10, 0));
    assert!(
        read(&mut d, 266, 246).iter().all(|&b| b == 0),
        "zeros above wp"
    );
    assert_eq!(read(&mut d, 512, 4), pattern(512, 4, 0));
    assert!(read(&mut d, 768, 256).iter().all(|&b| b == 0));
    assert_eq!(read(&mut d, 1024, 192), pattern(1024, 192, 0));
    assert_eq!(read(&mut d, 1280, 8), pattern(1280, 8, 0));
    assert!(read(&mut d, 1288, 248).iter().all(|&b| b == 0));
    // Writing continues where it stopped.
    d.write(266, &pattern(266, 2, 0)).unwrap();
    assert_eq!(state(&d, 1), (ZoneCondition::ImplicitOpen, 268));
    // Matching explicit options are fine.
    drop(d);
    let mut given = none();
    given.set(GeometryOption::Size, 8 * 256 * 512);
    given.set(GeometryOption::MaxOpen, 2);
    given.set(GeometryOption::ZoneCapacity, 192 * 512);
    ZonedImage::open(&path, &given).unwrap();
}

#[test]
fn create_refuses_existing_file() {
    let dir = Scratch::new("exists");
    let path = dir.path("disk.img");
    std::fs::write(&path, b"precious").unwrap();
    let err = ZonedImage::create(&path, geometry()).unwrap_err();
    assert!(matches!(err, ImageError::Exists(_)), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    let mut bad = geometry();
    bad.zone_size = 100;
    let err = ZonedImage::create(&dir.path("other.img"), bad).unwrap_err();
    assert!(err.to_string().contains("100"), "{err}");
    assert!(!dir.path("other.img").exists());
}

/// Opens `path` expecting an error, checks the file is byte-for-byte unchanged, returns the
/// message.
fn open_fails(path: &Path, given: &GeometryOverrides) -> String {
    let before = std::fs::read(path).unwrap();
    let err = ZonedImage::open(path, given).unwrap_err();
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "file changed by a failed open"
    );
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    msg
}

fn fresh(dir: &Scratch, name: &str) -> PathBuf {
    let path = dir.path(name);
    let mut d = ZonedImage::create(&path, geometry()).unwrap();
    d.write(256, &pattern(256, 4, 0)).unwrap();
    d.flush().unwrap();
    path
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

#[test]
fn conflicting_options_are_named() {
    let dir = Scratch::new("conflict");
    let path = fresh(&dir, "disk.img");
    let mut given = none();
    given.set(GeometryOption::ZoneSize, 1 << 20);
    let msg = open_fails(&path, &given);
    assert!(
        msg.contains("zone-size=131072") && msg.contains("zone-size=1048576"),
        "{msg}"
    );
    let mut given = none();
    given.set(GeometryOption::MaxActive, 7);
    let msg = open_fails(&path, &given);
    assert!(
        msg.contains("max-active=3") && msg.contains("max-active=7"),
        "{msg}"
    );
}

#[test]
fn foreign_truncated_and_corrupt_files_are_refused_untouched() {
    let dir = Scratch::new("corrupt");
    let foreign = dir.path("foreign");
    std::fs::write(&foreign, vec![b'x'; 10000]).unwrap();
    assert!(open_fails(&foreign, &none()).contains("not a vmm zoned image"));
    let empty = dir.path("empty");
    std::fs::write(&empty, b"").unwrap();
    assert!(open_fails(&empty, &none()).contains("not a vmm zoned image"));

    let path = fresh(&dir, "short-header.img");
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(1000).unwrap();
    assert!(open_fails(&path, &none()).contains("truncated"));

    let path = fresh(&dir, "short-data.img");
    let size = std::fs::metadata(&path).unwrap().len();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(size - 512).unwrap();
    let msg = open_fails(&path, &none());
    assert!(
        msg.contains("truncated") && msg.contains(&size.to_string()),
        "{msg}"
    );

    let path = fresh(&dir, "long.img");
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(size + 4096).unwrap();
    assert!(open_fails(&path, &none()).contains("expected"));

    let path = fresh(&dir, "bitflip.img");
    patch(&path, 20, &[0x40]);
    assert!(open_fails(&path, &none()).contains("corrupt header"));

    let path = fresh(&dir, "version.img");
    let mut header = std::fs::read(&path).unwrap()[..4096].to_vec();
    header[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32(&header[..HEADER_CRC_OFFSET]);
    header[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    patch(&path, 0, &header);
    assert!(open_fails(&path, &none()).contains("version 2"));

    // A valid checksum over an impossible geometry is still a corrupt header.
    let path = fresh(&dir, "geometry.img");
    let mut header = std::fs::read(&path).unwrap()[..4096].to_vec();
    header[24..32].copy_from_slice(&300u64.to_le_bytes());
    let crc = crc32(&header[..HEADER_CRC_OFFSET]);
    header[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    patch(&path, 0, &header);
    let msg = open_fails(&path, &none());
    assert!(
        msg.contains("corrupt header") && msg.contains("300"),
        "{msg}"
    );

    let path = fresh(&dir, "table.img");
    patch(&path, HEADER_SIZE + 32 + 3, &[0xFF]);
    patch(&path, HEADER_SIZE + 48 + 3, &[0xFF]);
    let msg = open_fails(&path, &none());
    assert!(msg.contains("zone table at zone 1"), "{msg}");

    // Valid slots describing an impossible state.
    let path = fresh(&dir, "state.img");
    patch(
        &path,
        HEADER_SIZE + 2 * 32,
        &encode_slot(2, ZoneCondition::Closed, 999_999, 7),
    );
    patch(
        &path,
        HEADER_SIZE + 2 * 32 + 16,
        &encode_slot(2, ZoneCondition::Closed, 999_999, 6),
    );
    assert!(open_fails(&path, &none()).contains("zone 2"));

    // Valid slots, each state possible, but together more active zones than max-active=3.
    let path = fresh(&dir, "active.img");
    for zone in 1..=4u64 {
        let wp = zone * 256 + 8;
        for (slot, generation) in [(0, 7), (1, 6)] {
            patch(
                &path,
                HEADER_SIZE + zone * 32 + slot * 16,
                &encode_slot(zone as usize, ZoneCondition::Closed, wp, generation),
            );
        }
    }
    let before = std::fs::read(&path).unwrap();
    let msg = open_fails(&path, &none());
    assert!(
        msg.contains("4 zones are active") && msg.contains("max-active 3"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the refused image changed"
    );
}

#[test]
fn torn_slot_falls_back_to_the_older_state() {
    let dir = Scratch::new("torn");
    let path = dir.path("disk.img");
    let mut d = ZonedImage::create(&path, geometry()).unwrap();
    d.write(256, &pattern(256, 4, 0)).unwrap();
    d.flush().unwrap(); // zone 1 slot B: closed, wp 260
    d.write(260, &pattern(260, 4, 0)).unwrap();
    d.flush().unwrap(); // zone 1 slot A: closed, wp 264
    drop(d);
    // Tear slot A of zone 1 (the newest).
    patch(&path, HEADER_SIZE + 32 + 12, &[0, 0, 0, 0]);
    let mut d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(state(&d, 1), (ZoneCondition::Closed, 260));
    assert_eq!(read(&mut d, 256, 4), pattern(256, 4, 0));
    // Writing on from the older state works and persists over the torn slot.
    d.write(260, &pattern(260, 2, 1)).unwrap();
    d.flush().unwrap();
    drop(d);
    let d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(state(&d, 1), (ZoneCondition::Closed, 262));
}

#[test]
fn unflushed_writes_do_not_advance_the_durable_wp() {
    let dir = Scratch::new("noflush");
    let path = dir.path("disk.img");
    let mut d = ZonedImage::create(&path, geometry()).unwrap();
    d.write(256, &pattern(256, 8, 0)).unwrap();
    d.flush().unwrap();
    d.write(264, &pattern(264, 8, 0)).unwrap();
    d.zone_op(ZoneOp::Finish, 512).unwrap();
    drop(d); // a kill: no flush
    let mut d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(state(&d, 1), (ZoneCondition::Closed, 264));
    assert_eq!(
        state(&d, 2),
        (ZoneCondition::Empty, 512),
        "unflushed finish is lost"
    );
    assert_eq!(read(&mut d, 256, 8), pattern(256, 8, 0));
    assert!(read(&mut d, 264, 8).iter().all(|&b| b == 0));
}

#[test]
fn reset_is_durable_before_new_writes() {
    let dir = Scratch::new("reset");
    let path = dir.path("disk.img");
    let mut d = ZonedImage::create(&path, geometry()).unwrap();
    d.write(256, &pattern(256, 16, 0)).unwrap();
    d.flush().unwrap();
    d.zone_op(ZoneOp::Reset, 256).unwrap();
    d.write(256, &pattern(256, 4, 1)).unwrap();
    drop(d); // crash before any flush: the old wp must not cover the new data
    let mut d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(state(&d, 1), (ZoneCondition::Empty, 256));
    assert!(read(&mut d, 256, 16).iter().all(|&b| b == 0));
    // reset_all, likewise.
    d.write(256, &pattern(256, 4, 2)).unwrap();
    d.write(512, &pattern(512, 4, 0)).unwrap();
    d.flush().unwrap();
    d.reset_all().unwrap();
    drop(d);
    let d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(state(&d, 1), (ZoneCondition::Empty, 256));
    assert_eq!(state(&d, 2), (ZoneCondition::Empty, 512));
}

/// Checks what a crash at a sync point would leave: the image opens, and in every sequential
/// zone all sectors below the write pointer hold data written since the zone's last durable
/// reset (one epoch, right sector numbers).
fn check_durable_image(path: &Path) {
    let mut d = ZonedImage::open(path, &none()).unwrap();
    for i in 1..d.zones().len() {
        let (cond, wp) = state(&d, i);
        let start = d.geometry().zone_start(i);
        if cond == ZoneCondition::Empty || wp == start {
            continue;
        }
        let data = read(&mut d, start, wp - start);
        let epoch = u64::from_le_bytes(data[8..16].try_into().unwrap());
        for (k, chunk) in data.chunks_exact(512).enumerate() {
            let sector = u64::from_le_bytes(chunk[0..8].try_into().unwrap());
            let e = u64::from_le_bytes(chunk[8..16].try_into().unwrap());
            assert_eq!(
                sector,
                start + k as u64,
                "zone {i}: wrong or missing data below wp {wp}"
            );
            assert_eq!(e, epoch, "zone {i}: data from before a reset below wp {wp}");
        }
    }
}

#[test]
fn crash_at_every_sync_point_keeps_wp_behind_durable_data() {
    use crate::zoned::state::tests::Rng;
    let dir = Scratch::new("crash");
    let path = dir.path("disk.img");
    let snapshot = dir.path("snapshot.img");
    let g = geometry();
    let mut d = ZonedImage::create(&path, g).unwrap();
    let syncs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = syncs.clone();
    // A model of the host page cache: `durable` is what survives a crash for sure, `pending`
    // what was written since the last fdatasync. At every fdatasync, check the worst crash
    // just before it: every pending zone-table write landed, no pending data did. Then check
    // the state right after it.
    let mut durable = std::fs::read(&path).unwrap();
    let mut pending: Vec<(u64, Vec<u8>, bool)> = Vec::new();
    let check = move |image: &[u8]| {
        let _ = std::fs::remove_file(&snapshot);
        std::fs::write(&snapshot, image).unwrap();
        check_durable_image(&snapshot);
    };
    let apply = |image: &mut Vec<u8>, offset: u64, data: &[u8]| {
        let at = offset as usize;
        image[at..at + data.len()].copy_from_slice(data);
    };
    d.storage_mut().io_hook = Some(Box::new(move |event: IoEvent<'_>| match event {
        IoEvent::Write {
            offset,
            data,
            table,
        } => pending.push((offset, data.to_vec(), table)),
        IoEvent::Punch { offset, len } => pending.push((offset, vec![0; len as usize], false)),
        IoEvent::Sync => {
            let mut worst = durable.clone();
            for (offset, data, _) in pending.iter().filter(|p| p.2) {
                apply(&mut worst, *offset, data);
            }
            check(&worst);
            for (offset, data, _) in pending.drain(..) {
                apply(&mut durable, offset, &data);
            }
            check(&durable);
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }));
    let mut rng = Rng::new(7);
    let mut epochs = [0u64; 8];
    for _ in 0..400 {
        let zone = 1 + rng.below(7) as usize;
        let start = g.zone_start(zone);
        let (cond, wp) = state(&d, zone);
        match rng.below(10) {
            0..=4 => {
                let nr = 1 + rng.below(24);
                if d.write(wp, &pattern(wp, nr, epochs[zone])).is_err() {
                    // Full, out of capacity or out of resources: make room.
                    if cond == ZoneCondition::Full || rng.below(2) == 0 {
                        d.zone_op(ZoneOp::Reset, start).unwrap();
                        epochs[zone] += 1;
                    } else {
                        let _ = d.zone_op(ZoneOp::Finish, start);
                    }
                }
            }
            5 => {
                let nr = 1 + rng.below(8);
                let _ = d.append(start, &pattern(wp, nr, epochs[zone]));
            }
            6 => {
                d.zone_op(ZoneOp::Reset, start).unwrap();
                epochs[zone] += 1;
            }
            7 => {
                let _ = d.zone_op(ZoneOp::Finish, start);
            }
            8 if rng.below(2) == 0 => {
                d.reclaim(Duration::MAX);
            }
            _ => d.flush().unwrap(),
        }
    }
    d.flush().unwrap();
    let expected: Vec<_> = (0..8).map(|i| state(&d, i)).collect();
    d.storage_mut().io_hook = None;
    drop(d);
    assert!(
        syncs.load(std::sync::atomic::Ordering::Relaxed) > 50,
        "only {} sync points",
        syncs.load(std::sync::atomic::Ordering::Relaxed)
    );
    let d = ZonedImage::open(&path, &none()).unwrap();
    for (i, (cond, wp)) in expected.into_iter().enumerate() {
        let cond = match cond {
            ZoneCondition::ImplicitOpen | ZoneCondition::ExplicitOpen => ZoneCondition::Closed,
            c => c,
        };
        let got = state(&d, i);
        if got.1 == g.zone_start(i) && cond == ZoneCondition::Closed {
            continue;
        }
        assert_eq!(got, (cond, wp), "zone {i} after the final flush");
    }
    drop(d);
    check_durable_image(&path);
}

#[test]
fn a_second_open_of_an_image_in_use_is_refused_and_changes_nothing() {
    let dir = Scratch::new("lock");
    let path = dir.path("disk.img");
    let first = ZonedImage::create(&path, geometry()).unwrap();
    let before = std::fs::read(&path).unwrap();
    match ZonedImage::open(&path, &none()) {
        Err(ImageError::InUse(p)) => assert_eq!(p, path),
        other => panic!("expected InUse, got {:?}", other.map(|_| ())),
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    drop(first);
    ZonedImage::open(&path, &none()).unwrap();
}

/// `n` zones of 8 sectors, the first `conventional` of them conventional, no limits.
fn many_tiny_zones(n: u64, conventional: u32) -> ZonedGeometry {
    ZonedGeometry::new(ZonedGeometry {
        capacity: n * 8,
        zone_size: 8,
        zone_capacity: 8,
        conventional_zones: conventional,
        max_open: 0,
        max_active: 0,
        max_append_sectors: 8,
        write_granularity: 512,
        logical_block_size: 512,
    })
    .unwrap()
}

#[test]
fn a_table_read_by_several_threads_reports_its_lowest_corrupt_zone() {
    let dir = Scratch::new("parallel-table");
    let path = dir.path("many.img");
    let n = 3 * PARALLEL_TABLE_ZONES as u64;
    let g = many_tiny_zones(n, 0);
    let mut d = ZonedImage::create(&path, g).unwrap();
    let last = n - 1;
    d.write(last * 8, &pattern(last * 8, 3, 0)).unwrap();
    d.flush().unwrap();
    drop(d);
    let d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(
        state(&d, last as usize),
        (ZoneCondition::Closed, last * 8 + 3)
    );
    drop(d);
    // Both slots of a zone near the end and of one near the start: the start's is reported,
    // whichever thread finishes first.
    for zone in [n - 10, 10] {
        patch(&path, HEADER_SIZE + zone * 32 + 3, &[0xFF]);
        patch(&path, HEADER_SIZE + zone * 32 + 19, &[0xFF]);
    }
    let msg = ZonedImage::open(&path, &none()).unwrap_err().to_string();
    assert!(msg.contains("zone table at zone 10:"), "{msg}");
}

#[test]
fn hundred_thousand_zones_open_and_report_fast() {
    let dir = Scratch::new("many");
    let path = dir.path("many.img");
    let n = 100_000u64;
    let g = many_tiny_zones(n, 10);
    let t = Instant::now();
    let mut d = ZonedImage::create(&path, g).unwrap();
    let created = t.elapsed();
    for zone in (10..n).step_by(997) {
        d.write(zone * 8, &pattern(zone * 8, 3, 0)).unwrap();
    }
    d.zone_op(ZoneOp::Finish, (n - 1) * 8).unwrap();
    d.flush().unwrap();
    drop(d);
    let t = Instant::now();
    let mut d = ZonedImage::open(&path, &none()).unwrap();
    let opened = t.elapsed();
    let t = Instant::now();
    let mut seen = 0u64;
    let mut buf = vec![0u8; 64 + 64 * 4096];
    let mut from = 0u64;
    while from < g.capacity {
        let (nr, _) = d.report_into(from, &mut buf).unwrap();
        for k in 0..nr as usize {
            let desc = &buf[64 + 64 * k..128 + 64 * k];
            let start = u64::from_le_bytes(desc[8..16].try_into().unwrap());
            let wp = u64::from_le_bytes(desc[16..24].try_into().unwrap());
            let zone = seen;
            assert_eq!(start, zone * 8);
            let expected_wp = if zone < 10 || zone == n - 1 {
                start + 8
            } else if (zone - 10) / 997 * 997 == zone - 10 {
                start + 3
            } else {
                start
            };
            assert_eq!(wp, expected_wp, "zone {zone}");
            seen += 1;
        }
        from += nr * 8;
    }
    let reported = t.elapsed();
    assert_eq!(seen, n);
    let t = Instant::now();
    d.reset_all().unwrap();
    let reset = t.elapsed();
    assert_eq!(d.zones().active_zones(), 0);
    println!(
        "100000 zones: create {created:?}, open {opened:?}, report all {reported:?}, reset all {reset:?}"
    );
    assert_eq!(d.append(99 * 8, &[0u8; 512]), Ok(99 * 8));
    assert_eq!(
        d.write(99 * 8, &[0u8; 512]),
        Err(ZoneError::UnalignedWritePointer)
    );
}

#[test]
fn open_or_create_from_option_string() {
    let dir = Scratch::new("cli");
    let path = dir.path("cli.img");
    let text = format!("{},size=8M,zone-size=1M,max-open=3", path.display());
    let options = ZonedDiskOptions::parse(&text).unwrap();
    let mut d = ZonedImage::open_or_create(&options).unwrap();
    assert_eq!(d.geometry().nr_zones(), 8);
    d.write(0, &pattern(0, 8, 0)).unwrap();
    d.flush().unwrap();
    drop(d);
    // Reopen with no options, the same ones, and a conflicting one.
    let bare = ZonedDiskOptions::parse(&path.display().to_string()).unwrap();
    let mut d = ZonedImage::open_or_create(&bare).unwrap();
    assert_eq!(d.geometry().max_open, 3);
    assert_eq!(read(&mut d, 0, 8), pattern(0, 8, 0));
    drop(d);
    ZonedImage::open_or_create(&options).unwrap();
    let other = ZonedDiskOptions::parse(&format!("{},max-open=4", path.display())).unwrap();
    let before = std::fs::read(&path).unwrap();
    let msg = ZonedImage::open_or_create(&other).unwrap_err().to_string();
    assert!(
        msg.contains("max-open=3") && msg.contains("max-open=4"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let bad = ZonedDiskOptions::parse(&format!("{},zone-size=3M", dir.path("new.img").display()))
        .unwrap();
    let msg = ZonedImage::open_or_create(&bad).unwrap_err().to_string();
    assert!(msg.contains("6144"), "{msg}");
}

#[test]
fn only_flush_and_reset_sync() {
    let dir = Scratch::new("syncs");
    let path = dir.path("disk.img");
    let mut d = ZonedImage::create(&path, geometry()).unwrap();
    let syncs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = syncs.clone();
    d.storage_mut().io_hook = Some(Box::new(move |event: IoEvent<'_>| {
        if let IoEvent::Sync = event {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }));
    d.write(256, &pattern(256, 4, 0)).unwrap();
    d.append(512, &pattern(512, 4, 0)).unwrap();
    d.zone_op(ZoneOp::Open, 768).unwrap();
    d.zone_op(ZoneOp::Close, 768).unwrap(); // explicit open, empty: back to EMPTY
    d.zone_op(ZoneOp::Finish, 512).unwrap();
    assert_eq!(syncs.load(std::sync::atomic::Ordering::Relaxed), 0);
    d.zone_op(ZoneOp::Reset, 256).unwrap();
    assert_eq!(syncs.load(std::sync::atomic::Ordering::Relaxed), 1);
    d.zone_op(ZoneOp::Reset, 256).unwrap(); // already empty: nothing to do
    assert_eq!(syncs.load(std::sync::atomic::Ordering::Relaxed), 1);
    d.flush().unwrap();
    assert_eq!(
        syncs.load(std::sync::atomic::Ordering::Relaxed),
        3,
        "data, then zone table"
    );
}

/// The test geometry without open or active limits.
fn unlimited() -> ZonedGeometry {
    ZonedGeometry::new(ZonedGeometry {
        max_open: 0,
        max_active: 0,
        ..geometry()
    })
    .unwrap()
}

/// Records the image's hole punches as (sector, sectors) of the data area.
fn record_punches(d: &mut ZonedImage) -> std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>> {
    let punches = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = punches.clone();
    let data_offset = d.storage().layout.data_offset;
    d.storage_mut().io_hook = Some(Box::new(move |event: IoEvent<'_>| {
        if let IoEvent::Punch { offset, len } = event {
            seen.lock()
                .unwrap()
                .push(((offset - data_offset) / 512, len / 512));
        }
    }));
    punches
}

#[test]
fn resets_punch_nothing_until_reclaim_and_reclaim_punches_what_they_held() {
    let dir = Scratch::new("punch");
    let path = dir.path("disk.img");
    let geometry = ZonedGeometry::new(ZonedGeometry {
        zone_capacity: 256,
        max_open: 0,
        max_active: 0,
        ..geometry()
    })
    .unwrap();
    let mut d = ZonedImage::create(&path, geometry).unwrap();
    d.write(256, &pattern(256, 256, 0)).unwrap(); // zone 1 full
    d.write(512, &pattern(512, 4, 0)).unwrap(); // zone 2, right after it
    d.write(1024, &pattern(1024, 8, 0)).unwrap(); // zone 4
    let punches = record_punches(&mut d);
    d.zone_op(ZoneOp::Reset, 512).unwrap();
    d.zone_op(ZoneOp::Reset, 768).unwrap(); // empty: nothing to punch
    d.reset_all().unwrap();
    assert_eq!(
        *punches.lock().unwrap(),
        vec![],
        "the resets themselves punch nothing"
    );
    assert!(!d.reclaim(Duration::MAX), "nothing left");
    // Zones 1, 2 and 4, each whole (zone 3, reset while empty, holds nothing).
    let each = vec![(256, 256), (512, 256), (1024, 256)];
    assert_eq!(*punches.lock().unwrap(), each);
    assert!(!d.reclaim(Duration::MAX));
    assert_eq!(
        *punches.lock().unwrap(),
        each,
        "a second reclaim has nothing to do"
    );
}

#[test]
fn reclaim_keeps_what_was_written_after_the_reset() {
    let dir = Scratch::new("punch-rewritten");
    let path = dir.path("disk.img");
    let mut d = ZonedImage::create(&path, unlimited()).unwrap();
    for zone in 1..5u64 {
        d.write(zone * 256, &pattern(zone * 256, 16, 0)).unwrap();
    }
    d.flush().unwrap();
    d.reset_all().unwrap();
    // Zones 2 and 3 are written again before the guest goes idle.
    d.write(512, &pattern(512, 8, 1)).unwrap();
    d.write(768, &pattern(768, 3, 1)).unwrap();
    let punches = record_punches(&mut d);
    assert!(!d.reclaim(Duration::MAX));
    // Zones 1 and 4 whole, the rewritten zones 2 and 3 above their new data.
    assert_eq!(
        *punches.lock().unwrap(),
        vec![(256, 256), (520, 248), (771, 253), (1024, 256)]
    );
    assert!(read(&mut d, 512, 8) == pattern(512, 8, 1));
    assert!(read(&mut d, 768, 3) == pattern(768, 3, 1));
    d.flush().unwrap();
    drop(d);
    let mut d = ZonedImage::open(&path, &none()).unwrap();
    assert!(read(&mut d, 512, 8) == pattern(512, 8, 1), "next run");
    assert!(
        d.storage().read_raw(256, 16).iter().all(|&b| b == 0),
        "zone 1 given back"
    );
    assert!(
        d.storage().read_raw(1024, 16).iter().all(|&b| b == 0),
        "zone 4 given back"
    );
}

#[test]
fn reclaim_stops_when_its_budget_is_spent_and_goes_on_later() {
    let dir = Scratch::new("punch-budget");
    let path = dir.path("disk.img");
    let mut d = ZonedImage::create(&path, unlimited()).unwrap();
    // Zones 1, 3 and 5.
    for zone in 1..7u64 {
        d.write(zone * 256, &pattern(zone * 256, 8, 0)).unwrap();
    }
    for zone in [1u64, 3, 5] {
        d.zone_op(ZoneOp::Reset, zone * 256).unwrap();
    }
    let punches = record_punches(&mut d);
    assert!(
        d.reclaim(Duration::ZERO),
        "a zero budget still punches one range"
    );
    assert_eq!(*punches.lock().unwrap(), vec![(256, 256)]);
    assert!(d.reclaim(Duration::ZERO));
    assert!(!d.reclaim(Duration::MAX));
    assert_eq!(
        *punches.lock().unwrap(),
        vec![(256, 256), (768, 256), (1280, 256)]
    );
}

#[test]
fn with_reclaim_off_resets_punch_nothing_and_reads_above_the_write_pointer_stay_zero() {
    let dir = Scratch::new("no-reclaim");
    let path = dir.path("disk.img");
    let options = ZonedDiskOptions::parse(&format!(
        "{},size=1M,zone-size=128K,reclaim=off",
        path.display()
    ))
    .unwrap();
    let mut d = ZonedImage::open_or_create(&options).unwrap();
    d.write(256, &pattern(256, 8, 0)).unwrap(); // zone 1
    let punches = std::sync::Arc::new(std::sync::Mutex::new(0));
    let seen = punches.clone();
    d.storage_mut().io_hook = Some(Box::new(move |event: IoEvent<'_>| {
        if let IoEvent::Punch { .. } = event {
            *seen.lock().unwrap() += 1;
        }
    }));
    d.zone_op(ZoneOp::Reset, 256).unwrap();
    d.write(256, &pattern(256, 2, 1)).unwrap();
    d.reset_all().unwrap();
    assert!(!d.reclaim(Duration::MAX));
    assert_eq!(*punches.lock().unwrap(), 0);
    // The old data is still in the file, but above the write pointer the guest reads zeros.
    let mut buf = vec![0xaau8; 8 * 512];
    d.read(256, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn reset_all_keeps_the_data_of_read_only_and_offline_zones() {
    let dir = Scratch::new("reset-all-kept");
    let path = dir.path("disk.img");
    let geometry = ZonedGeometry::new(ZonedGeometry {
        max_open: 0,
        max_active: 0,
        ..geometry()
    })
    .unwrap();
    let mut d = ZonedImage::create(&path, geometry).unwrap();
    for zone in 1..6u64 {
        d.write(zone * 256, &pattern(zone * 256, 8, 0)).unwrap();
    }
    d.flush().unwrap();
    // Zone 2 read-only for this run only, zone 4 offline for good; both between written zones.
    d.inject_condition(512, ZoneCondition::ReadOnly).unwrap();
    d.set_zone_condition(1024, ZoneCondition::Offline).unwrap();
    d.reset_all().unwrap();
    assert!(!d.reclaim(Duration::MAX));
    assert_eq!(state(&d, 1), (ZoneCondition::Empty, 256));
    assert_eq!(state(&d, 5), (ZoneCondition::Empty, 1280));
    assert!(read(&mut d, 512, 8) == pattern(512, 8, 0), "read-only zone");
    assert!(
        d.storage().read_raw(1024, 8) == pattern(1024, 8, 0),
        "offline zone"
    );
    d.flush().unwrap();
    drop(d);
    let mut d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(state(&d, 2), (ZoneCondition::Closed, 520));
    assert!(read(&mut d, 512, 8) == pattern(512, 8, 0), "next run");
    assert_eq!(state(&d, 4).0, ZoneCondition::Offline);
    assert!(d.storage().read_raw(1024, 8) == pattern(1024, 8, 0));
}

#[test]
fn a_reset_whose_sync_failed_is_superseded_and_later_flushes_fail() {
    let dir = Scratch::new("failed-reset-sync");
    let path = dir.path("disk.img");
    let mut d = ZonedImage::create(&path, geometry()).unwrap();
    d.write(256, &pattern(256, 8, 0)).unwrap();
    d.flush().unwrap();
    // The fdatasync after the EMPTY slot was written fails: the reset fails and the zone keeps
    // its data; the slot that says EMPTY must not win in the next run.
    d.storage_mut().fail_storage_op(StorageOp::TableSync, 0);
    assert_eq!(d.zone_op(ZoneOp::Reset, 256), Err(ZoneError::Io));
    assert_eq!(state(&d, 1), (ZoneCondition::ImplicitOpen, 264));
    // A failed fdatasync may have dropped written data: no later flush commits anything.
    d.write(264, &pattern(264, 8, 0)).unwrap();
    assert_eq!(d.flush(), Err(ZoneError::Io));
    assert_eq!(d.flush(), Err(ZoneError::Io), "the error is sticky");
    drop(d);
    let mut d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(state(&d, 1), (ZoneCondition::Closed, 264));
    assert!(read(&mut d, 256, 8) == pattern(256, 8, 0));
}

#[test]
fn a_reset_all_whose_later_slot_write_failed_is_superseded_by_the_next_flush() {
    let dir = Scratch::new("failed-reset-all");
    let path = dir.path("disk.img");
    let mut d = ZonedImage::create(&path, geometry()).unwrap();
    d.write(256, &pattern(256, 8, 0)).unwrap();
    d.write(512, &pattern(512, 8, 0)).unwrap();
    d.flush().unwrap();
    // Zone 1's EMPTY slot is written, zone 2's write fails.
    d.storage_mut().fail_storage_op(StorageOp::TableWrite, 1);
    assert_eq!(d.reset_all(), Err(ZoneError::Io));
    assert_eq!(state(&d, 1), (ZoneCondition::ImplicitOpen, 264));
    d.flush().unwrap();
    drop(d);
    let mut d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(state(&d, 1), (ZoneCondition::Closed, 264));
    assert_eq!(state(&d, 2), (ZoneCondition::Closed, 520));
    assert!(read(&mut d, 256, 8) == pattern(256, 8, 0));
    // A later successful reset of another zone supersedes it too.
    d.storage_mut().fail_storage_op(StorageOp::TableWrite, 1);
    assert_eq!(d.reset_all(), Err(ZoneError::Io));
    d.zone_op(ZoneOp::Reset, 512).unwrap();
    drop(d);
    let d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(state(&d, 1), (ZoneCondition::Closed, 264));
    assert_eq!(state(&d, 2), (ZoneCondition::Empty, 512));
}

#[test]
fn after_a_failed_data_sync_no_flush_commits_a_write_pointer() {
    let dir = Scratch::new("failed-data-sync");
    let path = dir.path("disk.img");
    let mut d = ZonedImage::create(&path, geometry()).unwrap();
    d.write(256, &pattern(256, 8, 0)).unwrap();
    d.flush().unwrap();
    d.write(264, &pattern(264, 8, 0)).unwrap();
    d.storage_mut().fail_storage_op(StorageOp::DataSync, 0);
    assert_eq!(d.flush(), Err(ZoneError::Io));
    // The host may have dropped the pages whose write-back failed; a second fdatasync would
    // succeed without them.
    assert_eq!(d.flush(), Err(ZoneError::Io));
    assert_eq!(d.zone_op(ZoneOp::Reset, 512), Ok(()), "nothing to reset");
    assert_eq!(d.zone_op(ZoneOp::Reset, 256), Err(ZoneError::Io));
    drop(d);
    let d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(state(&d, 1), (ZoneCondition::Closed, 264));
}

#[test]
fn huge_zone_counts_are_refused_and_leave_no_file_behind() {
    let dir = Scratch::new("huge");
    let path = dir.path("huge.img");
    // 2 Mi zones of one sector: valid for Linux, but every zone costs vmm memory.
    let options =
        ZonedDiskOptions::parse(&format!("{},size=1G,zone-size=512", path.display())).unwrap();
    let msg = match ZonedImage::open_or_create(&options) {
        Ok(_) => panic!("an image with 2 Mi zones was created"),
        Err(err) => err.to_string(),
    };
    assert!(msg.contains("2097152 zones are too many"), "{msg}");
    assert_eq!(
        std::fs::read_dir(&dir.0).unwrap().count(),
        0,
        "nothing created"
    );
    // The same geometry in a crafted image whose checksum is right.
    let huge = ZonedGeometry {
        capacity: 1 << 21,
        zone_size: 1,
        zone_capacity: 1,
        conventional_zones: 0,
        max_open: 0,
        max_active: 0,
        max_append_sectors: 1,
        write_granularity: 512,
        logical_block_size: 512,
    };
    let layout = Layout::of(&huge);
    let crafted = dir.path("crafted.img");
    let f = File::create(&crafted).unwrap();
    f.write_all_at(&encode_header(&huge, &layout), 0).unwrap();
    f.set_len(layout.file_size).unwrap();
    drop(f);
    let msg = open_fails(&crafted, &none());
    assert!(msg.contains("2097152 zones are too many"), "{msg}");
}

#[test]
fn a_create_that_fails_midway_leaves_no_file_behind() {
    let dir = Scratch::new("create-fails");
    let path = dir.path("disk.img");
    // 64 Ti sectors of 512 bytes: more than ext4 (16 TiB) or tmpfs let a file grow to.
    let big = ZonedGeometry::new(ZonedGeometry {
        capacity: 1 << 45,
        zone_size: 1 << 30,
        zone_capacity: 1 << 30,
        ..geometry()
    })
    .unwrap();
    if let Err(err) = ZonedImage::create(&path, big) {
        assert!(err.to_string().contains("disk.img"), "{err}");
        assert_eq!(
            std::fs::read_dir(&dir.0).unwrap().count(),
            0,
            "nothing left"
        );
    }
}

#[test]
fn throwaway_images_have_no_name_and_open_nothing_planted() {
    use std::os::unix::fs::MetadataExt;
    let dir = Scratch::new("throwaway");
    // Another user plants an image with data where a predictable name would be.
    let options = ZonedDiskOptions::parse("tmp,size=8M,zone-size=1M").unwrap();
    let planted = dir.path(&format!("vmm-zoned-{}-0.img", std::process::id()));
    let mut other = ZonedImage::create(&planted, options.overrides.geometry().unwrap()).unwrap();
    other.write(2048, &pattern(2048, 8, 9)).unwrap();
    other.flush().unwrap();
    drop(other);
    let before = std::fs::read(&planted).unwrap();
    let mut disk = ZonedImage::create_throwaway(&dir.0, &options).unwrap();
    assert_eq!(
        state(&disk, 1),
        (ZoneCondition::Empty, 2048),
        "a fresh image"
    );
    disk.write(2048, &pattern(2048, 4, 1)).unwrap();
    assert!(read(&mut disk, 2048, 4) == pattern(2048, 4, 1));
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![planted.file_name().unwrap().to_owned()]);
    assert!(
        std::fs::read(&planted).unwrap() == before,
        "planted file untouched"
    );
    let meta = disk.storage().file.metadata().unwrap();
    assert_eq!(meta.nlink(), 0, "no name another process could open");
    assert_eq!(meta.mode() & 0o077, 0, "mode {:o}", meta.mode());
}

#[test]
fn new_images_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("mode");
    let path = dir.path("disk.img");
    drop(ZonedImage::create(&path, geometry()).unwrap());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
}

/// A 4Kn image stores its logical block size: it reopens as 4Kn, a conflicting option is
/// named, an image from before the field (zero there) opens as 512, and a stored size the
/// geometry refuses is a corrupt header.
#[test]
fn the_logical_block_size_is_stored_and_old_images_are_512() {
    let dir = Scratch::new("lbs");
    let path = dir.path("4kn.img");
    let g = ZonedGeometry {
        write_granularity: 4096,
        logical_block_size: 4096,
        ..geometry()
    };
    let mut d = ZonedImage::create(&path, g).unwrap();
    d.write(256, &pattern(256, 8, 0)).unwrap();
    d.flush().unwrap();
    drop(d);
    let header = std::fs::read(&path).unwrap()[..4096].to_vec();
    assert_eq!(le_u32(&header, 80), 4096);
    let mut d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(*d.geometry(), g);
    assert_eq!(state(&d, 1), (ZoneCondition::Closed, 264));
    assert_eq!(read(&mut d, 256, 8), pattern(256, 8, 0));
    drop(d);
    let mut given = none();
    given.set(GeometryOption::LogicalBlockSize, 4096);
    drop(ZonedImage::open(&path, &given).unwrap());
    given.set(GeometryOption::LogicalBlockSize, 512);
    let msg = open_fails(&path, &given);
    assert!(
        msg.contains("logical-block-size=4096") && msg.contains("logical-block-size=512"),
        "{msg}"
    );

    let rewrite = |path: &Path, value: u32| {
        let mut header = std::fs::read(path).unwrap()[..4096].to_vec();
        header[80..84].copy_from_slice(&value.to_le_bytes());
        let crc = crc32(&header[..HEADER_CRC_OFFSET]);
        header[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        patch(path, 0, &header);
    };
    // Written before the field existed: 0 there, 512-byte blocks.
    let old = fresh(&dir, "old.img");
    assert_eq!(le_u32(&std::fs::read(&old).unwrap(), 80), 512);
    rewrite(&old, 0);
    let d = ZonedImage::open(&old, &none()).unwrap();
    assert_eq!(d.geometry().logical_block_size, 512);
    drop(d);
    rewrite(&old, 1000);
    let msg = open_fails(&old, &none());
    assert!(
        msg.contains("corrupt header") && msg.contains("1000"),
        "{msg}"
    );
}

#[test]
fn a_zone_made_read_only_for_a_run_keeps_its_active_resource() {
    let dir = Scratch::new("injected-active");
    let path = dir.path("disk.img");
    let geometry = ZonedGeometry::new(ZonedGeometry {
        max_open: 0,
        max_active: 2,
        ..geometry()
    })
    .unwrap();
    let mut d = ZonedImage::create(&path, geometry).unwrap();
    d.write(256, &pattern(256, 8, 0)).unwrap();
    d.write(512, &pattern(512, 8, 0)).unwrap();
    d.flush().unwrap();
    drop(d);
    // READ_ONLY for this run only: the zone comes back CLOSED in the next one, so its
    // active resource is not free for another zone now.
    let mut d = ZonedImage::open(&path, &none()).unwrap();
    d.inject_condition(256, ZoneCondition::ReadOnly).unwrap();
    assert_eq!(
        d.write(768, &pattern(768, 8, 0)),
        Err(ZoneError::ActiveResource)
    );
    d.flush().unwrap();
    drop(d);
    let d = ZonedImage::open(&path, &none()).unwrap();
    assert!(d.zones().active_zones() <= 2, "{:?}", d.zones());
}

/// The volatile write cache's set-up for the power-cut tests: zone 0 (conventional) holds
/// sectors 0..8 of epoch 0 and zone 1 sectors 256..272, flushed; then, unflushed: sectors
/// 4..12 of epoch 1, zone 1 up to 288, zone 2 up to 520 and finished, zone 3 reset and
/// rewritten to 776.
fn volatile_image(dir: &Scratch) -> (PathBuf, ZonedImage) {
    let path = dir.path("cut.img");
    let mut d = ZonedImage::create(&path, geometry()).unwrap();
    d.storage_mut().set_volatile_cache();
    d.write(0, &pattern(0, 8, 0)).unwrap();
    d.write(256, &pattern(256, 16, 0)).unwrap();
    d.write(768, &pattern(768, 32, 0)).unwrap();
    d.flush().unwrap();
    d.write(4, &pattern(4, 8, 1)).unwrap();
    d.write(272, &pattern(272, 16, 1)).unwrap();
    d.write(512, &pattern(512, 8, 1)).unwrap();
    d.zone_op(ZoneOp::Finish, 512).unwrap();
    d.zone_op(ZoneOp::Reset, 768).unwrap();
    d.write(768, &pattern(768, 8, 1)).unwrap();
    (path, d)
}

/// Cuts the power of `d` (its volatile cache on) and opens the image as the next run finds it.
fn cut_and_reopen(
    mut d: ZonedImage,
    path: &Path,
    loss: Loss,
    seed: u64,
) -> (ZonedImage, PowerCutReport) {
    let report = d.power_cut(PowerCut { loss, seed }).unwrap().unwrap();
    drop(d);
    (ZonedImage::open(path, &none()).unwrap(), report)
}

fn zeros(nr: u64) -> Vec<u8> {
    vec![0u8; (nr * 512) as usize]
}

#[test]
fn a_power_cut_losing_all_leaves_the_image_as_flushed() {
    let dir = Scratch::new("cut-all");
    let (path, d) = volatile_image(&dir);
    let (mut d, report) = cut_and_reopen(d, &path, Loss::All, 1);
    assert_eq!(read(&mut d, 0, 8), pattern(0, 8, 0));
    assert_eq!(
        read(&mut d, 8, 4),
        zeros(4),
        "unflushed conventional blocks"
    );
    assert_eq!(state(&d, 1), (ZoneCondition::Closed, 272));
    assert_eq!(read(&mut d, 256, 32)[..16 * 512], pattern(256, 16, 0)[..]);
    assert_eq!(read(&mut d, 272, 16), zeros(16));
    assert_eq!(
        state(&d, 2),
        (ZoneCondition::Empty, 512),
        "unflushed finish"
    );
    // The reset was durable: what it erased stays erased.
    assert_eq!(state(&d, 3), (ZoneCondition::Empty, 768));
    assert_eq!(read(&mut d, 768, 32), zeros(32));
    assert_eq!(report.blocks_lost, 8);
    assert_eq!(report.blocks_kept, 0);
    assert_eq!(report.sectors_lost, 16 + 8 + 8);
    assert_eq!(report.zones_rolled_back, 3);
}

#[test]
fn a_random_power_cut_keeps_a_prefix_of_each_zone_and_whole_blocks() {
    let mut outcomes = BTreeSet::new();
    for seed in 0..40 {
        let dir = Scratch::new("cut-random");
        let (path, d) = volatile_image(&dir);
        let (mut d, _) = cut_and_reopen(d, &path, Loss::Random, seed);
        // Flushed data is never lost; each unflushed block is old or new, never a mix.
        assert_eq!(read(&mut d, 0, 4), pattern(0, 4, 0), "seed {seed}");
        let mut kept_blocks = Vec::new();
        for s in 4..12 {
            let now = read(&mut d, s, 1);
            let old = if s < 8 { pattern(s, 1, 0) } else { zeros(1) };
            assert!(
                now == pattern(s, 1, 1) || now == old,
                "seed {seed} sector {s}"
            );
            kept_blocks.push(now == pattern(s, 1, 1));
        }
        let (cond1, wp1) = state(&d, 1);
        assert!((272..=288).contains(&wp1), "seed {seed}: zone 1 wp {wp1}");
        assert_eq!(cond1, ZoneCondition::Closed);
        let mut expected = pattern(256, 16, 0);
        expected.extend(pattern(272, wp1 - 272, 1));
        assert_eq!(read(&mut d, 256, wp1 - 256), expected, "seed {seed}");
        assert_eq!(read(&mut d, wp1, 288 - wp1), zeros(288 - wp1));
        let (cond2, wp2) = state(&d, 2);
        assert!((512..=520).contains(&wp2), "seed {seed}: zone 2 wp {wp2}");
        match wp2 {
            512 => assert_eq!(cond2, ZoneCondition::Empty),
            520 => assert!(matches!(cond2, ZoneCondition::Full | ZoneCondition::Closed)),
            _ => assert_eq!(cond2, ZoneCondition::Closed),
        }
        assert_eq!(read(&mut d, 512, wp2 - 512), pattern(512, wp2 - 512, 1));
        let (_, wp3) = state(&d, 3);
        assert!((768..=776).contains(&wp3), "seed {seed}: zone 3 wp {wp3}");
        assert_eq!(read(&mut d, 768, wp3 - 768), pattern(768, wp3 - 768, 1));
        assert_eq!(
            read(&mut d, wp3, 800 - wp3),
            zeros(800 - wp3),
            "old data reappeared"
        );
        outcomes.insert((kept_blocks, wp1, wp2, cond2 as u8, wp3));
    }
    assert!(
        outcomes.len() > 20,
        "only {} outcomes in 40 seeds",
        outcomes.len()
    );
}

#[test]
fn the_same_seed_loses_the_same_writes() {
    let image_after = |seed| {
        let dir = Scratch::new("cut-seed");
        let (path, mut d) = volatile_image(&dir);
        let report = d
            .power_cut(PowerCut {
                loss: Loss::Random,
                seed,
            })
            .unwrap()
            .unwrap();
        drop(d);
        (std::fs::read(&path).unwrap(), report)
    };
    assert_eq!(image_after(7), image_after(7));
    assert_ne!(image_after(7).0, image_after(8).0);
}

#[test]
fn a_flush_makes_the_cached_writes_safe_from_a_power_cut() {
    let dir = Scratch::new("cut-flushed");
    let (path, mut d) = volatile_image(&dir);
    d.flush().unwrap();
    let report = d
        .power_cut(PowerCut {
            loss: Loss::All,
            seed: 1,
        })
        .unwrap()
        .unwrap();
    assert_eq!(report, PowerCutReport::default());
    drop(d);
    let mut d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(read(&mut d, 4, 8), pattern(4, 8, 1));
    assert_eq!(state(&d, 1), (ZoneCondition::Closed, 288));
    assert_eq!(state(&d, 2), (ZoneCondition::Full, 520));
}

#[test]
fn without_the_volatile_cache_a_power_cut_loses_nothing() {
    let dir = Scratch::new("cut-none");
    let path = dir.path("disk.img");
    let mut d = ZonedImage::create(&path, geometry()).unwrap();
    d.write(4, &pattern(4, 8, 1)).unwrap();
    d.write(256, &pattern(256, 16, 1)).unwrap();
    assert!(d.storage().data_path().is_some());
    let cut = PowerCut {
        loss: Loss::All,
        seed: 1,
    };
    assert_eq!(d.power_cut(cut).unwrap(), None);
    drop(d);
    let mut d = ZonedImage::open(&path, &none()).unwrap();
    assert_eq!(read(&mut d, 4, 8), pattern(4, 8, 1));
    assert_eq!(state(&d, 1), (ZoneCondition::Closed, 272));
}

/// `lose=flushed`, the broken device a crash test must catch: each sequential zone also loses
/// the writes of the last flush that moved its write pointer; a durable reset stays.
#[test]
fn a_broken_power_cut_also_loses_each_zones_last_flushed_writes() {
    let dir = Scratch::new("cut-broken");
    let (path, mut d) = volatile_image(&dir);
    // Zone 4 moves in the first flush only, zone 1 in both: zone 4 goes back to before the
    // first, zone 1 to before the second.
    d.write(1024, &pattern(1024, 8, 0)).unwrap();
    d.flush().unwrap();
    d.write(288, &pattern(288, 8, 2)).unwrap();
    let (mut d, report) = cut_and_reopen(d, &path, Loss::Flushed, 1);
    assert_eq!(state(&d, 1), (ZoneCondition::Closed, 272), "zone 1");
    assert_eq!(read(&mut d, 272, 24), zeros(24));
    assert_eq!(state(&d, 4), (ZoneCondition::Empty, 1024), "zone 4");
    assert_eq!(read(&mut d, 1024, 8), zeros(8));
    // Zone 2 was finished in the last flush; zone 3 was reset (durable) and written since.
    assert_eq!(state(&d, 2), (ZoneCondition::Empty, 512), "zone 2");
    assert_eq!(state(&d, 3), (ZoneCondition::Empty, 768), "zone 3");
    // Conventional blocks lose what lose=all loses, no more.
    assert_eq!(
        read(&mut d, 0, 12),
        pattern(0, 4, 0)
            .into_iter()
            .chain(pattern(4, 8, 1))
            .collect::<Vec<_>>()
    );
    assert_eq!(report.flushed_sectors_lost, 16 + 8 + 8 + 8);
    assert_eq!(report.sectors_lost, 8);
}

#[test]
fn a_4k_disk_loses_whole_logical_blocks() {
    let dir = Scratch::new("cut-4k");
    let path = dir.path("disk.img");
    let mut g = geometry();
    g.logical_block_size = 4096;
    g.write_granularity = 4096;
    let g = ZonedGeometry::new(g).unwrap();
    for seed in 0..16 {
        let _ = std::fs::remove_file(&path);
        let mut d = ZonedImage::create(&path, g).unwrap();
        d.storage_mut().set_volatile_cache();
        assert!(d.storage().data_path().is_none());
        d.write(0, &pattern(0, 16, 1)).unwrap();
        d.write(256, &pattern(256, 64, 1)).unwrap();
        let (mut d, _) = cut_and_reopen(d, &path, Loss::Random, seed);
        let (_, wp) = state(&d, 1);
        assert_eq!(
            (wp - 256) % 8,
            0,
            "seed {seed}: wp {wp} inside a 4 KiB block"
        );
        for block in 0..2 {
            let now = read(&mut d, block * 8, 8);
            assert!(
                now == pattern(block * 8, 8, 1) || now == zeros(8),
                "seed {seed}"
            );
        }
    }
}

#[test]
fn a_512e_disk_loses_whole_physical_blocks() {
    let dir = Scratch::new("cut-512e");
    let path = dir.path("disk.img");
    let mut g = geometry();
    g.write_granularity = 4096;
    let g = ZonedGeometry::new(g).unwrap();
    let mut outcomes = BTreeSet::new();
    for seed in 0..16 {
        let _ = std::fs::remove_file(&path);
        let mut d = ZonedImage::create(&path, g).unwrap();
        d.storage_mut().set_volatile_cache();
        d.write(0, &pattern(0, 16, 0)).unwrap();
        d.flush().unwrap();
        // 512-byte writes into 4 KiB physical blocks; a sequential zone takes whole ones.
        for s in 0..16 {
            d.write(s, &pattern(s, 1, 1)).unwrap();
        }
        d.write(256, &pattern(256, 64, 1)).unwrap();
        let (mut d, _) = cut_and_reopen(d, &path, Loss::Random, seed);
        let (_, wp) = state(&d, 1);
        assert!(
            (wp - 256) % 8 == 0,
            "seed {seed}: wp {wp} inside a 4 KiB block"
        );
        for block in 0..2 {
            let now = read(&mut d, block * 8, 8);
            let new = now == pattern(block * 8, 8, 1);
            assert!(
                new || now == pattern(block * 8, 8, 0),
                "seed {seed}: block {block} torn"
            );
            outcomes.insert((block, new));
        }
    }
    assert_eq!(
        outcomes.len(),
        4,
        "each block both kept and lost: {outcomes:?}"
    );
}
