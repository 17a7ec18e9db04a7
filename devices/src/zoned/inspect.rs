//! Reading a zoned image without changing it, for `vmm image` on the host: its zones as vmm
//! would open them ([`InspectedImage`]), and a check of what docs/zoned-image-format.md
//! promises that lists every problem it finds instead of stopping at the first ([`check`]).
//!
//! Both open the file read-only under a shared lock: a running vmm holds an exclusive one, so
//! an image in use is refused rather than read in the middle of a commit. Nothing here writes,
//! and the checks are the image module's own (`read_header`, `decode_slot`, `current_slot`)
//! and the state machine's (`ZoneSet::restored_condition`), so a tool and vmm never disagree
//! about what a valid image is.

use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::geometry::{ZonedGeometry, SECTOR_SIZE};
use super::image::{self, ImageError, ImageHeader, SlotInfo, StoredSlot, SLOT_SIZE};
use super::state::{RestoreError, ZoneCondition, ZoneSet, ZoneType};

/// Why an image cannot be inspected at all. One line each, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// What opening it in vmm would say too.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A directory, a character device, a FIFO or a socket.
    #[error("{path} is {kind}, not a zoned image file")]
    NotAFile { path: PathBuf, kind: &'static str },
    /// A block device: a host zoned device keeps its zones itself.
    #[error("{0} is a block device, not a zoned image file (blkzone report shows a zoned device's zones)")]
    BlockDevice(PathBuf),
}

/// The Linux name of a zone condition (BLK_ZONE_COND_*, without the prefix).
pub fn condition_name(cond: ZoneCondition) -> &'static str {
    match cond {
        ZoneCondition::NotWritePointer => "NOT_WP",
        ZoneCondition::Empty => "EMPTY",
        ZoneCondition::ImplicitOpen => "IMP_OPEN",
        ZoneCondition::ExplicitOpen => "EXP_OPEN",
        ZoneCondition::Closed => "CLOSED",
        ZoneCondition::ReadOnly => "READONLY",
        ZoneCondition::Full => "FULL",
        ZoneCondition::Offline => "OFFLINE",
    }
}

/// The name util-linux's blkzone gives a zone type.
pub fn type_name(zone_type: ZoneType) -> &'static str {
    match zone_type {
        ZoneType::Conventional => "CONVENTIONAL",
        ZoneType::SequentialWriteRequired => "SEQ_WRITE_REQUIRED",
    }
}

/// Refuses what is not a regular file, by its metadata.
fn refuse_non_file(path: &Path, metadata: &Metadata) -> Result<(), InspectError> {
    let file_type = metadata.file_type();
    if file_type.is_block_device() {
        return Err(InspectError::BlockDevice(path.to_path_buf()));
    }
    let Some(kind) = image::non_file_kind(file_type) else {
        return Ok(());
    };
    Err(InspectError::NotAFile {
        path: path.to_path_buf(),
        kind,
    })
}

/// Opens an image for reading only, under a shared lock.
fn open_read_only(path: &Path) -> Result<File, InspectError> {
    let io_error = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Looked at before opening: opening a FIFO would wait for a writer, and a device node may
    // have side effects on open.
    refuse_non_file(path, &std::fs::metadata(path).map_err(io_error)?)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_error)?;
    // Again for what was opened, should the name have changed hands in between.
    refuse_non_file(path, &file.metadata().map_err(io_error)?)?;
    crate::file_lock::lock(&file, false).map_err(|e| image::lock_error(path, e))?;
    Ok(file)
}

/// An image's zones as vmm would open them (open zones come back CLOSED or EMPTY), read
/// without changing the file. Fails with the error vmm's open would give.
pub struct InspectedImage {
    zones: ZoneSet,
    slots: Vec<SlotInfo>,
}

