//! Zoned disk geometry: sizes and limits, their validation (everything the Linux virtio-blk
//! driver or block layer would reject, plus what cannot work at all), the documented defaults and
//! the parser for the `PATH[,key=value...]` command-line option string.
//!
//! Units: `capacity`, `zone_size`, `zone_capacity` and `max_append_sectors` are 512-byte sectors
//! (as on the wire); `write_granularity` and `logical_block_size` are in bytes (as on the wire).
//! The option string takes byte sizes with optional binary K/M/G/T suffixes (`crate::size`).

use std::fmt;
use std::path::PathBuf;

/// Bytes per sector on the virtio-blk wire, whatever the logical block size.
pub use crate::block::SECTOR_SIZE;

/// Default disk size (sparse on the host): 4 GiB.
pub const DEFAULT_SIZE_BYTES: u64 = 4 << 30;
/// Default zone size: 64 MiB (64 zones in the default 4 GiB disk).
pub const DEFAULT_ZONE_SIZE_BYTES: u64 = 64 << 20;
/// Default maximum ZONE_APPEND size: 1 MiB, or the zone size if that is smaller.
pub const DEFAULT_MAX_APPEND_BYTES: u64 = 1 << 20;
/// Default write granularity: one 512-byte sector, so every Linux write size works (or one
/// logical block, when that is larger).
pub const DEFAULT_WRITE_GRANULARITY: u32 = 512;
/// Default logical block size: 512 bytes, as virtio-blk assumes without VIRTIO_BLK_F_BLK_SIZE.
pub const DEFAULT_LOGICAL_BLOCK_SIZE: u32 = 512;
/// Logical block sizes an emulated disk may have (`logical-block-size=`): 512e and 4Kn, what
/// zoned hardware comes with.
pub const LOGICAL_BLOCK_SIZES: [u32; 2] = [512, 4096];
/// Most zones a disk may have. Every zone costs vmm memory (about 30 bytes of zone state, and
/// 32 bytes of image zone table read at open), so an unbounded count would let an option or a
/// crafted image make vmm allocate without limit; 1 Mi zones are 4 PiB in 4 GiB zones, or 64 TiB
/// in the default 64 MiB ones, and more than the largest host zoned devices have.
pub const MAX_ZONES: u64 = 1 << 20;
/// Largest ZONE_APPEND in sectors: virtio 1.3 5.2.5 says max_append_sectors must not exceed
/// seg_max * size_max / 512, the most data one request can carry (254 x 256 KiB here).
pub const MAX_APPEND_SECTORS: u32 =
    (crate::block::SEG_MAX as u64 * crate::block::SIZE_MAX as u64 / SECTOR_SIZE) as u32;

/// Sizes and limits of a zoned disk. Build one with [`ZonedGeometry::new`] (validating) or
/// [`GeometryOverrides::geometry`].
///
/// Zones are laid out back to back from sector 0: the first `conventional_zones` zones are
/// conventional, all others sequential-write-required. Every zone is `zone_size` long except the
/// last one, which is shorter when `capacity` is not a multiple of `zone_size`. Sequential zones
/// can be written up to `zone_capacity` (the last one up to `min(zone_capacity, its length)`);
/// conventional zones always have capacity == length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZonedGeometry {
    /// Disk size in sectors.
    pub capacity: u64,
    /// Zone size in sectors, a power of two.
    pub zone_size: u64,
    /// Writable sectors of a sequential zone, <= zone_size.
    pub zone_capacity: u64,
    /// Number of conventional zones at the start of the disk.
    pub conventional_zones: u32,
    /// Maximum number of open zones, 0 = unlimited.
    pub max_open: u32,
    /// Maximum number of active (open or closed) zones, 0 = unlimited.
    pub max_active: u32,
    /// Largest ZONE_APPEND in sectors.
    pub max_append_sectors: u32,
    /// Write alignment of sequential zones in bytes (a power of two, multiple of 512, at least
    /// the logical block size).
    pub write_granularity: u32,
    /// Logical block size in bytes (a power of two from 512 to 4096), advertised as blk_size:
    /// the guest sizes and aligns every request to it, and the device refuses requests that
    /// are not. Sector fields on the wire stay in 512-byte units.
    pub logical_block_size: u32,
}

