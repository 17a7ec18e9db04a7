//! The host zoned block device backend: a [`ZoneStorage`] that forwards reads, writes and zone
//! operations to a host-managed zoned block device (e.g. /dev/nullb1, an SMR disk, a ZNS
//! namespace). Zone rules stay in [`ZoneSet`]: this module reads the device's geometry (sysfs and
//! BLKREPORTZONE), loads its live zone states, and moves bytes and zone ops.
//!
//! Linux has no zone append for ordinary user-space block I/O, so an append is a write at the
//! write pointer the state machine keeps; after a failed write the zone is re-read with
//! BLKREPORTZONE so the cached write pointer is right again. When the state machine implicitly
//! closes a zone to make room, the close is sent to the device first so that the device does not
//! pick a different victim of its own.
//!
//! I/O is O_DIRECT (page-cache writeback would reorder writes) through buffers aligned for it;
//! reads are widened to the logical block size, writes must be aligned to it (the geometry's write
//! granularity is at least the logical block size, so sequential zones always are).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::disk::{ZoneStorage, ZonedDisk};
use super::geometry::{
    GeometryError, ZonedDiskOptions, ZonedGeometry, DEFAULT_MAX_APPEND_BYTES, MAX_APPEND_SECTORS,
    MAX_ZONES, SECTOR_SIZE,
};
use super::state::{RestoreError, ZoneCondition, ZoneOp, ZoneOpKind, ZoneOpPlan, ZoneSet};
use crate::file_io::{AlignedBuffer, DataPath};

/// Linux ioctls of include/uapi/linux/blkzoned.h.
pub mod ioctl {
    /// _IOWR(0x12, 130, struct blk_zone_report)
    pub const BLKREPORTZONE: u64 = 0xC010_1282;
    /// _IOW(0x12, 131, struct blk_zone_range)
    pub const BLKRESETZONE: u64 = 0x4010_1283;
    /// _IOW(0x12, 134, struct blk_zone_range)
    pub const BLKOPENZONE: u64 = 0x4010_1286;
    /// _IOW(0x12, 135, struct blk_zone_range)
    pub const BLKCLOSEZONE: u64 = 0x4010_1287;
    /// _IOW(0x12, 136, struct blk_zone_range)
    pub const BLKFINISHZONE: u64 = 0x4010_1288;
}

/// Bytes of struct blk_zone_report (the header before the zones).
const REPORT_HEADER_BYTES: usize = 16;
/// Bytes of one struct blk_zone.
const REPORT_ZONE_BYTES: usize = 64;
/// `flags` bit of the report header: each zone's `capacity` field is valid.
const BLK_ZONE_REP_CAPACITY: u32 = 1;
/// Zones asked for per BLKREPORTZONE call (64 KiB of buffer).
const REPORT_BATCH: usize = 1024;
/// struct blk_zone `type` values.
const ZONE_TYPE_CONVENTIONAL: u8 = 1;
const ZONE_TYPE_SEQWRITE_REQ: u8 = 2;
/// Why a host zoned device cannot be used. Each message is one line naming the device.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The device cannot be opened because of permissions.
    #[error("{0}: permission denied (the VMM needs read-write access to the device)")]
    PermissionDenied(PathBuf),
    /// The device is mounted or opened exclusively by someone else.
    #[error("{0}: device busy (mounted or in use by another program)")]
    Busy(PathBuf),
    /// Any other failure to open or inspect the device.
    #[error("{0}: cannot open: {1}")]
    Open(PathBuf, io::Error),
    /// A sysfs attribute is missing or malformed.
    #[error("{0}: cannot read {1}: {2}")]
    Sysfs(PathBuf, &'static str, String),
    /// The device is not zoned.
    #[error("{0} is not a zoned block device: attach it with --disk")]
    NotZoned(PathBuf),
    /// Host-aware devices are not supported.
    #[error("{0} is a host-aware zoned device, which is not supported (only host-managed)")]
    HostAware(PathBuf),
    /// Unknown queue/zoned value.
    #[error("{0}: unknown zoned model '{1}'")]
    UnknownModel(PathBuf, String),
    /// Geometry options were given for a device that has its own.
    #[error("{0}: geometry options do not apply to a host device")]
    GeometryOptions(PathBuf),
    /// `reclaim` was given for a device, whose resets are the device's own business.
    #[error("{0}: reclaim applies to image files, not to a host device")]
    ReclaimOption(PathBuf),
    /// `cache=volatile` was given for a device, whose cache vmm cannot drop.
    #[error("{0}: cache=volatile (for --power-cut) applies to image files, not to a host device")]
    VolatileCache(PathBuf),
    /// BLKREPORTZONE failed.
    #[error("{0}: cannot report zones: {1}")]
    Report(PathBuf, io::Error),
    /// The zone layout cannot be described by a [`ZonedGeometry`].
    #[error("{0}: unsupported zone layout: {1}")]
    Layout(PathBuf, String),
    /// The device's geometry is refused.
    #[error("{0}: unsupported geometry: {1}")]
    Geometry(PathBuf, GeometryError),
    /// A reported zone state contradicts the geometry.
    #[error("{0}: inconsistent zone report: {1}")]
    Zones(PathBuf, RestoreError),
}