impl InspectedImage {
    pub fn open(path: &Path) -> Result<Self, InspectError> {
        let file = open_read_only(path)?;
        let header = image::read_header(&file, path)?;
        image::check_file_size(path, &header)?;
        let (slots, zones) = image::read_zones(&file, path, &header)?;
        Ok(InspectedImage { zones, slots })
    }

    pub fn geometry(&self) -> &ZonedGeometry {
        self.zones.geometry()
    }

    /// The zones: `zone(i)` is what a guest's report shows, `saved_state(i)` what the table
    /// holds (for a FULL zone, its write pointer is the end of its data).
    pub fn zones(&self) -> &ZoneSet {
        &self.zones
    }

    /// The table slot zone `index`'s state came from ('A' or 'B') and its generation.
    pub fn current_slot(&self, index: usize) -> Option<(char, u16)> {
        let slot = self.slots.get(index)?;
        Some((slot_name(slot.current), slot.generation))
    }
}

fn slot_name(slot: u8) -> char {
    if slot == 0 {
        'A'
    } else {
        'B'
    }
}

/// How bad a finding of [`check`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The image is sound and opens, but holds something worth knowing (data above a write
    /// pointer, which costs space only).
    Warning,
    /// Damage: vmm refuses the image, or a table slot is corrupt.
    Error,
}