/// Why a geometry is refused. The message names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    /// The disk size is zero.
    #[error("disk size must not be 0")]
    ZeroCapacity,
    /// The disk is too big for byte offsets.
    #[error("disk size of {0} sectors is too large")]
    CapacityTooLarge(u64),
    /// Zone size is 0 or not a power of two.
    #[error("zone size of {0} sectors is not a power of two")]
    ZoneSizeNotPowerOfTwo(u64),
    /// Zone size does not fit the 32-bit zone_sectors config field.
    #[error("zone size of {0} sectors does not fit the 32-bit zone_sectors field")]
    ZoneSizeTooLarge(u64),
    /// The disk is smaller than one zone.
    #[error("disk size of {capacity} sectors is smaller than one zone ({zone_size} sectors)")]
    CapacitySmallerThanZone { capacity: u64, zone_size: u64 },
    /// Zone capacity is 0.
    #[error("zone capacity must not be 0")]
    ZeroZoneCapacity,
    /// Zone capacity exceeds the zone size.
    #[error(
        "zone capacity of {zone_capacity} sectors exceeds the zone size of {zone_size} sectors"
    )]
    ZoneCapacityTooLarge { zone_capacity: u64, zone_size: u64 },
    /// More zones than [`MAX_ZONES`].
    #[error("{0} zones are too many (at most 1048576; use a larger zone size)")]
    TooManyZones(u64),
    /// Every zone would be conventional.
    #[error("{conventional} conventional zones leave no sequential zone among {zones} zones")]
    AllConventional { conventional: u32, zones: u64 },
    /// max_open exceeds a non-zero max_active.
    #[error("max-open={max_open} exceeds max-active={max_active}")]
    OpenExceedsActive { max_open: u32, max_active: u32 },
    /// Write granularity is 0, not a multiple of 512 or not a power of two.
    #[error("write granularity of {0} bytes is not a power-of-two multiple of 512")]
    BadWriteGranularity(u32),
    /// Zone capacity is not a multiple of the write granularity, so a zone could never be filled.
    #[error("zone capacity of {zone_capacity} sectors is not a multiple of the write granularity of {granularity} bytes")]
    ZoneCapacityNotGranular {
        zone_capacity: u64,
        granularity: u32,
    },
    /// Disk size is not a multiple of the write granularity.
    #[error("disk size of {capacity} sectors is not a multiple of the write granularity of {granularity} bytes")]
    CapacityNotGranular { capacity: u64, granularity: u32 },
    /// max_append_sectors is 0.
    #[error("max-append must not be 0")]
    ZeroMaxAppend,
    /// max_append_sectors * 512 is smaller than the write granularity.
    #[error("max-append of {max_append_sectors} sectors is smaller than the write granularity of {granularity} bytes")]
    MaxAppendBelowGranularity {
        max_append_sectors: u32,
        granularity: u32,
    },
    /// The logical block size is not a power of two from 512 to 4096.
    #[error("logical block size of {0} bytes is not a power of two from 512 to 4096")]
    BadLogicalBlockSize(u32),
    /// The write granularity is smaller than a logical block.
    #[error("write granularity of {granularity} bytes is smaller than the logical block size of {logical_block_size} bytes")]
    GranularityBelowLogicalBlock {
        granularity: u32,
        logical_block_size: u32,
    },
    /// max_append_sectors is not a whole number of logical blocks.
    #[error("max-append of {max_append_sectors} sectors is not a multiple of the logical block size of {logical_block_size} bytes")]
    MaxAppendNotBlockMultiple {
        max_append_sectors: u32,
        logical_block_size: u32,
    },
    /// max_append_sectors exceeds seg_max * size_max / 512.
    #[error("max-append of {max_append_sectors} sectors exceeds what one request can carry ({limit} sectors: seg_max x size_max)")]
    MaxAppendTooLarge { max_append_sectors: u32, limit: u32 },
}

impl ZonedGeometry {
    /// Validates `self` and returns it, or the first problem found.
    ///
    /// Conventional zones always have capacity == length here (zone_capacity applies to
    /// sequential zones only), and the last zone is always sequential because at least one
    /// sequential zone is required, so Linux's "conventional capacity != length" case cannot arise.
    ///
    /// The write granularity is at least the logical block size, so capacity and zone capacity
    /// (multiples of the granularity) and the zone size (a power of two at least the zone
    /// capacity) are whole logical blocks too; so must max-append be.
    pub fn new(geometry: ZonedGeometry) -> Result<Self, GeometryError> {
        let g = geometry;
        if g.capacity == 0 {
            return Err(GeometryError::ZeroCapacity);
        }
        if g.capacity > u64::MAX / SECTOR_SIZE / 2 {
            return Err(GeometryError::CapacityTooLarge(g.capacity));
        }
        if !g.zone_size.is_power_of_two() {
            return Err(GeometryError::ZoneSizeNotPowerOfTwo(g.zone_size));
        }
        if g.zone_size > u64::from(u32::MAX) {
            return Err(GeometryError::ZoneSizeTooLarge(g.zone_size));
        }
        if g.capacity < g.zone_size {
            return Err(GeometryError::CapacitySmallerThanZone {
                capacity: g.capacity,
                zone_size: g.zone_size,
            });
        }
        if g.zone_capacity == 0 {
            return Err(GeometryError::ZeroZoneCapacity);
        }
        if g.zone_capacity > g.zone_size {
            return Err(GeometryError::ZoneCapacityTooLarge {
                zone_capacity: g.zone_capacity,
                zone_size: g.zone_size,
            });
        }
        let zones = g.capacity.div_ceil(g.zone_size);
        if zones > MAX_ZONES {
            return Err(GeometryError::TooManyZones(zones));
        }
        if u64::from(g.conventional_zones) >= zones {
            return Err(GeometryError::AllConventional {
                conventional: g.conventional_zones,
                zones,
            });
        }
        if g.max_active != 0 && g.max_open > g.max_active {
            return Err(GeometryError::OpenExceedsActive {
                max_open: g.max_open,
                max_active: g.max_active,
            });
        }
        let gran = g.write_granularity;
        if gran == 0 || gran & 511 != 0 || !gran.is_power_of_two() {
            return Err(GeometryError::BadWriteGranularity(gran));
        }
        let block = g.logical_block_size;
        if !block.is_power_of_two() || !(512..=4096).contains(&block) {
            return Err(GeometryError::BadLogicalBlockSize(block));
        }
        if gran < block {
            return Err(GeometryError::GranularityBelowLogicalBlock {
                granularity: gran,
                logical_block_size: block,
            });
        }
        let gran_sectors = u64::from(gran) / SECTOR_SIZE;
        if g.zone_capacity & (gran_sectors - 1) != 0 {
            return Err(GeometryError::ZoneCapacityNotGranular {
                zone_capacity: g.zone_capacity,
                granularity: gran,
            });
        }
        if g.capacity & (gran_sectors - 1) != 0 {
            return Err(GeometryError::CapacityNotGranular {
                capacity: g.capacity,
                granularity: gran,
            });
        }
        if g.max_append_sectors == 0 {
            return Err(GeometryError::ZeroMaxAppend);
        }
        if g.max_append_sectors > MAX_APPEND_SECTORS {
            return Err(GeometryError::MaxAppendTooLarge {
                max_append_sectors: g.max_append_sectors,
                limit: MAX_APPEND_SECTORS,
            });
        }
        if u64::from(g.max_append_sectors) * SECTOR_SIZE < u64::from(gran) {
            return Err(GeometryError::MaxAppendBelowGranularity {
                max_append_sectors: g.max_append_sectors,
                granularity: gran,
            });
        }
        if !u64::from(g.max_append_sectors).is_multiple_of(g.block_sectors()) {
            return Err(GeometryError::MaxAppendNotBlockMultiple {
                max_append_sectors: g.max_append_sectors,
                logical_block_size: block,
            });
        }
        Ok(g)
    }