/// The zoned model of a block device (sysfs queue/zoned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZonedModel {
    None,
    HostAware,
    HostManaged,
}

/// What sysfs says about a zoned block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    pub model: ZonedModel,
    /// Device size in 512-byte sectors.
    pub capacity: u64,
    /// Zone size in sectors (queue/chunk_sectors).
    pub zone_size: u64,
    pub nr_zones: u64,
    pub max_open: u32,
    pub max_active: u32,
    pub zone_append_max_bytes: u64,
    pub zone_write_granularity: u32,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
}

fn read_attribute(dir: &Path, name: &'static str) -> Result<String, HostError> {
    std::fs::read_to_string(dir.join(name))
        .map(|s| s.trim().to_string())
        .map_err(|e| HostError::Sysfs(dir.to_path_buf(), name, e.to_string()))
}

fn read_number<T: std::str::FromStr>(dir: &Path, name: &'static str) -> Result<T, HostError> {
    let text = read_attribute(dir, name)?;
    text.parse()
        .map_err(|_| HostError::Sysfs(dir.to_path_buf(), name, format!("'{text}' is not a number")))
}

fn parse_model(dir: &Path, text: &str) -> Result<ZonedModel, HostError> {
    match text {
        "none" => Ok(ZonedModel::None),
        "host-aware" => Ok(ZonedModel::HostAware),
        "host-managed" => Ok(ZonedModel::HostManaged),
        other => Err(HostError::UnknownModel(
            dir.to_path_buf(),
            other.to_string(),
        )),
    }
}

/// The zoned model from a device's sysfs directory (/sys/dev/block/MAJ:MIN).
pub fn read_model(device_dir: &Path) -> Result<ZonedModel, HostError> {
    let text = read_attribute(&device_dir.join("queue"), "zoned")?;
    parse_model(device_dir, &text)
}

impl QueueLimits {
    /// Reads the limits from a device's sysfs directory (/sys/dev/block/MAJ:MIN): `size` and
    /// the queue/ attributes.
    pub fn read(device_dir: &Path) -> Result<Self, HostError> {
        let queue = device_dir.join("queue");
        let model = read_model(device_dir)?;
        Ok(QueueLimits {
            model,
            capacity: read_number(device_dir, "size")?,
            zone_size: read_number(&queue, "chunk_sectors")?,
            nr_zones: read_number(&queue, "nr_zones")?,
            max_open: read_number(&queue, "max_open_zones")?,
            max_active: read_number(&queue, "max_active_zones")?,
            zone_append_max_bytes: read_number(&queue, "zone_append_max_bytes")?,
            zone_write_granularity: read_number(&queue, "zone_write_granularity")?,
            logical_block_size: read_number(&queue, "logical_block_size")?,
            physical_block_size: read_number(&queue, "physical_block_size")?,
        })
    }
}

/// The sysfs directory of the block device `file` is open on.
fn sysfs_dir_of(metadata: &std::fs::Metadata) -> PathBuf {
    let dev = metadata.rdev();
    // glibc's gnu_dev_major/gnu_dev_minor encoding of dev_t.
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    PathBuf::from(format!("/sys/dev/block/{major}:{minor}"))
}

