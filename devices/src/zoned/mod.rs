//! Zoned block devices (VIRTIO_BLK_F_ZONED, host-managed): geometry and options, the zone state
//! machine shared by every backend, the virtio-blk wire encodings of zone information, and the
//! backends: file-emulated and host zoned device.
//!
//! - [`geometry`]: sizes and limits, validation, defaults, the `PATH[,key=value...]` parser.
//! - [`state`]: zone conditions and the rules (the only place they live).
//! - [`wire`]: spec numbers, config-space fields, ZONE_REPORT replies.
//! - [`disk`]: [`ZonedDisk`], the request-level API, over the [`ZoneStorage`] backend seam.
//! - [`image`]: [`ZonedImage`], the file-emulated backend (docs/zoned-image-format.md).
//! - [`host`]: [`HostZonedDevice`], a host-managed zoned block device of the host.
//!
//! A request handler maps each virtio-blk request to one call and writes
//! `wire::status_of(&result)` (OK, or the error's `status()`) into the status byte:
//!
//! | request | call |
//! |---|---|
//! | IN | `disk.read(sector, &mut buf)` |
//! | OUT | `disk.write(sector, &buf)` |
//! | FLUSH | `disk.flush()` |
//! | ZONE_APPEND | `disk.append(sector, &buf)` → sector for the in-header's first 8 bytes |
//! | ZONE_REPORT | `disk.report_into(sector, &mut reply)` → (nr_zones, bytes written) |
//! | ZONE_OPEN/CLOSE/FINISH/RESET/RESET_ALL | `disk.zone_management(wire::zone_op_of_request(type)?, sector)` |

pub mod disk;
pub mod executor;
mod faults;
pub mod geometry;
mod guest_io;
pub mod host;
pub mod image;
mod lanes;
mod report;
pub mod state;
pub mod wire;

pub use disk::{ZoneStorage, ZonedDisk};
pub use executor::{RequestCounts, ZonedExecutor};
pub use geometry::{FailWrite, FaultInjection, GeometryOverrides, ZonedDiskOptions, ZonedGeometry};
pub use host::{HostError, HostZonedDevice, HostZonedDisk};
pub use image::{ImageError, ZonedImage};
pub use state::{Zone, ZoneCondition, ZoneError, ZoneOp, ZoneOpKind, ZoneSet, ZoneType};