    /// Number of zones (the last one may be shorter).
    pub fn nr_zones(&self) -> u64 {
        self.capacity.div_ceil(self.zone_size)
    }

    /// Index of the zone holding `sector`, or None when it is past the end of the disk.
    pub fn zone_index(&self, sector: u64) -> Option<usize> {
        if sector >= self.capacity {
            return None;
        }
        usize::try_from(sector >> self.zone_size.trailing_zeros()).ok()
    }

    /// First sector of zone `index`.
    pub fn zone_start(&self, index: usize) -> u64 {
        index as u64 * self.zone_size
    }

    /// Length of zone `index` in sectors (the last zone may be shorter).
    pub fn zone_len(&self, index: usize) -> u64 {
        let start = self.zone_start(index);
        self.zone_size.min(self.capacity.saturating_sub(start))
    }

    /// Whether zone `index` is conventional.
    pub fn is_conventional(&self, index: usize) -> bool {
        (index as u64) < u64::from(self.conventional_zones)
    }

    /// Writable capacity of zone `index` in sectors.
    pub fn zone_capacity_of(&self, index: usize) -> u64 {
        let len = self.zone_len(index);
        if self.is_conventional(index) {
            len
        } else {
            self.zone_capacity.min(len)
        }
    }

    /// Disk size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.capacity * SECTOR_SIZE
    }

    /// Write granularity in sectors.
    pub fn granularity_sectors(&self) -> u64 {
        u64::from(self.write_granularity) / SECTOR_SIZE
    }

    /// Logical block size in sectors (1 or 8).
    pub fn block_sectors(&self) -> u64 {
        (u64::from(self.logical_block_size) / SECTOR_SIZE).max(1)
    }

    /// Whether `nr_sectors` at `sector` are whole logical blocks.
    pub fn is_block_aligned(&self, sector: u64, nr_sectors: u64) -> bool {
        let mask = self.block_sectors() - 1;
        sector & mask == 0 && nr_sectors & mask == 0
    }
}

/// One geometry option of the command line, by its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeometryOption {
    Size,
    ZoneSize,
    ZoneCapacity,
    ConventionalZones,
    MaxOpen,
    MaxActive,
    MaxAppend,
    WriteGranularity,
    LogicalBlockSize,
}

impl GeometryOption {
    /// Every option, in command-line order.
    pub const ALL: [GeometryOption; 9] = [
        GeometryOption::Size,
        GeometryOption::ZoneSize,
        GeometryOption::ZoneCapacity,
        GeometryOption::ConventionalZones,
        GeometryOption::MaxOpen,
        GeometryOption::MaxActive,
        GeometryOption::MaxAppend,
        GeometryOption::WriteGranularity,
        GeometryOption::LogicalBlockSize,
    ];

    /// The option's key in the option string.
    pub fn key(self) -> &'static str {
        match self {
            GeometryOption::Size => "size",
            GeometryOption::ZoneSize => "zone-size",
            GeometryOption::ZoneCapacity => "zone-capacity",
            GeometryOption::ConventionalZones => "conventional-zones",
            GeometryOption::MaxOpen => "max-open",
            GeometryOption::MaxActive => "max-active",
            GeometryOption::MaxAppend => "max-append",
            GeometryOption::WriteGranularity => "write-granularity",
            GeometryOption::LogicalBlockSize => "logical-block-size",
        }
    }

    /// Whether the value is a byte size (with K/M/G/T suffixes) rather than a count.
    pub fn is_size(self) -> bool {
        matches!(
            self,
            GeometryOption::Size
                | GeometryOption::ZoneSize
                | GeometryOption::ZoneCapacity
                | GeometryOption::MaxAppend
                | GeometryOption::WriteGranularity
                | GeometryOption::LogicalBlockSize
        )
    }

    /// The value of this option in `geometry`, in the option string's unit (bytes or a count).
    pub fn value_of(self, geometry: &ZonedGeometry) -> u64 {
        match self {
            GeometryOption::Size => geometry.capacity * SECTOR_SIZE,
            GeometryOption::ZoneSize => geometry.zone_size * SECTOR_SIZE,
            GeometryOption::ZoneCapacity => geometry.zone_capacity * SECTOR_SIZE,
            GeometryOption::ConventionalZones => u64::from(geometry.conventional_zones),
            GeometryOption::MaxOpen => u64::from(geometry.max_open),
            GeometryOption::MaxActive => u64::from(geometry.max_active),
            GeometryOption::MaxAppend => u64::from(geometry.max_append_sectors) * SECTOR_SIZE,
            GeometryOption::WriteGranularity => u64::from(geometry.write_granularity),
            GeometryOption::LogicalBlockSize => u64::from(geometry.logical_block_size),
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.key() == key)
    }
}

