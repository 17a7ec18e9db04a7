//! The file-emulated zoned backend: one regular (sparse) file holding a header, an A/B zone
//! state table and the data. See docs/zoned-image-format.md for the layout and the crash
//! guarantees; in short, a guest FLUSH is the commit point (data fdatasync'd first, then the
//! changed zone-table slots written and fdatasync'd), and a zone RESET is made durable before it
//! completes, so a write pointer read back after a crash never points past durable data written
//! since that zone's last reset.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::disk::{ZoneStorage, ZonedDisk};
use super::geometry::{
    GeometryError, GeometryOverrides, ZonedDiskOptions, ZonedGeometry, DEFAULT_LOGICAL_BLOCK_SIZE,
    SECTOR_SIZE,
};
use super::state::{ZoneCondition, ZoneOp, ZoneOpKind, ZoneOpPlan, ZoneSet};
use crate::file_io::DataPath;

mod volatile;
use volatile::VolatileCache;
pub use volatile::{CutRandom, Loss, PowerCut, PowerCutReport};

/// File magic at offset 0.
pub const MAGIC: [u8; 8] = *b"VMMZONED";
/// The only format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes reserved for the header; the zone table follows.
pub const HEADER_SIZE: u64 = 4096;
/// Bytes of one table slot; each zone has two (A at +0, B at +16).
pub const SLOT_SIZE: u64 = 16;
/// The data area starts on this alignment.
pub const DATA_ALIGNMENT: u64 = 1 << 20;
/// Offset of the header checksum (CRC-32 of bytes 0..124).
const HEADER_CRC_OFFSET: usize = 124;

/// A zoned disk backed by an image file.
pub type ZonedImage = ZonedDisk<ImageFile>;

/// Why an image cannot be created or opened. One line each, naming the file and the value.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("zoned image {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("zoned image {0} is in use by another process (it is locked)")]
    InUse(PathBuf),
    #[error("zoned image {0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("{0} is not a vmm zoned image (no VMMZONED magic)")]
    NotAnImage(PathBuf),
    /// A directory, a character device, a FIFO or a socket.
    #[error("{path} is {kind}, not a zoned image file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("zoned image {path} is truncated: {size} bytes, expected {expected}")]
    Truncated {
        path: PathBuf,
        size: u64,
        expected: u64,
    },
    #[error("zoned image {path} is {size} bytes, expected {expected}")]
    WrongSize {
        path: PathBuf,
        size: u64,
        expected: u64,
    },
    #[error("zoned image {path} has format version {version}; only version 1 is supported")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("zoned image {path} has a corrupt header: {reason}")]
    CorruptHeader { path: PathBuf, reason: String },
    #[error("zoned image {path} has a corrupt zone table at zone {zone}: {reason}")]
    CorruptZoneTable {
        path: PathBuf,
        zone: usize,
        reason: String,
    },
    #[error("zoned image {path} has a corrupt zone table: {reason}")]
    CorruptZoneStates { path: PathBuf, reason: String },
    #[error("zoned image {path} has {option}={image}, but {option}={given} was given")]
    Conflict {
        path: PathBuf,
        option: &'static str,
        given: u64,
        image: u64,
    },
    #[error("zoned image {path}: {source}")]
    Geometry {
        path: PathBuf,
        source: GeometryError,
    },
}

/// The error for a lock that failed: in use when another process holds one.
pub(super) fn lock_error(path: &Path, error: io::Error) -> ImageError {
    if crate::file_lock::is_conflict(&error) {
        ImageError::InUse(path.to_path_buf())
    } else {
        io_err(path)(error)
    }
}

/// CRC-32 (IEEE 802.3, as zlib's), eight bytes per step ("slicing-by-8"): opening an image
/// checks two slots per zone, and byte-at-a-time tables made that most of the open time of a
/// million-zone image.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLES: [[u32; 256]; 8] = {
        let mut tables = [[0u32; 256]; 8];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            tables[0][i] = c;
            i += 1;
        }
        // tables[t][i]: the CRC of byte i followed by t zero bytes.
        let mut t = 1;
        while t < 8 {
            let mut i = 0;
            while i < 256 {
                let prev = tables[t - 1][i];
                tables[t][i] = (prev >> 8) ^ tables[0][(prev & 0xFF) as usize];
                i += 1;
            }
            t += 1;
        }
        tables
    };
    let byte = |crc: u32, shift: u32| ((crc >> shift) & 0xFF) as usize;
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let low = crc ^ u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let high = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        crc = TABLES[7][byte(low, 0)]
            ^ TABLES[6][byte(low, 8)]
            ^ TABLES[5][byte(low, 16)]
            ^ TABLES[4][byte(low, 24)]
            ^ TABLES[3][byte(high, 0)]
            ^ TABLES[2][byte(high, 8)]
            ^ TABLES[1][byte(high, 16)]
            ^ TABLES[0][byte(high, 24)];
    }
    for &b in chunks.remainder() {
        crc = TABLES[0][byte(crc ^ u32::from(b), 0)] ^ (crc >> 8);
    }
    !crc
}

fn le_u32(b: &[u8], o: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(v)
}

fn le_u64(b: &[u8], o: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(v)
}

/// Where things are in an image of a given geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) table_offset: u64,
    pub(super) data_offset: u64,
    pub(super) file_size: u64,
}

impl Layout {
    fn of(g: &ZonedGeometry) -> Layout {
        let table_len = g.nr_zones() * 2 * SLOT_SIZE;
        let data_offset = (HEADER_SIZE + table_len).div_ceil(DATA_ALIGNMENT) * DATA_ALIGNMENT;
        Layout {
            table_offset: HEADER_SIZE,
            data_offset,
            file_size: data_offset + g.capacity * SECTOR_SIZE,
        }
    }
}