/// One problem [`check`] found: the zone it concerns, if any, and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub zone: Option<usize>,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.severity {
            Severity::Warning => "warning: ",
            Severity::Error => "error: ",
        })?;
        if let Some(zone) = self.zone {
            write!(f, "zone {zone}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// What [`check`] found.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// The geometry, when the header is sound.
    pub geometry: Option<ZonedGeometry>,
    /// How many zones' state is in slot A and in slot B.
    pub current_slots: [u64; 2],
    /// Bytes stored above write pointers, in all zones.
    pub unreclaimed_bytes: u64,
    /// Every problem, in file order (header, table by zone, data by zone).
    pub findings: Vec<Finding>,
}

impl CheckReport {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    fn error(&mut self, zone: Option<usize>, message: String) {
        self.push(Severity::Error, zone, message);
    }

    fn push(&mut self, severity: Severity, zone: Option<usize>, message: String) {
        self.findings.push(Finding {
            severity,
            zone,
            message,
        });
    }
}

/// Zones whose slots are read per system call (256 KiB).
const TABLE_CHUNK_ZONES: usize = 8192;

/// Checks an image without changing it: the header; both slots of every zone (checksum,
/// reserved byte, condition code) and which one is current; the current state against the
/// geometry (write pointer within the zone's capacity, condition possible there); the active
/// zones against max-active; and, with SEEK_DATA/SEEK_HOLE, data stored above write pointers.
///
/// Data above a write pointer is a warning: the format allows it (a reset not yet reclaimed
/// when vmm stopped, `reclaim=off`, writes never flushed) and it reads as zeros. A header the
/// rest cannot be read without (a corrupt or truncated header, a wrong file size before the
/// table ends) is an error finding that ends the check. Errs only when the file cannot be
/// checked at all: missing, not a regular file, not a vmm image, another version, in use.
pub fn check(path: &Path) -> Result<CheckReport, InspectError> {
    let file = open_read_only(path)?;
    let mut report = CheckReport::default();
    let header = match image::read_header(&file, path) {
        Ok(header) => header,
        Err(error) => {
            let message = header_problem(error)?;
            report.error(None, message);
            return Ok(report);
        }
    };
    let geometry = header.geometry;
    report.geometry = Some(geometry);
    let table_end = header.layout.table_offset + geometry.nr_zones() * 2 * SLOT_SIZE;
    if let Err(error) = image::check_file_size(path, &header) {
        let message = header_problem(error)?;
        report.error(None, message);
        if header.file_size < table_end {
            return Ok(report);
        }
    }
    let states = check_table(&file, path, &header, &mut report)?;
    check_data(&file, &header, &states, &mut report);
    Ok(report)
}

/// The finding for a header or size failure, or the error when the file is no image at all.
fn header_problem(error: ImageError) -> Result<String, InspectError> {
    Ok(match error {
        ImageError::CorruptHeader { reason, .. } => format!("corrupt header: {reason}"),
        ImageError::Truncated { size, expected, .. } => {
            format!("the file is truncated: {size} bytes, expected {expected}")
        }
        ImageError::WrongSize { size, expected, .. } => {
            format!("the file is {size} bytes, expected {expected}")
        }
        other => return Err(other.into()),
    })
}

/// Checks every zone's slots and current state; returns the state of each zone vmm would
/// restore (None for zones it would refuse).
fn check_table(
    file: &File,
    path: &Path,
    header: &ImageHeader,
    report: &mut CheckReport,
) -> Result<Vec<Option<(ZoneCondition, u64)>>, InspectError> {
    let geometry = header.geometry;
    let n = geometry.nr_zones() as usize;
    let pair_bytes = 2 * SLOT_SIZE as usize;
    let io_error = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut states = Vec::new();
    states
        .try_reserve_exact(n)
        .map_err(|e| io_error(e.into()))?;
    let mut buffer = image::zeroed(TABLE_CHUNK_ZONES.min(n) * pair_bytes).map_err(io_error)?;
    let mut active = 0u32;
    for first in (0..n).step_by(TABLE_CHUNK_ZONES) {
        let count = TABLE_CHUNK_ZONES.min(n - first);
        let pairs = &mut buffer[..count * pair_bytes];
        let offset = header.layout.table_offset + (first * pair_bytes) as u64;
        file.read_exact_at(pairs, offset).map_err(io_error)?;
        for (k, pair) in pairs.chunks_exact(pair_bytes).enumerate() {
            let state = check_zone(&geometry, first + k, pair, report);
            active += u32::from(state.is_some_and(|(cond, _)| cond.is_active()));
            states.push(state);
        }
    }
    let max_active = geometry.max_active;
    if max_active != 0 && active > max_active {
        let problem = RestoreError::TooManyActive { active, max_active };
        report.error(None, format!("{problem}; vmm refuses to open the image"));
    }
    Ok(states)
}

/// Checks one zone's two slots and its current state; returns the state vmm restores it to.
fn check_zone(
    geometry: &ZonedGeometry,
    zone: usize,
    pair: &[u8],
    report: &mut CheckReport,
) -> Option<(ZoneCondition, u64)> {
    let slots = [
        image::decode_slot(zone, &pair[..16]),
        image::decode_slot(zone, &pair[16..]),
    ];
    let (current, slot) = match image::current_slot(slots[0].ok(), slots[1].ok()) {
        Ok(found) => found,
        Err(reason) => {
            let what = match slots {
                [Err(a), Err(b)] => format!("both slots are corrupt (A: {a}; B: {b})"),
                [Ok(a), Ok(b)] => format!(
                    "the slots' generations {} (A) and {} (B) are not consecutive",
                    a.generation, b.generation
                ),
                _ => reason.to_string(),
            };
            report.error(Some(zone), format!("{what}; vmm refuses to open the image"));
            return None;
        }
    };
    report.current_slots[usize::from(current)] += 1;
    for (index, decoded) in slots.iter().enumerate() {
        if let Err(defect) = decoded {
            report.error(
                Some(zone),
                format!(
                    "slot {} is corrupt ({defect}); the zone's state is slot {}'s (generation \
                     {}), with which vmm still opens the image",
                    slot_name(index as u8),
                    slot_name(current),
                    slot.generation
                ),
            );
        }
    }
    match ZoneSet::restored_condition(geometry, zone, slot.cond, slot.wp) {
        Ok(cond) => Some((cond, slot.wp)),
        Err(_) => {
            let why = impossible_state(geometry, zone, &slot);
            report.error(
                Some(zone),
                format!(
                    "slot {} (current) holds {} with write pointer {:#x}: {why}; vmm refuses \
                     to open the image",
                    slot_name(current),
                    condition_name(slot.cond),
                    slot.wp
                ),
            );
            None
        }
    }
}

/// Why `ZoneSet::restored_condition` refused a zone's state, in words.
fn impossible_state(geometry: &ZonedGeometry, zone: usize, slot: &StoredSlot) -> String {
    let start = geometry.zone_start(zone);
    let capacity_end = start + geometry.zone_capacity_of(zone);
    if geometry.is_conventional(zone) {
        return format!(
            "a conventional zone is NOT_WP, READONLY or OFFLINE with its write pointer at its \
             end, {:#x}",
            start + geometry.zone_len(zone)
        );
    }
    if slot.wp < start {
        format!("the write pointer is before the zone's start, {start:#x}")
    } else if slot.wp > capacity_end {
        format!("the write pointer is beyond the zone's capacity, which ends at {capacity_end:#x}")
    } else {
        "that condition cannot have that write pointer".to_string()
    }
}

/// Looks for data stored above the write pointers of the zones that accept writes. Only
/// whole file-system blocks above a write pointer count: the block holding it also holds data
/// below it, and with zones smaller than a block, the next zone's.
fn check_data(
    file: &File,
    header: &ImageHeader,
    states: &[Option<(ZoneCondition, u64)>],
    report: &mut CheckReport,
) {
    let geometry = header.geometry;
    let block = file
        .metadata()
        .map_or(4096, |m| m.blksize())
        .max(SECTOR_SIZE);
    let position = |sector: u64| header.layout.data_offset + sector * SECTOR_SIZE;
    for (zone, state) in states.iter().enumerate() {
        let Some((cond, wp)) = *state else {
            continue;
        };
        // READ_ONLY and OFFLINE zones keep what they hold; conventional ones have no pointer.
        if !matches!(
            cond,
            ZoneCondition::Empty | ZoneCondition::Closed | ZoneCondition::Full
        ) {
            continue;
        }
        let zone_end = geometry.zone_start(zone) + geometry.zone_len(zone);
        let from = position(wp).next_multiple_of(block);
        let to = (position(zone_end) / block * block).min(header.file_size);
        if from >= to {
            continue;
        }
        match data_bytes(file, from, to) {
            Ok(0) => {}
            Ok(bytes) => {
                report.unreclaimed_bytes += bytes;
                report.push(
                    Severity::Warning,
                    Some(zone),
                    format!(
                        "{} stored above its write pointer {wp:#x} (zone end {zone_end:#x}): \
                         unreclaimed, from a reset vmm had not reclaimed when it stopped, \
                         reclaim=off, or unflushed writes; reads as zeros, costs only space",
                        byte_size(bytes)
                    ),
                );
            }
            Err(error) => {
                report.push(
                    Severity::Warning,
                    None,
                    format!("cannot look for data above write pointers: {error}"),
                );
                return;
            }
        }
    }
}

/// Bytes of `file` between `from` and `to` that the file system has data for (SEEK_DATA to
/// SEEK_HOLE). On a file system without holes, everything is data.
fn data_bytes(file: &File, from: u64, to: u64) -> io::Result<u64> {
    let mut bytes = 0;
    let mut position = from;
    while position < to {
        let Some(data) = seek(file, position, libc::SEEK_DATA)? else {
            break;
        };
        if data >= to {
            break;
        }
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(to).min(to);
        bytes += hole - data;
        position = hole;
    }
    Ok(bytes)
}

/// lseek with SEEK_DATA or SEEK_HOLE; None when there is no more data (ENXIO).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
    // SAFETY: lseek only takes integers; the descriptor is owned by `file`, open for the
    // call. It moves the file offset, which nothing here uses (reads are positioned).
    let found = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if found >= 0 {
        return Ok(Some(found as u64));
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(error)
    }
}

/// A byte count for people: "12 KiB", or bytes when it is not whole KiB.
fn byte_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests;