impl fmt::Display for GeometryOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// The geometry options given explicitly on the command line, in the option string's units
/// (bytes for sizes, plain counts otherwise). Unset options take the documented defaults when an
/// image is created, and the image's values when it is opened; set options must match an
/// existing image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GeometryOverrides {
    values: [Option<u64>; 9],
}

impl GeometryOverrides {
    /// The explicitly given value of `option`, if any.
    pub fn get(&self, option: GeometryOption) -> Option<u64> {
        self.values[option as usize]
    }

    /// Sets `option` as if given on the command line.
    pub fn set(&mut self, option: GeometryOption, value: u64) {
        self.values[option as usize] = Some(value);
    }

    /// Sets `option` from its text in an option string (`value` of `key=value`): a size with
    /// an optional binary suffix, or a count. Each option may be set once.
    pub fn set_text(&mut self, option: GeometryOption, value: &str) -> Result<(), OptionError> {
        let key = option.key();
        if self.get(option).is_some() {
            return Err(OptionError::Duplicate(key.to_string()));
        }
        let bad = || OptionError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
        };
        let number = if option.is_size() {
            let bytes = parse_size(value).ok_or_else(bad)?;
            if !bytes.is_multiple_of(SECTOR_SIZE) {
                return Err(OptionError::NotSectorMultiple {
                    key: key.to_string(),
                    value: value.to_string(),
                });
            }
            bytes
        } else {
            u64::from(value.parse::<u32>().map_err(|_| bad())?)
        };
        // Sizes that overflow the config space fields are caught here, not silently cut.
        let limit = match option {
            GeometryOption::MaxAppend => u64::from(u32::MAX) * SECTOR_SIZE,
            GeometryOption::WriteGranularity => u64::from(u32::MAX),
            _ => u64::MAX,
        };
        if number > limit {
            return Err(bad());
        }
        if option == GeometryOption::LogicalBlockSize
            && !LOGICAL_BLOCK_SIZES
                .iter()
                .any(|&size| u64::from(size) == number)
        {
            return Err(OptionError::BadLogicalBlockSize(value.to_string()));
        }
        self.set(option, number);
        Ok(())
    }

    /// The options that were given, with their values.
    pub fn given(&self) -> impl Iterator<Item = (GeometryOption, u64)> + '_ {
        GeometryOption::ALL
            .into_iter()
            .filter_map(|o| self.get(o).map(|v| (o, v)))
    }

    /// The geometry for a new image: given options plus defaults, validated.
    ///
    /// Defaults: size 4 GiB, zone-size 64 MiB, zone-capacity = zone-size, conventional-zones 0,
    /// max-open 0 and max-active 0 (unlimited), max-append min(1 MiB, zone-size),
    /// logical-block-size 512, write-granularity the logical block size (512 unless
    /// logical-block-size=4096). No conventional zone by default: Linux does not allow partitions
    /// on host-managed disks, and btrfs and zonefs work without one (f2fs needs
    /// `conventional-zones=N` for its metadata).
    pub fn geometry(&self) -> Result<ZonedGeometry, GeometryError> {
        let sectors = |option: GeometryOption, default: u64| -> u64 {
            self.get(option).unwrap_or(default) / SECTOR_SIZE
        };
        // Parsing already bounds counts to u32.
        let count = |option: GeometryOption| -> u32 {
            u32::try_from(self.get(option).unwrap_or(0)).unwrap_or(u32::MAX)
        };
        let zone_size = sectors(GeometryOption::ZoneSize, DEFAULT_ZONE_SIZE_BYTES);
        let max_append_default = DEFAULT_MAX_APPEND_BYTES.min(zone_size * SECTOR_SIZE);
        let max_append = sectors(GeometryOption::MaxAppend, max_append_default);
        // Parsing allows only LOGICAL_BLOCK_SIZES.
        let logical_block_size = self
            .get(GeometryOption::LogicalBlockSize)
            .map_or(DEFAULT_LOGICAL_BLOCK_SIZE, |v| {
                u32::try_from(v).unwrap_or(0)
            });
        ZonedGeometry::new(ZonedGeometry {
            capacity: sectors(GeometryOption::Size, DEFAULT_SIZE_BYTES),
            zone_size,
            zone_capacity: sectors(GeometryOption::ZoneCapacity, zone_size * SECTOR_SIZE),
            conventional_zones: count(GeometryOption::ConventionalZones),
            max_open: count(GeometryOption::MaxOpen),
            max_active: count(GeometryOption::MaxActive),
            max_append_sectors: u32::try_from(max_append).unwrap_or(u32::MAX),
            write_granularity: u32::try_from(
                self.get(GeometryOption::WriteGranularity)
                    .unwrap_or(u64::from(DEFAULT_WRITE_GRANULARITY.max(logical_block_size))),
            )
            .unwrap_or(0),
            logical_block_size,
        })
    }
}

/// A parsed `PATH[,key=value...]` option string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZonedDiskOptions {
    /// The image path (commas cannot appear in it).
    pub path: PathBuf,
    /// The geometry options given explicitly.
    pub overrides: GeometryOverrides,
    /// Faults to inject for this run (never stored in the image).
    pub faults: FaultInjection,
    /// `reclaim=on|off`, if given: whether reset zones' blocks go back to the host file system
    /// while the guest is idle and at exit (an image only; this run only; on when not given).
    pub reclaim: Option<bool>,
    /// `cache=volatile`: writes since the last flush stay losable by a power cut
    /// (`--power-cut`); `cache=writeback` (the default) keeps them, as the host's page cache
    /// does when vmm is killed.
    pub volatile_cache: bool,
    /// `trace=FILE`, if given: the zone trace of this run, one JSON line per request
    /// (docs/zone-trace.md); created or truncated when the disk is set up.
    pub trace: Option<PathBuf>,
}