fn encode_header(g: &ZonedGeometry, layout: &Layout) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_SIZE as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    h[16..24].copy_from_slice(&g.capacity.to_le_bytes());
    h[24..32].copy_from_slice(&g.zone_size.to_le_bytes());
    h[32..40].copy_from_slice(&g.zone_capacity.to_le_bytes());
    h[40..44].copy_from_slice(&g.conventional_zones.to_le_bytes());
    h[44..48].copy_from_slice(&g.max_open.to_le_bytes());
    h[48..52].copy_from_slice(&g.max_active.to_le_bytes());
    h[52..56].copy_from_slice(&g.max_append_sectors.to_le_bytes());
    h[56..60].copy_from_slice(&g.write_granularity.to_le_bytes());
    h[60..64].copy_from_slice(&(g.nr_zones() as u32).to_le_bytes());
    h[64..72].copy_from_slice(&layout.table_offset.to_le_bytes());
    h[72..80].copy_from_slice(&layout.data_offset.to_le_bytes());
    h[80..84].copy_from_slice(&g.logical_block_size.to_le_bytes());
    let crc = crc32(&h[..HEADER_CRC_OFFSET]);
    h[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    h
}

/// One table slot: wp u64 @0, cond u8 @8, reserved u8 @9 (0), generation u16 @10, CRC-32 @12
/// over the zone index (le64) followed by bytes 0..12, so a slot copied to the wrong zone fails.
fn encode_slot(zone: usize, cond: ZoneCondition, wp: u64, generation: u16) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&wp.to_le_bytes());
    s[8] = cond as u8;
    s[10..12].copy_from_slice(&generation.to_le_bytes());
    let crc = slot_crc(zone, &s);
    s[12..16].copy_from_slice(&crc.to_le_bytes());
    s
}

/// The CRC a slot of `zone` stores at bytes 12..16 (over the zone index and bytes 0..12).
pub(crate) fn slot_crc(zone: usize, slot: &[u8]) -> u32 {
    let mut buf = [0u8; 20];
    buf[0..8].copy_from_slice(&(zone as u64).to_le_bytes());
    buf[8..20].copy_from_slice(&slot[0..12]);
    crc32(&buf)
}

/// What a valid table slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StoredSlot {
    pub(super) cond: ZoneCondition,
    /// End of valid data (absolute sector).
    pub(super) wp: u64,
    pub(super) generation: u16,
}

/// Why a table slot is not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum SlotDefect {
    #[error("checksum mismatch")]
    Checksum,
    #[error("reserved byte {0:#04x}, not 0")]
    Reserved(u8),
    #[error("unknown condition {0}")]
    Condition(u8),
}

/// Decodes slot `s` of `zone`.
pub(super) fn decode_slot(zone: usize, s: &[u8]) -> Result<StoredSlot, SlotDefect> {
    if le_u32(s, 12) != slot_crc(zone, s) {
        return Err(SlotDefect::Checksum);
    }
    if s[9] != 0 {
        return Err(SlotDefect::Reserved(s[9]));
    }
    let cond = ZoneCondition::from_u8(s[8]).ok_or(SlotDefect::Condition(s[8]))?;
    Ok(StoredSlot {
        cond,
        wp: le_u64(s, 0),
        generation: u16::from_le_bytes([s[10], s[11]]),
    })
}

/// Which of a zone's slots holds its state, 0 (A) or 1 (B), from the valid ones among them:
/// the only valid one, or of two the one whose generation is one newer (modulo 2^16).
pub(super) fn current_slot(
    a: Option<StoredSlot>,
    b: Option<StoredSlot>,
) -> Result<(u8, StoredSlot), &'static str> {
    match (a, b) {
        (Some(a), Some(b)) if a.generation.wrapping_sub(b.generation) == 1 => Ok((0, a)),
        (Some(a), Some(b)) if b.generation.wrapping_sub(a.generation) == 1 => Ok((1, b)),
        (Some(_), Some(_)) => Err("slot generations are not consecutive"),
        (Some(a), None) => Ok((0, a)),
        (None, Some(b)) => Ok((1, b)),
        (None, None) => Err("both slots are corrupt"),
    }
}

/// The state stored for a zone: open zones are stored as they come back after power loss.
fn persisted(zones_start: u64, cond: ZoneCondition, wp: u64) -> (ZoneCondition, u64) {
    match cond {
        ZoneCondition::ImplicitOpen | ZoneCondition::ExplicitOpen if wp == zones_start => {
            (ZoneCondition::Empty, wp)
        }
        ZoneCondition::ImplicitOpen | ZoneCondition::ExplicitOpen => (ZoneCondition::Closed, wp),
        _ => (cond, wp),
    }
}

/// What an fdatasync makes durable.
#[derive(Clone, Copy, Debug)]
enum SyncOf {
    /// Guest data, before the slots that describe it.
    Data,
    /// Zone-table slots.
    Table,
}

/// Which slot of a zone holds its newest durable state, and that state's generation.
#[derive(Clone, Copy, Debug)]
pub(super) struct SlotInfo {
    /// 0 for slot A, 1 for slot B.
    pub(super) current: u8,
    pub(super) generation: u16,
}

/// The image file as [`ZoneStorage`].
pub struct ImageFile {
    /// Shared with the data paths handed out by `data_path`.
    file: Arc<File>,
    geometry: ZonedGeometry,
    layout: Layout,
    slots: Vec<SlotInfo>,
    /// Give reset zones' blocks back to the host file system (best effort; `reclaim=off` turns
    /// it off for a run).
    punch_holes: bool,
    /// Zones reset since their blocks were last given back: `reclaim` punches them when the
    /// guest leaves the disk alone, not the reset itself.
    unreclaimed: ZoneBits,
    /// Zones whose non-current slot may hold a state that a failed persist wrote and that must
    /// not win at the next open; every later persist writes that slot again.
    unsettled: BTreeSet<usize>,
    /// An fdatasync failed: written data may be lost without a trace (the host may have
    /// dropped the pages), so no write pointer is committed any more in this run.
    sync_failed: bool,
    /// With the volatile write cache (`cache=volatile`): the flushed contents of conventional
    /// blocks written since the last flush, which a power cut may restore.
    cache: Option<VolatileCache>,
    #[cfg(test)]
    io_hook: Option<IoHook>,
    /// Test-only storage failures: the n-th next operation of a kind fails with EIO.
    #[cfg(any(test, feature = "testing"))]
    fail: InjectedFailures,
}