/// Whether `path` is a block device (following symlinks). Errors count as "no": opening the
/// path as an image then reports them.
pub fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// One struct blk_zone from a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportedZone {
    pub start: u64,
    pub len: u64,
    pub wp: u64,
    pub zone_type: u8,
    pub cond: u8,
    /// The zone's capacity, or its length when the report has no capacity (old kernels).
    pub capacity: u64,
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Decodes a BLKREPORTZONE buffer (header, then the zones it says were returned). The capacity
/// field is used only when the header's flags say it is valid. A count larger than the buffer
/// is cut to what the buffer holds.
pub fn decode_report(buf: &[u8]) -> Vec<ReportedZone> {
    if buf.len() < REPORT_HEADER_BYTES {
        return Vec::new();
    }
    let nr_zones = le_u32(buf, 8) as usize;
    let flags = le_u32(buf, 12);
    buf[REPORT_HEADER_BYTES..]
        .chunks_exact(REPORT_ZONE_BYTES)
        .take(nr_zones)
        .map(|z| {
            let len = le_u64(z, 8);
            ReportedZone {
                start: le_u64(z, 0),
                len,
                wp: le_u64(z, 16),
                zone_type: z[24],
                cond: z[25],
                capacity: if flags & BLK_ZONE_REP_CAPACITY != 0 {
                    le_u64(z, 32)
                } else {
                    len
                },
            }
        })
        .collect()
}

/// Up to `max_zones` zones from the one containing `sector`.
fn report_zones(file: &File, sector: u64, max_zones: usize) -> io::Result<Vec<ReportedZone>> {
    let max_zones = max_zones.clamp(1, REPORT_BATCH);
    // u64 words keep the buffer 8-byte aligned for the kernel's struct (native endian; the
    // decoder reads little endian, which is what x86_64 is).
    let mut words = vec![0u64; (REPORT_HEADER_BYTES + max_zones * REPORT_ZONE_BYTES) / 8];
    words[0] = sector;
    // nr_zones (in: how many fit) is the u32 at byte 8, followed by flags (out only).
    let mut second = [0u8; 8];
    second[..4].copy_from_slice(&(max_zones as u32).to_ne_bytes());
    words[1] = u64::from_ne_bytes(second);
    // SAFETY: BLKREPORTZONE reads the 16-byte header and writes at most `nr_zones` 64-byte
    // zones after it; the buffer holds exactly that many, stays alive across the call, and the
    // fd is a valid open file.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            ioctl::BLKREPORTZONE as _,
            words.as_mut_ptr(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(decode_report(&bytes))
}

/// Every zone of the device, in order.
fn report_all(file: &File, limits: &QueueLimits) -> io::Result<Vec<ReportedZone>> {
    let mut zones: Vec<ReportedZone> = Vec::new();
    let mut sector = 0;
    while sector < limits.capacity {
        let batch = report_zones(file, sector, REPORT_BATCH)?;
        let Some(last) = batch.last() else {
            break;
        };
        let next = last.start.saturating_add(last.len);
        if (zones.len() + batch.len()) as u64 > MAX_ZONES {
            return Err(io::Error::other(format!(
                "the device has more than {MAX_ZONES} zones"
            )));
        }
        zones.try_reserve(batch.len())?;
        zones.extend(batch);
        if next <= sector {
            break;
        }
        sector = next;
    }
    Ok(zones)
}

/// The geometry describing `zones` and `limits`, checked against what [`ZonedGeometry`] can
/// express: conventional zones first, one zone size, one capacity for sequential zones.
pub fn geometry_from(
    limits: &QueueLimits,
    zones: &[ReportedZone],
) -> Result<ZonedGeometry, String> {
    if zones.len() as u64 != limits.nr_zones {
        return Err(format!(
            "sysfs says {} zones, the report has {}",
            limits.nr_zones,
            zones.len()
        ));
    }
    let conventional = zones
        .iter()
        .take_while(|z| z.zone_type == ZONE_TYPE_CONVENTIONAL)
        .count();
    if let Some(z) = zones[conventional..]
        .iter()
        .find(|z| z.zone_type != ZONE_TYPE_SEQWRITE_REQ)
    {
        return Err(format!(
            "zone at sector {} has type {} (only conventional zones followed by sequential-write-required zones are supported)",
            z.start, z.zone_type
        ));
    }
    let zone_capacity = zones
        .get(conventional)
        .map(|z| z.capacity)
        .ok_or_else(|| "the device has no sequential zone".to_string())?;
    let logical = u64::from(limits.logical_block_size.max(512));
    let granularity = u64::from(limits.zone_write_granularity).max(logical);
    let append = match limits.zone_append_max_bytes {
        0 => DEFAULT_MAX_APPEND_BYTES.min(limits.zone_size * SECTOR_SIZE),
        bytes => bytes,
    };
    let geometry = ZonedGeometry::new(ZonedGeometry {
        capacity: limits.capacity,
        zone_size: limits.zone_size,
        zone_capacity,
        conventional_zones: u32::try_from(conventional).map_err(|e| e.to_string())?,
        max_open: limits.max_open,
        max_active: limits.max_active,
        // What the host allows, but never more than one request can carry (virtio 5.2.5).
        max_append_sectors: u32::try_from(append / SECTOR_SIZE)
            .unwrap_or(u32::MAX)
            .min(MAX_APPEND_SECTORS),
        write_granularity: u32::try_from(granularity).map_err(|e| e.to_string())?,
        // What the guest must see, so that it never sends a write the device cannot take.
        logical_block_size: u32::try_from(logical).map_err(|e| e.to_string())?,
    })
    .map_err(|e| e.to_string())?;
    for (index, z) in zones.iter().enumerate() {
        let expected = (
            geometry.zone_start(index),
            geometry.zone_len(index),
            geometry.zone_capacity_of(index),
        );
        if (z.start, z.len, z.capacity) != expected {
            return Err(format!(
                "zone {index} is (start {}, len {}, capacity {}), expected {expected:?}",
                z.start, z.len, z.capacity
            ));
        }
    }
    Ok(geometry)
}

/// A reported zone as (condition, internal write pointer) for [`ZoneSet`]: conventional zones
/// end at their length; FULL, READ_ONLY and OFFLINE zones hold data up to their capacity (the
/// device's own wp for them is its zone end or undefined).
pub fn zone_state(zone: &ReportedZone) -> Option<(ZoneCondition, u64)> {
    let cond = ZoneCondition::from_u8(zone.cond)?;
    let wp = if zone.zone_type == ZONE_TYPE_CONVENTIONAL {
        zone.start + zone.len
    } else {
        match cond {
            ZoneCondition::Full | ZoneCondition::ReadOnly | ZoneCondition::Offline => {
                zone.start + zone.capacity
            }
            _ => zone.wp,
        }
    };
    Some((cond, wp))
}

/// A host-managed zoned block device opened for a guest.
pub struct HostZonedDevice {
    data: DataPath,
    path: PathBuf,
    geometry: ZonedGeometry,
    /// queue/physical_block_size, for the guest's topology fields.
    physical_block_size: u32,
    /// Bounce buffer of the serial I/O path (`ZoneStorage::read/write`).
    buffer: AlignedBuffer,
}

impl std::fmt::Debug for HostZonedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostZonedDevice")
            .field("path", &self.path)
            .field("geometry", &self.geometry)
            .finish()
    }
}