/// Faults a zoned disk shows the guest for one run, for testing error paths: zones that are
/// READ_ONLY or OFFLINE, and one write (or append) to a zone that fails with a chosen status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultInjection {
    /// Zone indices shown READ_ONLY (`read-only-zones=I[:I]...`).
    pub read_only_zones: Vec<u64>,
    /// Zone indices shown OFFLINE (`offline-zones=I[:I]...`).
    pub offline_zones: Vec<u64>,
    /// `fail-write=ZONE:N[:STATUS]`: the Nth write or append to zone ZONE completes with STATUS
    /// (a virtio-blk status, 1 to 6; default 1, IOERR) and writes nothing.
    pub fail_write: Option<FailWrite>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailWrite {
    pub zone: u64,
    pub nth: u64,
    pub status: u8,
}

impl FaultInjection {
    /// Parses one fault option; `Ok(false)` when `key` is not a fault option.
    fn parse(&mut self, key: &str, value: &str) -> Result<bool, OptionError> {
        let bad = || OptionError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
        };
        let indices = || -> Result<Vec<u64>, OptionError> {
            value
                .split(':')
                .map(|i| i.parse::<u64>().map_err(|_| bad()))
                .collect()
        };
        match key {
            "read-only-zones" => self.read_only_zones = indices()?,
            "offline-zones" => self.offline_zones = indices()?,
            "fail-write" => {
                let fields: Vec<&str> = value.split(':').collect();
                let number = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|f| f.parse::<u64>().ok())
                        .ok_or_else(bad)
                };
                let status = match fields.get(2) {
                    None => 1,
                    Some(s) => s
                        .parse::<u8>()
                        .ok()
                        .filter(|s| (1..=6).contains(s))
                        .ok_or_else(bad)?,
                };
                let nth = number(1)?;
                if fields.len() > 3 || nth == 0 {
                    return Err(bad());
                }
                self.fail_write = Some(FailWrite {
                    zone: number(0)?,
                    nth,
                    status,
                });
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// A malformed option string. The message names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// No path before the first comma.
    #[error("zoned disk option string has no path")]
    MissingPath,
    /// A `key=value` part lacks the `=`.
    #[error("zoned disk option '{0}' is not of the form key=value")]
    NotKeyValue(String),
    /// An unknown key.
    #[error("unknown zoned disk option '{0}'")]
    UnknownKey(String),
    /// A key given twice.
    #[error("zoned disk option '{0}' given twice")]
    Duplicate(String),
    /// A value that is not a number (with an optional K/M/G/T suffix for sizes).
    #[error("invalid value '{value}' for zoned disk option '{key}'")]
    BadValue { key: String, value: String },
    /// A logical block size other than 512 or 4096.
    #[error("zoned disk option 'logical-block-size' must be 512 or 4096, not '{0}'")]
    BadLogicalBlockSize(String),
    /// A size that is not a multiple of 512 bytes.
    #[error("value '{value}' for zoned disk option '{key}' is not a multiple of 512 bytes")]
    NotSectorMultiple { key: String, value: String },
}

/// Parses a byte size by `crate::size`'s grammar (a bare number is bytes; binary K/M/G/T
/// suffixes, also KiB/MiB/GiB/TiB, case-insensitive).
pub fn parse_size(text: &str) -> Option<u64> {
    crate::size::parse_bytes(text)
}