/// A storage operation of the image that tests (and the fuzz targets) can make fail with EIO.
#[cfg(any(test, feature = "testing"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageOp {
    /// A pwrite of guest data.
    DataWrite,
    /// The fdatasync of guest data that starts a flush.
    DataSync,
    /// A pwrite of one zone-table slot.
    TableWrite,
    /// The fdatasync that makes written slots durable (in a flush or a reset).
    TableSync,
}

#[cfg(any(test, feature = "testing"))]
impl StorageOp {
    pub const ALL: [StorageOp; 4] = [
        StorageOp::DataWrite,
        StorageOp::DataSync,
        StorageOp::TableWrite,
        StorageOp::TableSync,
    ];
}

/// Countdowns to an injected EIO per [`StorageOp`] (`Some(0)`: the next one fails), and a flag
/// the failure raises when it fires, so that a test can tell which request met it.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
struct InjectedFailures {
    countdown: [Option<u32>; 4],
    fired: Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(any(test, feature = "testing"))]
impl InjectedFailures {
    /// Err(EIO) if this operation of `kind` is the one to fail.
    fn check(&mut self, kind: StorageOp) -> io::Result<()> {
        let countdown = &mut self.countdown[kind as usize];
        match countdown {
            Some(0) => {
                *countdown = None;
                self.fired.store(true, std::sync::atomic::Ordering::SeqCst);
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// Test-only failures of the image's storage (see [`StorageOp`]).
#[cfg(any(test, feature = "testing"))]
impl ImageFile {
    /// Makes the operation of `kind` after the next `skip` ones fail with EIO (once). Returns a
    /// flag set when it has failed. While a data write failure is pending, data moves through
    /// this backend, not a shared `DataPath`, so that the failure can be injected.
    pub fn fail_storage_op(
        &mut self,
        kind: StorageOp,
        skip: u32,
    ) -> Arc<std::sync::atomic::AtomicBool> {
        self.fail.countdown[kind as usize] = Some(skip);
        self.fail.fired.clone()
    }
}

impl ImageFile {
    fn new(file: File, geometry: ZonedGeometry, layout: Layout, slots: Vec<SlotInfo>) -> Self {
        ImageFile {
            file: Arc::new(file),
            geometry,
            layout,
            slots,
            punch_holes: true,
            unreclaimed: ZoneBits::new(geometry.nr_zones()),
            unsettled: BTreeSet::new(),
            sync_failed: false,
            cache: None,
            #[cfg(test)]
            io_hook: None,
            #[cfg(any(test, feature = "testing"))]
            fail: InjectedFailures::default(),
        }
    }
}

/// What the file backend did, reported to tests so they can model a volatile page cache.
#[cfg(test)]
#[derive(Debug)]
enum IoEvent<'a> {
    /// pwrite of guest data (or of zone-table slots when `table`).
    Write {
        offset: u64,
        data: &'a [u8],
        table: bool,
    },
    /// A hole punched (reads as zeros afterwards).
    Punch { offset: u64, len: u64 },
    /// A successful fdatasync.
    Sync,
}

#[cfg(test)]
type IoHook = Box<dyn FnMut(IoEvent<'_>) + Send>;

impl std::fmt::Debug for ImageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFile")
            .field("geometry", &self.geometry)
            .field("layout", &self.layout)
            .finish()
    }
}

impl ImageFile {
    fn data_pos(&self, sector: u64) -> u64 {
        self.layout.data_offset + sector * SECTOR_SIZE
    }

    /// fdatasync (`kind` says of what, for injected failures); a failure is sticky (see
    /// `sync_failed`).
    fn sync(&mut self, _kind: SyncOf) -> io::Result<()> {
        #[cfg(any(test, feature = "testing"))]
        let result = self
            .fail
            .check(match _kind {
                SyncOf::Data => StorageOp::DataSync,
                SyncOf::Table => StorageOp::TableSync,
            })
            .and_then(|()| self.file.sync_data());
        #[cfg(not(any(test, feature = "testing")))]
        let result = self.file.sync_data();
        if let Err(error) = result {
            if !self.sync_failed {
                log::warn!(
                    "zoned image: fdatasync failed ({error}); data written before may be lost, so \
                     every later flush and reset of this run fails"
                );
            }
            self.sync_failed = true;
            return Err(error);
        }
        #[cfg(test)]
        self.event(IoEvent::Sync);
        Ok(())
    }

    /// The state in the current (newest durable) slot of `zone`.
    fn durable_state(&self, zone: usize) -> io::Result<(ZoneCondition, u64)> {
        let mut slot = [0u8; SLOT_SIZE as usize];
        self.file
            .read_exact_at(&mut slot, self.slot_pos(zone, self.slots[zone].current))?;
        decode_slot(zone, &slot)
            .map(|slot| (slot.cond, slot.wp))
            .map_err(|_| io::Error::new(ErrorKind::InvalidData, "current zone slot is corrupt"))
    }

    fn slot_pos(&self, zone: usize, slot: u8) -> u64 {
        self.layout.table_offset + (zone as u64 * 2 + u64::from(slot)) * SLOT_SIZE
    }

    /// Appends the unsettled zones not in `states` with their last durable state, so that a
    /// persist of `states` also supersedes what failed persists left in their other slot.
    fn with_unsettled_as_durable(
        &self,
        mut states: Vec<(usize, ZoneCondition, u64)>,
    ) -> io::Result<Vec<(usize, ZoneCondition, u64)>> {
        for &zone in &self.unsettled {
            if !states.iter().any(|s| s.0 == zone) {
                let (cond, wp) = self.durable_state(zone)?;
                states.push((zone, cond, wp));
            }
        }
        Ok(states)
    }

    /// After a failed fdatasync: writes the last durable state over what failed persists left
    /// (best effort), and returns the error every flush and reset gets from now on.
    fn sticky_error(&mut self) -> io::Error {
        if !self.unsettled.is_empty() {
            let settled = self
                .with_unsettled_as_durable(Vec::new())
                .and_then(|states| self.persist(&states));
            if let Err(error) = settled {
                log::warn!(
                    "zoned image: cannot rewrite the zone table after a failed fdatasync: {error}"
                );
            }
        }
        io::Error::other(
            "an earlier fdatasync of the image failed; nothing more is committed in this run",
        )
    }

    #[cfg(test)]
    fn event(&mut self, event: IoEvent<'_>) {
        if let Some(hook) = &mut self.io_hook {
            hook(event);
        }
    }

    /// Writes the given zone states into each zone's older slot and makes them durable. Only
    /// after the fdatasync succeeded do those slots become current; on failure those zones are
    /// unsettled, and later persists write the same (still non-current) slots again. Slots
    /// close together go out in one read-modify-write of the table bytes between them (a
    /// RESET_ALL of thousands of zones is a few system calls, not one per zone); the bytes
    /// between are rewritten as they are, in pages the host writes back anyway.
    fn persist(&mut self, states: &[(usize, ZoneCondition, u64)]) -> io::Result<()> {
        if states.is_empty() {
            return Ok(());
        }
        let mut flips = Vec::new();
        flips.try_reserve(states.len())?;
        let mut slots = Vec::new();
        slots.try_reserve(states.len())?;
        for &(zone, cond, wp) in states {
            let info = self.slots[zone];
            let target = 1 - info.current;
            let generation = info.generation.wrapping_add(1);
            let (cond, wp) = persisted(self.geometry.zone_start(zone), cond, wp);
            slots.push((
                self.slot_pos(zone, target),
                zone,
                encode_slot(zone, cond, wp, generation),
            ));
            flips.push((
                zone,
                SlotInfo {
                    current: target,
                    generation,
                },
            ));
        }
        slots.sort_unstable_by_key(|slot| slot.0);
        let mut run = TableRun::default();
        for (pos, zone, slot) in slots {
            if !run.extends_to(pos) {
                self.write_table_run(&mut run)?;
            }
            // Before the write: a write that fails may still have changed the slot.
            self.unsettled.insert(zone);
            #[cfg(any(test, feature = "testing"))]
            if let Err(error) = self.fail.check(StorageOp::TableWrite) {
                self.write_table_run(&mut run)?;
                return Err(error);
            }
            run.add(pos, slot);
        }
        self.write_table_run(&mut run)?;
        self.sync(SyncOf::Table)?;
        for (zone, info) in flips {
            self.slots[zone] = info;
            self.unsettled.remove(&zone);
        }
        Ok(())
    }

    /// Writes a run of slots: reads the table bytes they span, puts the slots in, writes the
    /// bytes back. Leaves the run empty.
    fn write_table_run(&mut self, run: &mut TableRun) -> io::Result<()> {
        let Some((start, len)) = run.span() else {
            return Ok(());
        };
        let mut bytes = zeroed(len as usize)?;
        self.file.read_exact_at(&mut bytes, start)?;
        for (pos, slot) in run.slots.drain(..) {
            let at = (pos - start) as usize;
            bytes[at..at + slot.len()].copy_from_slice(&slot);
        }
        self.file.write_all_at(&bytes, start)?;
        #[cfg(test)]
        self.event(IoEvent::Write {
            offset: start,
            data: &bytes,
            table: true,
        });
        Ok(())
    }

    fn punch_hole(&mut self, sector: u64, nr_sectors: u64) {
        let (Ok(offset), Ok(len)) = (
            libc::off_t::try_from(self.data_pos(sector)),
            libc::off_t::try_from(nr_sectors * SECTOR_SIZE),
        ) else {
            return;
        };
        // SAFETY: fallocate only reads its integer arguments; the fd is owned by `self.file`
        // and stays open for the call. Failure (e.g. EOPNOTSUPP) is harmless: the blocks stay
        // allocated and are never read, as they are above the write pointer.
        let ret = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        #[cfg(test)]
        if ret == 0 {
            self.event(IoEvent::Punch {
                offset: offset as u64,
                len: len as u64,
            });
        }
        let _ = ret;
    }
}

impl ZoneStorage for ImageFile {
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, self.data_pos(sector))
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> io::Result<()> {
        #[cfg(any(test, feature = "testing"))]
        self.fail.check(StorageOp::DataWrite)?;
        self.save_flushed_blocks(sector, data.len() as u64)?;
        self.file.write_all_at(data, self.data_pos(sector))?;
        #[cfg(test)]
        self.event(IoEvent::Write {
            offset: self.data_pos(sector),
            data,
            table: false,
        });
        Ok(())
    }

    /// Resets are made durable before they complete: a reset allows the same sectors to be
    /// written again, and if the reset were lost in a crash while the new (unflushed) data
    /// partly landed, the old write pointer would cover a mix of old and new data. Open, close
    /// and finish only change state that the next flush persists.
    fn apply_zone_op(&mut self, plan: &ZoneOpPlan) -> io::Result<()> {
        let is_reset = matches!(
            plan.kind,
            ZoneOpKind::Single(ZoneOp::Reset) | ZoneOpKind::ResetAll
        );
        if !is_reset {
            return Ok(());
        }
        if self.sync_failed {
            return Err(self.sticky_error());
        }
        let resets: Vec<(usize, ZoneCondition, u64)> = plan
            .updates
            .iter()
            .map(|u| (u.index, u.cond, u.wp))
            .collect();
        // No data sync comes first, so zones a failed persist left behind get their last
        // durable state, not their state in memory.
        let states = self.with_unsettled_as_durable(resets)?;
        self.persist(&states)?;
        if let Some(cache) = &mut self.cache {
            cache.forget_advances(plan.updates.iter().map(|u| u.index));
        }
        if self.punch_holes {
            for update in plan.updates.iter().filter(|u| u.old_wp > u.start) {
                self.unreclaimed.insert(update.index);
            }
        }
        Ok(())
    }

    /// Punches the zones reset since the last reclaim, each above its write pointer now, one
    /// fallocate per zone, until `budget` is spent; true if some are left. A host file system
    /// pays per extent freed (ext4: about 0.15 ms each), so merging zones into fewer calls saves
    /// nothing and would only make one call long. A zone written again since its reset keeps
    /// its new data: only what lies above it goes, and that reads as zeros anyway. READ_ONLY
    /// and OFFLINE zones keep everything.
    fn reclaim(&mut self, zones: &ZoneSet, budget: Duration) -> bool {
        let started = Instant::now();
        let mut cursor = 0;
        while let Some(index) = self.unreclaimed.next_from(cursor) {
            if started.elapsed() >= budget && cursor > 0 {
                return true;
            }
            cursor = index + 1;
            self.unreclaimed.remove(index);
            let (cond, wp) = zones.saved_state(index);
            if holds_blocks_above_wp(cond) {
                let end = self.geometry.zone_start(index) + self.geometry.zone_len(index);
                self.punch_hole(wp, end - wp);
            }
        }
        false
    }

    fn power_cut(&mut self, zones: &ZoneSet, cut: PowerCut) -> io::Result<Option<PowerCutReport>> {
        self.cut_power(zones, cut.loss, &mut CutRandom::new(cut.seed))
    }

    fn data_path(&self) -> Option<DataPath> {
        // Tests that model the page cache must see every write.
        #[cfg(test)]
        if self.io_hook.is_some() {
            return None;
        }
        // The volatile cache saves blocks before they change.
        if self.cache.is_some() {
            return None;
        }
        // An injected data write failure must see every write.
        #[cfg(any(test, feature = "testing"))]
        if self.fail.countdown[StorageOp::DataWrite as usize].is_some() {
            return None;
        }
        Some(DataPath::buffered(
            self.file.clone(),
            self.layout.data_offset,
        ))
    }

    /// A failed fdatasync is sticky: the host may have dropped the pages it could not write,
    /// and a later fdatasync would succeed without them, so committing write pointers then
    /// could cover lost data. Slots a failed persist left are rewritten by the next successful
    /// flush (with the zones' state now) or after a sticky failure (with their durable state).
    fn flush(&mut self, zones: &ZoneSet) -> io::Result<()> {
        if self.sync_failed {
            return Err(self.sticky_error());
        }
        // Data first: a slot must never describe data that is not durable yet.
        if let Err(error) = self.sync(SyncOf::Data) {
            let _ = self.sticky_error();
            return Err(error);
        }
        let changed = zones.changed_zones();
        let mut states = Vec::new();
        states.try_reserve(changed.len() + self.unsettled.len())?;
        let unsettled = self.unsettled.iter().filter(|i| !zones.is_changed(**i));
        for &i in changed.iter().chain(unsettled) {
            let (cond, wp) = zones.saved_state(i);
            states.push((i, cond, wp));
        }
        self.note_flushed_advances(&states)?;
        self.persist(&states)?;
        if let Some(cache) = &mut self.cache {
            cache.flushed();
        }
        Ok(())
    }
}

/// How many zones' slots opening an image reads per system call (256 KiB) and thread.
const TABLE_READ_ZONES: usize = 8192;

/// Slots whose table bytes lie closer together than this go out in one write: no page the
/// write spans is left without a changed slot.
const TABLE_RUN_GAP: u64 = 4096;

/// Zone-table slots to write in one go, in ascending file order.
#[derive(Default)]
struct TableRun {
    slots: Vec<(u64, [u8; SLOT_SIZE as usize])>,
}

impl TableRun {
    /// Whether a slot at `pos` belongs in this run (always, while it is empty).
    fn extends_to(&self, pos: u64) -> bool {
        self.slots
            .last()
            .is_none_or(|&(last, _)| pos - (last + SLOT_SIZE) < TABLE_RUN_GAP)
    }