/// A zoned disk backed by a host zoned block device.
pub type HostZonedDisk = ZonedDisk<HostZonedDevice>;

fn open_error(path: &Path, e: io::Error) -> HostError {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => HostError::PermissionDenied(path.to_path_buf()),
        Some(libc::EBUSY) => HostError::Busy(path.to_path_buf()),
        _ => HostError::Open(path.to_path_buf(), e),
    }
}

impl HostZonedDevice {
    /// Opens the host-managed zoned block device of `options` (which must not carry geometry
    /// options) exclusively, and loads its geometry and live zone states.
    pub fn open(options: &ZonedDiskOptions) -> Result<HostZonedDisk, HostError> {
        let path = options.path.as_path();
        if options.overrides.given().next().is_some() {
            return Err(HostError::GeometryOptions(path.to_path_buf()));
        }
        if options.reclaim.is_some() {
            return Err(HostError::ReclaimOption(path.to_path_buf()));
        }
        if options.volatile_cache {
            return Err(HostError::VolatileCache(path.to_path_buf()));
        }
        let metadata = std::fs::metadata(path).map_err(|e| open_error(path, e))?;
        let sysfs = sysfs_dir_of(&metadata);
        match read_model(&sysfs)? {
            ZonedModel::HostManaged => {}
            ZonedModel::HostAware => return Err(HostError::HostAware(path.to_path_buf())),
            ZonedModel::None => return Err(HostError::NotZoned(path.to_path_buf())),
        }
        let limits = QueueLimits::read(&sysfs)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            // O_EXCL on a block device: fail with EBUSY if it is mounted or held exclusively.
            .custom_flags(libc::O_DIRECT | libc::O_EXCL)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        let zones = report_all(&file, &limits).map_err(|e| HostError::Report(path.into(), e))?;
        let geometry =
            geometry_from(&limits, &zones).map_err(|e| HostError::Layout(path.into(), e))?;
        let mut states = Vec::with_capacity(zones.len());
        for z in &zones {
            let state = zone_state(z).ok_or_else(|| {
                HostError::Layout(
                    path.into(),
                    format!("zone at sector {} has condition {}", z.start, z.cond),
                )
            })?;
            states.push(state);
        }
        let zone_set = ZoneSet::from_reported(geometry, states.into_iter())
            .map_err(|e| HostError::Zones(path.into(), e))?;
        log::info!(
            "{}: host-managed zoned device, {} zones of {} sectors ({} conventional, capacity {}), max open {}, max active {}",
            path.display(),
            zones.len(),
            geometry.zone_size,
            geometry.conventional_zones,
            geometry.zone_capacity,
            geometry.max_open,
            geometry.max_active
        );
        let device = HostZonedDevice {
            data: DataPath::direct(
                Arc::new(file),
                u64::from(limits.logical_block_size.max(512)),
            ),
            path: path.to_path_buf(),
            geometry,
            physical_block_size: limits.physical_block_size,
            buffer: AlignedBuffer::new(1 << 20).map_err(|e| HostError::Open(path.into(), e))?,
        };
        Ok(ZonedDisk::new(zone_set, device))
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One BLK*ZONE ioctl on the zone starting at `zone_start`.
    fn zone_ioctl(&self, request: u64, zone_start: u64) -> io::Result<()> {
        let nr_sectors = self
            .geometry
            .zone_size
            .min(self.geometry.capacity.saturating_sub(zone_start));
        self.range_ioctl(request, zone_start, nr_sectors)
    }

    fn range_ioctl(&self, request: u64, sector: u64, nr_sectors: u64) -> io::Result<()> {
        // struct blk_zone_range { __u64 sector; __u64 nr_sectors; }
        let range: [u64; 2] = [sector, nr_sectors];
        // SAFETY: the zone range ioctls read one 16-byte struct blk_zone_range, which `range`
        // is (two native-endian u64), alive across the call; the fd is a valid open file.
        let ret =
            unsafe { libc::ioctl(self.data.file().as_raw_fd(), request as _, range.as_ptr()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl ZoneStorage for HostZonedDevice {
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> io::Result<()> {
        self.data.read_with(sector, buf, &mut self.buffer)
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> io::Result<()> {
        self.data.write_with(sector, data, &mut self.buffer)
    }

    fn data_path(&self) -> Option<DataPath> {
        Some(self.data.clone())
    }

    fn physical_block_size(&self) -> u32 {
        self.physical_block_size
    }

    fn apply_zone_op(&mut self, plan: &ZoneOpPlan) -> io::Result<()> {
        match plan.kind {
            // A reset over the whole capacity is a reset-all for the block layer.
            ZoneOpKind::ResetAll => {
                self.range_ioctl(ioctl::BLKRESETZONE, 0, self.geometry.capacity)
            }
            ZoneOpKind::Single(op) => {
                let Some((target, victims)) = plan.updates.split_last() else {
                    return Ok(());
                };
                // The state machine's implicit close comes first: the device must close the
                // same zone rather than one of its own choosing.
                for victim in victims {
                    self.zone_ioctl(ioctl::BLKCLOSEZONE, victim.start)?;
                }
                let request = match op {
                    ZoneOp::Open => ioctl::BLKOPENZONE,
                    ZoneOp::Close => ioctl::BLKCLOSEZONE,
                    ZoneOp::Finish => ioctl::BLKFINISHZONE,
                    ZoneOp::Reset => ioctl::BLKRESETZONE,
                };
                self.zone_ioctl(request, target.start)
            }
        }
    }

    fn implicit_close(&mut self, zone_start: u64) -> io::Result<()> {
        self.zone_ioctl(ioctl::BLKCLOSEZONE, zone_start)
    }

    fn flush(&mut self, _zones: &ZoneSet) -> io::Result<()> {
        // The device keeps its own zone state; only the data needs a cache flush.
        self.data.file().sync_data()
    }

    fn zone_state_after_error(
        &mut self,
        zone_start: u64,
    ) -> io::Result<Option<(ZoneCondition, u64)>> {
        let zones = report_zones(self.data.file(), zone_start, 1)?;
        Ok(zones
            .first()
            .filter(|z| z.start == zone_start)
            .and_then(zone_state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone_bytes(start: u64, len: u64, wp: u64, zone_type: u8, cond: u8, cap: u64) -> Vec<u8> {
        let mut z = vec![0u8; REPORT_ZONE_BYTES];
        z[0..8].copy_from_slice(&start.to_le_bytes());
        z[8..16].copy_from_slice(&len.to_le_bytes());
        z[16..24].copy_from_slice(&wp.to_le_bytes());
        z[24] = zone_type;
        z[25] = cond;
        z[32..40].copy_from_slice(&cap.to_le_bytes());
        z
    }

    fn report_bytes(flags: u32, zones: &[Vec<u8>], claimed: u32) -> Vec<u8> {
        let mut buf = vec![0u8; REPORT_HEADER_BYTES];
        buf[8..12].copy_from_slice(&claimed.to_le_bytes());
        buf[12..16].copy_from_slice(&flags.to_le_bytes());
        for z in zones {
            buf.extend_from_slice(z);
        }
        buf
    }

    #[test]
    fn report_decoding_with_and_without_capacity() {
        let zones = [
            zone_bytes(0, 0x2000, u64::MAX, 1, 0, 0x2000),
            zone_bytes(0x2000, 0x2000, 0x2100, 2, 2, 0x1800),
        ];
        let with = decode_report(&report_bytes(BLK_ZONE_REP_CAPACITY, &zones, 2));
        assert_eq!(
            with[1],
            ReportedZone {
                start: 0x2000,
                len: 0x2000,
                wp: 0x2100,
                zone_type: 2,
                cond: 2,
                capacity: 0x1800
            }
        );
        let without = decode_report(&report_bytes(0, &zones, 2));
        assert_eq!(
            without[1].capacity, 0x2000,
            "no flag: capacity is the length"
        );
        // The header's count bounds the zones taken, and a lying count is cut to the buffer.
        assert_eq!(decode_report(&report_bytes(1, &zones, 1)).len(), 1);
        assert_eq!(decode_report(&report_bytes(1, &zones, 9)).len(), 2);
        assert!(decode_report(&[0u8; 8]).is_empty());
    }

    fn limits() -> QueueLimits {
        QueueLimits {
            model: ZonedModel::HostManaged,
            capacity: 4 * 0x2000,
            zone_size: 0x2000,
            nr_zones: 4,
            max_open: 2,
            max_active: 3,
            zone_append_max_bytes: 0,
            zone_write_granularity: 512,
            logical_block_size: 4096,
            physical_block_size: 4096,
        }
    }

    fn reported(cap: u64) -> Vec<ReportedZone> {
        let raw: Vec<Vec<u8>> = (0..4u64)
            .map(|i| {
                let start = i * 0x2000;
                if i == 0 {
                    zone_bytes(start, 0x2000, u64::MAX, 1, 0, 0x2000)
                } else if i == 3 {
                    zone_bytes(start, 0x2000, start + 0x2000, 2, 14, cap)
                } else {
                    zone_bytes(start, 0x2000, start + 8, 2, 2, cap)
                }
            })
            .collect();
        decode_report(&report_bytes(BLK_ZONE_REP_CAPACITY, &raw, 4))
    }

    #[test]
    fn geometry_and_states_from_a_report() {
        let zones = reported(0x1800);
        let g = geometry_from(&limits(), &zones).unwrap();
        assert_eq!(g.conventional_zones, 1);
        assert_eq!(g.zone_capacity, 0x1800);
        assert_eq!(g.write_granularity, 4096, "at least the logical block size");
        assert_eq!(g.logical_block_size, 4096, "the device's, for blk_size");
        assert_eq!(g.max_append_sectors, 2048, "1 MiB when sysfs says 0");
        assert_eq!((g.max_open, g.max_active), (2, 3));
        let states: Vec<_> = zones.iter().map(|z| zone_state(z).unwrap()).collect();
        assert_eq!(states[0], (ZoneCondition::NotWritePointer, 0x2000));
        assert_eq!(states[1], (ZoneCondition::ImplicitOpen, 0x2008));
        assert_eq!(states[3], (ZoneCondition::Full, 0x6000 + 0x1800));
        let set = ZoneSet::from_reported(g, states.into_iter()).unwrap();
        assert_eq!(set.open_zones(), 2);

        // A device allowing larger appends than one request can carry is clamped to
        // seg_max * size_max (virtio 1.3 5.2.5).
        let mut large = limits();
        large.zone_append_max_bytes = 256 << 20;
        let g = geometry_from(&large, &zones).unwrap();
        assert_eq!(
            g.max_append_sectors,
            crate::zoned::geometry::MAX_APPEND_SECTORS
        );

        let mut short = limits();
        short.nr_zones = 5;
        assert!(geometry_from(&short, &zones).is_err());
        let mut mixed = reported(0x1800);
        mixed[2].capacity = 0x1000;
        assert!(geometry_from(&limits(), &mixed)
            .unwrap_err()
            .contains("zone 2"));
        let mut preferred = reported(0x1800);
        preferred[2].zone_type = 3;
        assert!(geometry_from(&limits(), &preferred).is_err());
    }

    #[test]
    fn sysfs_attributes_from_a_directory() {
        let dir = std::env::temp_dir().join(format!("vmm-host-sysfs-{}", std::process::id()));
        let queue = dir.join("queue");
        std::fs::create_dir_all(&queue).unwrap();
        std::fs::write(dir.join("size"), "524288\n").unwrap();
        for (name, value) in [
            ("zoned", "host-managed"),
            ("chunk_sectors", "8192"),
            ("nr_zones", "64"),
            ("max_open_zones", "6"),
            ("max_active_zones", "8"),
            ("zone_append_max_bytes", "524288"),
            ("zone_write_granularity", "512"),
            ("logical_block_size", "512"),
            ("physical_block_size", "4096"),
        ] {
            std::fs::write(queue.join(name), format!("{value}\n")).unwrap();
        }
        let limits = QueueLimits::read(&dir).unwrap();
        assert_eq!(
            limits,
            QueueLimits {
                model: ZonedModel::HostManaged,
                capacity: 524288,
                zone_size: 8192,
                nr_zones: 64,
                max_open: 6,
                max_active: 8,
                zone_append_max_bytes: 524288,
                zone_write_granularity: 512,
                logical_block_size: 512,
                physical_block_size: 4096,
            }
        );
        std::fs::write(queue.join("zoned"), "host-aware\n").unwrap();
        assert_eq!(read_model(&dir).unwrap(), ZonedModel::HostAware);
        std::fs::write(queue.join("zoned"), "none\n").unwrap();
        assert_eq!(read_model(&dir).unwrap(), ZonedModel::None);
        std::fs::write(queue.join("zoned"), "bogus\n").unwrap();
        assert!(read_model(&dir).is_err());
        std::fs::write(queue.join("zoned"), "host-managed\n").unwrap();
        std::fs::write(queue.join("nr_zones"), "many\n").unwrap();
        let error = QueueLimits::read(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(error.contains("nr_zones"), "{error}");
    }

    #[test]
    fn options_with_geometry_are_refused() {
        let options = ZonedDiskOptions::parse("/dev/null,size=1G").unwrap();
        assert!(matches!(
            HostZonedDevice::open(&options),
            Err(HostError::GeometryOptions(_))
        ));
        let options = ZonedDiskOptions::parse("/dev/null,reclaim=off").unwrap();
        assert!(matches!(
            HostZonedDevice::open(&options),
            Err(HostError::ReclaimOption(_))
        ));
        let options = ZonedDiskOptions::parse("/dev/null,cache=volatile").unwrap();
        assert!(matches!(
            HostZonedDevice::open(&options),
            Err(HostError::VolatileCache(_))
        ));
        let options = ZonedDiskOptions::parse("/dev/null").unwrap();
        // /dev/null is a character device: its sysfs entry has no queue/zoned.
        assert!(HostZonedDevice::open(&options).is_err());
    }
}