impl ZonedDiskOptions {
    /// Parses `PATH[,size=..][,zone-size=..][,zone-capacity=..][,conventional-zones=N]
    /// [,max-open=N][,max-active=N][,max-append=..][,write-granularity=..]
    /// [,logical-block-size=512|4096][,reclaim=on|off][,cache=writeback|volatile][,trace=FILE]`
    /// and the fault injection options.
    pub fn parse(text: &str) -> Result<Self, OptionError> {
        let mut parts = text.split(',');
        let path = parts.next().unwrap_or("");
        if path.is_empty() {
            return Err(OptionError::MissingPath);
        }
        let mut overrides = GeometryOverrides::default();
        let mut faults = FaultInjection::default();
        let mut reclaim = None;
        let mut cache = None;
        let mut trace = None;
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| OptionError::NotKeyValue(part.to_string()))?;
            if faults.parse(key, value)? {
                continue;
            }
            if key == "reclaim" {
                if reclaim.is_some() {
                    return Err(OptionError::Duplicate(key.to_string()));
                }
                reclaim = Some(match value {
                    "on" => true,
                    "off" => false,
                    _ => {
                        return Err(OptionError::BadValue {
                            key: key.to_string(),
                            value: value.to_string(),
                        })
                    }
                });
                continue;
            }
            if key == "cache" {
                if cache.is_some() {
                    return Err(OptionError::Duplicate(key.to_string()));
                }
                cache = Some(match value {
                    "volatile" => true,
                    "writeback" => false,
                    _ => {
                        return Err(OptionError::BadValue {
                            key: key.to_string(),
                            value: value.to_string(),
                        })
                    }
                });
                continue;
            }
            if key == "trace" {
                if trace.is_some() {
                    return Err(OptionError::Duplicate(key.to_string()));
                }
                if value.is_empty() {
                    return Err(OptionError::BadValue {
                        key: key.to_string(),
                        value: value.to_string(),
                    });
                }
                trace = Some(PathBuf::from(value));
                continue;
            }
            let option =
                GeometryOption::from_key(key).ok_or_else(|| OptionError::UnknownKey(key.into()))?;
            overrides.set_text(option, value)?;
        }
        Ok(ZonedDiskOptions {
            path: PathBuf::from(path),
            overrides,
            faults,
            reclaim,
            volatile_cache: cache.unwrap_or(false),
            trace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_options() {
        let o = ZonedDiskOptions::parse(
            "x.img,size=1G,read-only-zones=3:5,offline-zones=7,fail-write=2:3:5",
        )
        .unwrap();
        assert_eq!(o.faults.read_only_zones, vec![3, 5]);
        assert_eq!(o.faults.offline_zones, vec![7]);
        assert_eq!(
            o.faults.fail_write,
            Some(FailWrite {
                zone: 2,
                nth: 3,
                status: 5
            })
        );
        assert_eq!(o.overrides.given().count(), 1);
        let d = ZonedDiskOptions::parse("x.img,fail-write=4:1").unwrap();
        assert_eq!(
            d.faults.fail_write,
            Some(FailWrite {
                zone: 4,
                nth: 1,
                status: 1
            })
        );
        for bad in [
            "read-only-zones=a",
            "offline-zones=",
            "fail-write=1",
            "fail-write=1:0",
            "fail-write=1:2:9",
            "fail-write=1:2:3:4",
        ] {
            assert!(
                ZonedDiskOptions::parse(&format!("x.img,{bad}")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn cache_option() {
        let volatile = |s: &str| ZonedDiskOptions::parse(s).map(|o| o.volatile_cache);
        assert_eq!(volatile("x.img"), Ok(false));
        assert_eq!(volatile("x.img,cache=volatile,size=1G"), Ok(true));
        assert_eq!(volatile("x.img,cache=writeback"), Ok(false));
        assert_eq!(
            volatile("x.img,cache=none"),
            Err(OptionError::BadValue {
                key: "cache".into(),
                value: "none".into()
            })
        );
        assert_eq!(
            volatile("x.img,cache=volatile,cache=volatile"),
            Err(OptionError::Duplicate("cache".into()))
        );
    }

    #[test]
    fn trace_option() {
        let trace = |s: &str| ZonedDiskOptions::parse(s).map(|o| o.trace);
        assert_eq!(trace("x.img"), Ok(None));
        assert_eq!(
            trace("x.img,trace=/tmp/t.jsonl,size=1G"),
            Ok(Some(PathBuf::from("/tmp/t.jsonl")))
        );
        assert_eq!(
            trace("x.img,trace="),
            Err(OptionError::BadValue {
                key: "trace".into(),
                value: "".into()
            })
        );
        assert_eq!(
            trace("x.img,trace=a,trace=b"),
            Err(OptionError::Duplicate("trace".into()))
        );
    }

    #[test]
    fn reclaim_option() {
        let reclaim = |s: &str| ZonedDiskOptions::parse(s).map(|o| o.reclaim);
        assert_eq!(reclaim("x.img"), Ok(None));
        assert_eq!(reclaim("x.img,reclaim=off,size=1G"), Ok(Some(false)));
        assert_eq!(reclaim("x.img,reclaim=on"), Ok(Some(true)));
        assert_eq!(
            reclaim("x.img,reclaim=no"),
            Err(OptionError::BadValue {
                key: "reclaim".into(),
                value: "no".into()
            })
        );
        assert_eq!(
            reclaim("x.img,reclaim=on,reclaim=off"),
            Err(OptionError::Duplicate("reclaim".into()))
        );
    }

    fn base() -> ZonedGeometry {
        ZonedGeometry {
            capacity: 1 << 20,
            zone_size: 1 << 14,
            zone_capacity: 1 << 14,
            conventional_zones: 0,
            max_open: 0,
            max_active: 0,
            max_append_sectors: 256,
            write_granularity: 512,
            logical_block_size: 512,
        }
    }

    fn check(f: impl FnOnce(&mut ZonedGeometry), expected: GeometryError) {
        let mut g = base();
        f(&mut g);
        let err = ZonedGeometry::new(g).unwrap_err();
        assert_eq!(err, expected);
        assert!(!err.to_string().is_empty());
    }

    #[test]
    fn accepts_base_and_odd_last_zone() {
        let g = ZonedGeometry::new(base()).unwrap();
        assert_eq!(g.nr_zones(), 64);
        let mut odd = base();
        odd.capacity = (1 << 20) + 1024;
        odd.zone_capacity = 1 << 13;
        let g = ZonedGeometry::new(odd).unwrap();
        assert_eq!(g.nr_zones(), 65);
        assert_eq!(g.zone_len(64), 1024);
        assert_eq!(g.zone_capacity_of(64), 1024);
        assert_eq!(g.zone_capacity_of(63), 1 << 13);
        assert_eq!(g.zone_index(g.capacity - 1), Some(64));
        assert_eq!(g.zone_index(g.capacity), None);
    }

    #[test]
    fn rejects_each_bad_geometry() {
        check(|g| g.capacity = 0, GeometryError::ZeroCapacity);
        check(
            |g| g.capacity = u64::MAX / 512,
            GeometryError::CapacityTooLarge(u64::MAX / 512),
        );
        check(
            |g| g.zone_size = 3000,
            GeometryError::ZoneSizeNotPowerOfTwo(3000),
        );
        check(|g| g.zone_size = 0, GeometryError::ZoneSizeNotPowerOfTwo(0));
        check(
            |g| {
                g.zone_size = 1 << 33;
                g.capacity = 1 << 34;
            },
            GeometryError::ZoneSizeTooLarge(1 << 33),
        );
        check(
            |g| g.capacity = 1000,
            GeometryError::CapacitySmallerThanZone {
                capacity: 1000,
                zone_size: 1 << 14,
            },
        );
        check(|g| g.zone_capacity = 0, GeometryError::ZeroZoneCapacity);
        check(
            |g| g.zone_capacity = (1 << 14) + 1,
            GeometryError::ZoneCapacityTooLarge {
                zone_capacity: (1 << 14) + 1,
                zone_size: 1 << 14,
            },
        );
        check(
            |g| {
                g.zone_size = 1;
                g.zone_capacity = 1;
                g.capacity = 1 << 33;
            },
            GeometryError::TooManyZones(1 << 33),
        );
        check(
            |g| g.conventional_zones = 64,
            GeometryError::AllConventional {
                conventional: 64,
                zones: 64,
            },
        );
        check(
            |g| {
                g.max_open = 5;
                g.max_active = 4;
            },
            GeometryError::OpenExceedsActive {
                max_open: 5,
                max_active: 4,
            },
        );
        check(
            |g| g.write_granularity = 0,
            GeometryError::BadWriteGranularity(0),
        );
        check(
            |g| g.write_granularity = 1000,
            GeometryError::BadWriteGranularity(1000),
        );
        check(
            |g| g.write_granularity = 1536,
            GeometryError::BadWriteGranularity(1536),
        );
        check(
            |g| {
                g.write_granularity = 4096;
                g.zone_capacity = 1001 * 8 + 4;
            },
            GeometryError::ZoneCapacityNotGranular {
                zone_capacity: 1001 * 8 + 4,
                granularity: 4096,
            },
        );
        check(
            |g| {
                g.write_granularity = 4096;
                g.capacity += 1;
            },
            GeometryError::CapacityNotGranular {
                capacity: (1 << 20) + 1,
                granularity: 4096,
            },
        );
        check(|g| g.max_append_sectors = 0, GeometryError::ZeroMaxAppend);
        check(
            |g| {
                g.write_granularity = 8192;
                g.max_append_sectors = 8;
            },
            GeometryError::MaxAppendBelowGranularity {
                max_append_sectors: 8,
                granularity: 8192,
            },
        );
        for block in [0, 256, 3000, 8192] {
            check(
                |g| g.logical_block_size = block,
                GeometryError::BadLogicalBlockSize(block),
            );
        }
        check(
            |g| g.logical_block_size = 4096,
            GeometryError::GranularityBelowLogicalBlock {
                granularity: 512,
                logical_block_size: 4096,
            },
        );
        check(
            |g| {
                g.logical_block_size = 4096;
                g.write_granularity = 4096;
                g.max_append_sectors = 12;
            },
            GeometryError::MaxAppendNotBlockMultiple {
                max_append_sectors: 12,
                logical_block_size: 4096,
            },
        );
        // max_open > max_active is fine when max_active is unlimited.
        let mut g = base();
        g.max_open = 9;
        assert!(ZonedGeometry::new(g).is_ok());
    }

    #[test]
    fn max_append_is_capped_at_seg_max_times_size_max() {
        // Virtio 1.3 5.2.5: max_append_sectors <= seg_max * size_max / 512 (254 * 256 KiB).
        assert_eq!(MAX_APPEND_SECTORS, 130_048);
        let mut g = ZonedGeometry {
            capacity: 1 << 20,
            zone_size: 1 << 18,
            zone_capacity: 1 << 18,
            conventional_zones: 0,
            max_open: 0,
            max_active: 0,
            max_append_sectors: MAX_APPEND_SECTORS,
            write_granularity: 512,
            logical_block_size: 512,
        };
        assert!(ZonedGeometry::new(g).is_ok());
        g.max_append_sectors = 262_144;
        assert_eq!(
            ZonedGeometry::new(g),
            Err(GeometryError::MaxAppendTooLarge {
                max_append_sectors: 262_144,
                limit: MAX_APPEND_SECTORS,
            })
        );
        let o = ZonedDiskOptions::parse("x.img,size=1G,zone-size=128M,max-append=128M").unwrap();
        let msg = o.overrides.geometry().unwrap_err().to_string();
        assert!(msg.contains("262144") && msg.contains("130048"), "{msg}");
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4K"), Some(4096));
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size("8MiB"), Some(8 << 20));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("12X"), None);
        assert_eq!(parse_size("10ib"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn parses_option_strings() {
        let o = ZonedDiskOptions::parse("/tmp/disk.img").unwrap();
        assert_eq!(o.path, PathBuf::from("/tmp/disk.img"));
        assert_eq!(o.overrides.given().count(), 0);
        let g = o.overrides.geometry().unwrap();
        assert_eq!(g.capacity, DEFAULT_SIZE_BYTES / 512);
        assert_eq!(g.zone_size, DEFAULT_ZONE_SIZE_BYTES / 512);
        assert_eq!(g.zone_capacity, g.zone_size);
        assert_eq!(g.max_append_sectors, 2048);
        assert_eq!(g.write_granularity, 512);
        assert_eq!((g.conventional_zones, g.max_open, g.max_active), (0, 0, 0));

        let o = ZonedDiskOptions::parse(
            "d.img,size=1G,zone-size=1M,zone-capacity=512K,conventional-zones=2,max-open=4,\
             max-active=6,max-append=64K,write-granularity=4K",
        )
        .unwrap();
        assert_eq!(o.overrides.given().count(), 8);
        assert_eq!(o.overrides.get(GeometryOption::Size), Some(1 << 30));
        let g = o.overrides.geometry().unwrap();
        assert_eq!(
            g,
            ZonedGeometry {
                capacity: 1 << 21,
                zone_size: 2048,
                zone_capacity: 1024,
                conventional_zones: 2,
                max_open: 4,
                max_active: 6,
                max_append_sectors: 128,
                write_granularity: 4096,
                logical_block_size: 512,
            }
        );
        // A small zone size lowers the default max-append.
        let o = ZonedDiskOptions::parse("d,zone-size=256K,size=1M").unwrap();
        assert_eq!(o.overrides.geometry().unwrap().max_append_sectors, 512);
    }

    #[test]
    fn set_text_takes_what_the_option_string_takes() {
        let mut o = GeometryOverrides::default();
        o.set_text(GeometryOption::Size, "1G").unwrap();
        o.set_text(GeometryOption::MaxOpen, "4").unwrap();
        let parsed = ZonedDiskOptions::parse("d,size=1G,max-open=4").unwrap();
        assert_eq!(o, parsed.overrides);
        assert_eq!(
            o.set_text(GeometryOption::Size, "2G"),
            Err(OptionError::Duplicate("size".into()))
        );
        assert_eq!(
            o.set_text(GeometryOption::ZoneSize, "1000"),
            Err(OptionError::NotSectorMultiple {
                key: "zone-size".into(),
                value: "1000".into()
            })
        );
        assert_eq!(
            o.set_text(GeometryOption::LogicalBlockSize, "1K"),
            Err(OptionError::BadLogicalBlockSize("1K".into()))
        );
    }

    #[test]
    fn logical_block_size_option() {
        let geometry = |s: &str| ZonedDiskOptions::parse(s).unwrap().overrides.geometry();
        let g = geometry("d,size=1G,zone-size=1M,logical-block-size=4096").unwrap();
        // The write granularity follows unless given.
        assert_eq!((g.logical_block_size, g.write_granularity), (4096, 4096));
        assert_eq!(g.block_sectors(), 8);
        assert!(g.is_block_aligned(16, 8));
        assert!(!g.is_block_aligned(4, 8) && !g.is_block_aligned(8, 1));
        let g = geometry("d,logical-block-size=4K,write-granularity=16K").unwrap();
        assert_eq!((g.logical_block_size, g.write_granularity), (4096, 16384));
        let g = geometry("d").unwrap();
        assert_eq!((g.logical_block_size, g.write_granularity), (512, 512));
        assert_eq!(g.block_sectors(), 1);
        for bad in ["1024", "8192", "0", "4M"] {
            let err = ZonedDiskOptions::parse(&format!("d,logical-block-size={bad}")).unwrap_err();
            assert_eq!(err, OptionError::BadLogicalBlockSize(bad.into()));
            assert!(err.to_string().contains("must be 512 or 4096"), "{err}");
        }
        assert!(matches!(
            ZonedDiskOptions::parse("d,logical-block-size=big"),
            Err(OptionError::BadValue { .. })
        ));
        assert_eq!(
            geometry("d,logical-block-size=4096,write-granularity=512"),
            Err(GeometryError::GranularityBelowLogicalBlock {
                granularity: 512,
                logical_block_size: 4096
            })
        );
        assert_eq!(
            geometry("d,logical-block-size=4096,max-append=6K"),
            Err(GeometryError::MaxAppendNotBlockMultiple {
                max_append_sectors: 12,
                logical_block_size: 4096
            })
        );
    }

    #[test]
    fn rejects_bad_option_strings() {
        let err = |s: &str| ZonedDiskOptions::parse(s).unwrap_err();
        assert_eq!(err(""), OptionError::MissingPath);
        assert_eq!(err(",size=1G"), OptionError::MissingPath);
        assert_eq!(err("d,size"), OptionError::NotKeyValue("size".into()));
        assert_eq!(
            err("d,colour=red"),
            OptionError::UnknownKey("colour".into())
        );
        assert_eq!(
            err("d,size=1G,size=2G"),
            OptionError::Duplicate("size".into())
        );
        assert_eq!(
            err("d,size=lots"),
            OptionError::BadValue {
                key: "size".into(),
                value: "lots".into()
            }
        );
        assert_eq!(
            err("d,max-open=-1"),
            OptionError::BadValue {
                key: "max-open".into(),
                value: "-1".into()
            }
        );
        assert_eq!(
            err("d,max-open=5000000000"),
            OptionError::BadValue {
                key: "max-open".into(),
                value: "5000000000".into()
            }
        );
        assert_eq!(
            err("d,size=1000"),
            OptionError::NotSectorMultiple {
                key: "size".into(),
                value: "1000".into()
            }
        );
        let msg = err("d,zone-size=1M,frob=2").to_string();
        assert!(msg.contains("frob") && !msg.contains('\n'), "{msg}");
        // Well-formed but impossible: the geometry names the value.
        let o = ZonedDiskOptions::parse("d,zone-size=3M").unwrap();
        assert_eq!(
            o.overrides.geometry().unwrap_err(),
            GeometryError::ZoneSizeNotPowerOfTwo(6144)
        );
        let o = ZonedDiskOptions::parse("d,write-granularity=0").unwrap();
        assert_eq!(
            o.overrides.geometry().unwrap_err(),
            GeometryError::BadWriteGranularity(0)
        );
    }
}