    fn add(&mut self, pos: u64, slot: [u8; SLOT_SIZE as usize]) {
        self.slots.push((pos, slot));
    }

    /// The file bytes from the first slot's start to the last one's end, if any.
    fn span(&self) -> Option<(u64, u64)> {
        let (first, _) = self.slots.first()?;
        let (last, _) = self.slots.last()?;
        Some((*first, last + SLOT_SIZE - first))
    }
}

/// What the zone table of an image says, per zone.
struct ZoneTable {
    /// Which slot is current.
    slots: Vec<SlotInfo>,
    /// The (condition, write pointer) it holds.
    states: Vec<(ZoneCondition, u64)>,
}

/// Why the zone table could not be read.
enum TableFailure {
    Io(io::Error),
    Corrupt { zone: usize, reason: &'static str },
}

/// Below this many zones the table is decoded on the calling thread: a thread costs more.
const PARALLEL_TABLE_ZONES: usize = 1 << 16;

/// Reads and checks the slots of `n` zones: for each zone, which slot is current and the
/// state it holds. A large table is split among up to four threads (a million zones' two
/// million slot checksums were most of the open time); the failure reported is the one of the
/// lowest zone, as a single thread would find it.
fn read_zone_table(file: &File, table_offset: u64, n: usize) -> Result<ZoneTable, TableFailure> {
    let mut slots = Vec::new();
    let mut states = Vec::new();
    let no_memory = |e: std::collections::TryReserveError| TableFailure::Io(e.into());
    slots.try_reserve_exact(n).map_err(no_memory)?;
    states.try_reserve_exact(n).map_err(no_memory)?;
    let placeholder = SlotInfo {
        current: 0,
        generation: 0,
    };
    slots.resize(n, placeholder);
    states.resize(n, (ZoneCondition::Empty, 0));
    let workers = if n < PARALLEL_TABLE_ZONES {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |p| p.get().min(4))
    };
    let per_worker = n.div_ceil(workers);
    let results: Vec<Result<(), TableFailure>> = if workers == 1 {
        vec![decode_zone_range(
            file,
            table_offset,
            0,
            &mut slots,
            &mut states,
        )]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = slots
                .chunks_mut(per_worker)
                .zip(states.chunks_mut(per_worker))
                .enumerate()
                .map(|(i, (slots, states))| {
                    let first = i * per_worker;
                    scope.spawn(move || decode_zone_range(file, table_offset, first, slots, states))
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle.join().unwrap_or_else(|_| {
                        let panicked = io::Error::other("a zone-table reader panicked");
                        Err(TableFailure::Io(panicked))
                    })
                })
                .collect()
        })
    };
    // Ranges in zone order: the first failure is the lowest zone's.
    for result in results {
        result?;
    }
    Ok(ZoneTable { slots, states })
}

/// Decodes the slots of the zones from `first` on, one per entry of `slots` and `states`,
/// reading 8,192 zones at a time into one buffer that stays in the CPU cache.
fn decode_zone_range(
    file: &File,
    table_offset: u64,
    first: usize,
    slots: &mut [SlotInfo],
    states: &mut [(ZoneCondition, u64)],
) -> Result<(), TableFailure> {
    let pair_bytes = 2 * SLOT_SIZE as usize;
    let fail = |zone, reason| TableFailure::Corrupt { zone, reason };
    let mut table =
        zeroed(TABLE_READ_ZONES.min(slots.len()) * pair_bytes).map_err(TableFailure::Io)?;
    for start in (0..slots.len()).step_by(TABLE_READ_ZONES) {
        let count = TABLE_READ_ZONES.min(slots.len() - start);
        let piece = &mut table[..count * pair_bytes];
        let offset = table_offset + ((first + start) * pair_bytes) as u64;
        file.read_exact_at(piece, offset)
            .map_err(TableFailure::Io)?;
        for (k, pair) in piece.chunks_exact(pair_bytes).enumerate() {
            let zone = first + start + k;
            let a = decode_slot(zone, &pair[..16]).ok();
            let b = decode_slot(zone, &pair[16..]).ok();
            let (current, slot) = current_slot(a, b).map_err(|reason| fail(zone, reason))?;
            slots[start + k] = SlotInfo {
                current,
                generation: slot.generation,
            };
            states[start + k] = (slot.cond, slot.wp);
        }
    }
    Ok(())
}

/// Whether a zone's blocks above its write pointer may be punched: those of a sequential zone
/// that accepts writes. READ_ONLY and OFFLINE zones keep everything they hold.
fn holds_blocks_above_wp(cond: ZoneCondition) -> bool {
    matches!(
        cond,
        ZoneCondition::Empty
            | ZoneCondition::ImplicitOpen
            | ZoneCondition::ExplicitOpen
            | ZoneCondition::Closed
            | ZoneCondition::Full
    )
}

/// One bit per zone.
#[derive(Debug)]
struct ZoneBits {
    words: Vec<u64>,
}

impl ZoneBits {
    fn new(nr_zones: u64) -> Self {
        ZoneBits {
            words: vec![0; nr_zones.div_ceil(64) as usize],
        }
    }

    fn insert(&mut self, index: usize) {
        self.words[index / 64] |= 1 << (index % 64);
    }

    fn remove(&mut self, index: usize) {
        self.words[index / 64] &= !(1 << (index % 64));
    }

    /// The lowest index at or above `from` that is set.
    fn next_from(&self, from: usize) -> Option<usize> {
        let mut word = from / 64;
        let mut bits = self.words.get(word)? & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
            word += 1;
            bits = *self.words.get(word)?;
        }
    }
}

/// A zero-filled buffer, or an error instead of an abort when memory is short.
pub(super) fn zeroed(len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(len)?;
    buf.resize(len, 0);
    Ok(buf)
}

/// Creates a new file exclusively (mode 0600 before the umask) under a random temporary name
/// next to `name` in `dir`; returns it and its path.
fn create_temporary(dir: &Path, name: &std::ffi::OsStr) -> io::Result<(File, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut attempts = 0;
    loop {
        let mut hidden = std::ffi::OsString::from(".");
        hidden.push(name);
        hidden.push(format!(".new-{:016x}", random_u64()?));
        let temp = dir.join(hidden);
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
        {
            Ok(file) => return Ok((file, temp)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists && attempts < 16 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// What a path that is not a regular file is, for the error; `None` for a regular file. A block
/// device counts as "a block device" here: callers that accept one check for it first.
pub(super) fn non_file_kind(file_type: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    Some(if file_type.is_file() {
        return None;
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    })
}

fn refuse_non_file(path: &Path, metadata: &std::fs::Metadata) -> Result<(), ImageError> {
    match non_file_kind(metadata.file_type()) {
        None => Ok(()),
        Some(kind) => Err(ImageError::NotAFile {
            path: path.to_path_buf(),
            kind,
        }),
    }
}

/// A seed for `--power-cut` when none is given: 64 random bits from the kernel.
pub fn random_seed() -> io::Result<u64> {
    random_u64()
}

/// 64 random bits from the kernel.
pub(crate) fn random_u64() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer, which is valid
    // and writable for that length during the call.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        return Err(if got < 0 {
            io::Error::last_os_error()
        } else {
            io::Error::other("getrandom returned too few bytes")
        });
    }
    Ok(u64::from_ne_bytes(bytes))
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ZonedDisk<ImageFile> {
    /// `cache=volatile`: writes since the last flush stay losable by a power cut.
    pub fn set_volatile_cache(&mut self) {
        self.storage_mut().set_volatile_cache();
    }

    /// What the command line asks for: opens the image at `options.path` if it exists
    /// (explicit options must match it), else creates it from the options plus defaults.
    pub fn open_or_create(options: &ZonedDiskOptions) -> Result<Self, ImageError> {
        let path = options.path.as_path();
        let mut disk = if path.exists() {
            Self::open(path, &options.overrides)?
        } else {
            let geometry = options
                .overrides
                .geometry()
                .map_err(|source| ImageError::Geometry {
                    path: path.to_path_buf(),
                    source,
                })?;
            Self::create(path, geometry)?
        };
        disk.storage_mut().punch_holes = options.reclaim.unwrap_or(true);
        Ok(disk)
    }

    /// A throwaway image for this run only (`--zoned-disk tmp`), in `dir`: created without a
    /// name (O_TMPFILE) or, where the file system cannot, exclusively under a random name that
    /// is unlinked at once; mode 0600. Nothing at a predictable path is ever opened, no other
    /// process can open the image, and nothing is left behind, even after a SIGKILL.
    pub fn create_throwaway(dir: &Path, options: &ZonedDiskOptions) -> Result<Self, ImageError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = options.path.as_path();
        let geometry = options
            .overrides
            .geometry()
            .map_err(|source| ImageError::Geometry {
                path: path.to_path_buf(),
                source,
            })?;
        let err = io_err(path);
        let unnamed = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir);
        let file = match unnamed {
            Ok(file) => file,
            // No O_TMPFILE in this kernel or file system.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                let (file, temp) =
                    create_temporary(dir, std::ffi::OsStr::new("vmm-zoned.img")).map_err(&err)?;
                std::fs::remove_file(&temp).map_err(&err)?;
                file
            }
            Err(e) => return Err(err(e)),
        };
        let mut disk = Self::initialize(file, path, geometry)?;
        disk.storage_mut().punch_holes = options.reclaim.unwrap_or(true);
        Ok(disk)
    }

    /// Creates a new image; refuses to touch an existing file. The file is sparse: only the
    /// header and zone table take space until data is written. It is built under a temporary
    /// name in the same directory and linked to `path` only when complete, so `path` never
    /// holds a half-created image, whatever stops vmm on the way.
    pub fn create(path: &Path, geometry: ZonedGeometry) -> Result<Self, ImageError> {
        let geometry = ZonedGeometry::new(geometry).map_err(|source| ImageError::Geometry {
            path: path.to_path_buf(),
            source,
        })?;
        let exists = || ImageError::Exists(path.to_path_buf());
        if path.symlink_metadata().is_ok() {
            return Err(exists());
        }
        let err = io_err(path);
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let name = path.file_name().ok_or_else(|| {
            err(io::Error::new(
                ErrorKind::InvalidInput,
                "the path names no file",
            ))
        })?;
        let (file, temp) = create_temporary(dir, name).map_err(&err)?;
        let result = crate::file_lock::lock(&file, true)
            .map_err(|e| lock_error(path, e))
            .and_then(|()| Self::initialize(file, path, geometry))
            .and_then(|disk| match std::fs::hard_link(&temp, path) {
                Ok(()) => Ok(disk),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(exists()),
                Err(e) => Err(err(e)),
            });
        // We created the temporary name (exclusively), so removing it is ours to do; on success
        // the image lives on under `path`.
        let _ = std::fs::remove_file(&temp);
        let disk = result?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(&err)?;
        Ok(disk)
    }

    fn initialize(file: File, path: &Path, geometry: ZonedGeometry) -> Result<Self, ImageError> {
        let layout = Layout::of(&geometry);
        let zones = ZoneSet::new(geometry);
        let n = zones.len();
        let err = io_err(path);
        let mut table = zeroed(n * 2 * SLOT_SIZE as usize).map_err(&err)?;
        for (i, pair) in table.chunks_exact_mut(2 * SLOT_SIZE as usize).enumerate() {
            let (cond, wp) = zones.saved_state(i);
            // Slot A is current (generation 1), slot B an older copy (generation 0).
            pair[..16].copy_from_slice(&encode_slot(i, cond, wp, 1));
            pair[16..].copy_from_slice(&encode_slot(i, cond, wp, 0));
        }
        file.set_len(layout.file_size).map_err(&err)?;
        file.write_all_at(&table, layout.table_offset)
            .map_err(&err)?;
        file.write_all_at(&encode_header(&geometry, &layout), 0)
            .map_err(&err)?;
        file.sync_all().map_err(&err)?;
        let mut slots = Vec::new();
        slots.try_reserve_exact(n).map_err(|e| err(e.into()))?;
        slots.resize(
            n,
            SlotInfo {
                current: 0,
                generation: 1,
            },
        );
        Ok(ZonedDisk::new(
            zones,
            ImageFile::new(file, geometry, layout, slots),
        ))
    }

    /// Opens an existing image. `given` holds the geometry options given explicitly; each must
    /// match the image. Never writes to the file: on any error it is left as it was. Zones that
    /// were open come back CLOSED (or EMPTY when nothing was written), as after a power loss.
    pub fn open(path: &Path, given: &GeometryOverrides) -> Result<Self, ImageError> {
        let err = io_err(path);
        use std::os::unix::fs::OpenOptionsExt;
        // Looked at before opening: a FIFO or a device node is not read as an image.
        refuse_non_file(path, &std::fs::metadata(path).map_err(&err)?)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(&err)?;
        // Again for what was opened, should the name have changed hands in between.
        refuse_non_file(path, &file.metadata().map_err(&err)?)?;
        // Before reading anything: another VMM may be writing the image right now.
        crate::file_lock::lock(&file, true).map_err(|e| lock_error(path, e))?;
        let header = read_header(&file, path)?;
        check_file_size(path, &header)?;
        let geometry = header.geometry;
        for (option, value) in given.given() {
            let image = option.value_of(&geometry);
            if image != value {
                return Err(ImageError::Conflict {
                    path: path.to_path_buf(),
                    option: option.key(),
                    given: value,
                    image,
                });
            }
        }
        let (slots, zones) = read_zones(&file, path, &header)?;
        Ok(ZonedDisk::new(
            zones,
            ImageFile::new(file, geometry, header.layout, slots),
        ))
    }
}

/// What an image's header says, checked: the geometry, the layout it implies, and the size of
/// the file (which `check_file_size` compares with the layout).
pub(super) struct ImageHeader {
    pub(super) geometry: ZonedGeometry,
    pub(super) layout: Layout,
    pub(super) file_size: u64,
}

/// Reads and checks the header of an image (docs/zoned-image-format.md, "Opening", steps 1 to
/// 3: magic, version, checksum, geometry and layout). Only reads the file.
pub(super) fn read_header(file: &File, path: &Path) -> Result<ImageHeader, ImageError> {
    let err = io_err(path);
    let size = file.metadata().map_err(&err)?.len();
    let mut header = vec![0u8; HEADER_SIZE.min(size) as usize];
    file.read_exact_at(&mut header, 0).map_err(&err)?;
    if header.len() < MAGIC.len() || header[..MAGIC.len()] != MAGIC {
        return Err(ImageError::NotAnImage(path.to_path_buf()));
    }
    if size < HEADER_SIZE {
        return Err(ImageError::Truncated {
            path: path.to_path_buf(),
            size,
            expected: HEADER_SIZE,
        });
    }
    let version = le_u32(&header, 8);
    if version != FORMAT_VERSION {
        return Err(ImageError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let corrupt = |reason: String| ImageError::CorruptHeader {
        path: path.to_path_buf(),
        reason,
    };
    let stored_crc = le_u32(&header, HEADER_CRC_OFFSET);
    if stored_crc != crc32(&header[..HEADER_CRC_OFFSET]) {
        return Err(corrupt("checksum mismatch".into()));
    }
    if le_u32(&header, 12) as u64 != HEADER_SIZE {
        return Err(corrupt(format!("header size {}", le_u32(&header, 12))));
    }
    let geometry = ZonedGeometry::new(ZonedGeometry {
        capacity: le_u64(&header, 16),
        zone_size: le_u64(&header, 24),
        zone_capacity: le_u64(&header, 32),
        conventional_zones: le_u32(&header, 40),
        max_open: le_u32(&header, 44),
        max_active: le_u32(&header, 48),
        max_append_sectors: le_u32(&header, 52),
        write_granularity: le_u32(&header, 56),
        // 0 in images made before the field existed, which had 512-byte blocks.
        logical_block_size: match le_u32(&header, 80) {
            0 => DEFAULT_LOGICAL_BLOCK_SIZE,
            size => size,
        },
    })
    .map_err(|e| corrupt(e.to_string()))?;
    let layout = Layout::of(&geometry);
    if u64::from(le_u32(&header, 60)) != geometry.nr_zones()
        || le_u64(&header, 64) != layout.table_offset
        || le_u64(&header, 72) != layout.data_offset
    {
        return Err(corrupt(
            "zone count or layout offsets disagree with the geometry".into(),
        ));
    }
    Ok(ImageHeader {
        geometry,
        layout,
        file_size: size,
    })
}

/// Step 4 of opening: the file is exactly as long as its header's layout says.
pub(super) fn check_file_size(path: &Path, header: &ImageHeader) -> Result<(), ImageError> {
    let (size, layout) = (header.file_size, header.layout);
    if size < layout.file_size {
        return Err(ImageError::Truncated {
            path: path.to_path_buf(),
            size,
            expected: layout.file_size,
        });
    }
    if size > layout.file_size {
        return Err(ImageError::WrongSize {
            path: path.to_path_buf(),
            size,
            expected: layout.file_size,
        });
    }
    Ok(())
}

/// Step 6 of opening: reads the zone table of an image whose header was checked, and rebuilds
/// the zones from their current slots as after a power loss. Only reads the file.
pub(super) fn read_zones(
    file: &File,
    path: &Path,
    header: &ImageHeader,
) -> Result<(Vec<SlotInfo>, ZoneSet), ImageError> {
    let (geometry, layout) = (header.geometry, header.layout);
    let err = io_err(path);
    let n = geometry.nr_zones() as usize;
    let table_error = |zone: usize, reason: &str| ImageError::CorruptZoneTable {
        path: path.to_path_buf(),
        zone,
        reason: reason.to_string(),
    };
    let ZoneTable { slots, states } =
        read_zone_table(file, layout.table_offset, n).map_err(|failure| match failure {
            TableFailure::Io(e) => err(e),
            TableFailure::Corrupt { zone, reason } => table_error(zone, reason),
        })?;
    let zones = ZoneSet::restore(geometry, states.into_iter()).map_err(|e| match &e {
        super::state::RestoreError::Inconsistent { index, .. } => {
            table_error(*index, &e.to_string())
        }
        super::state::RestoreError::Count { .. }
        | super::state::RestoreError::TooManyActive { .. } => ImageError::CorruptZoneStates {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })?;
    Ok((slots, zones))
}

#[cfg(test)]
pub(super) mod tests;
