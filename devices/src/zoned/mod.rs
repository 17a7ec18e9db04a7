//! Zoned block devices (VIRTIO_BLK_F_ZONED, host-managed): geometry and options, the zone state
//! machine shared by every backend, the virtio-blk wire encodings of zone information, the
//! executor that serves a virtio-blk queue's requests, and the backends: file-emulated and host
//! zoned device.
//!
//! - [`geometry`]: sizes and limits, validation, defaults, the `PATH[,key=value...]` parser.
//! - [`state`]: zone conditions and the rules (the only place they live).
//! - [`wire`]: spec numbers, config-space fields, ZONE_REPORT replies.
//! - [`disk`]: [`ZonedDisk`], the zone state plus storage behind the [`ZoneStorage`] seam.
//! - [`image`]: [`ZonedImage`], the file-emulated backend (docs/zoned-image-format.md).
//! - [`host`]: [`HostZonedDevice`], a host-managed zoned block device of the host.
//! - [`inspect`]: an image read without changing it, for `vmm image report` and `check`.
//! - [`executor`]: [`ZonedExecutor`], the `block::Executor` of a zoned disk: admission
//!   (counting, injected write failures) and dispatch. Its parts: `faults` (fault injection),
//!   `lanes` (a batch into parallel lanes by zone), `guest_io` (data between guest memory and
//!   storage under the zone rules), `report` (the ZONE_REPORT reply).
//! - [`trace`]: [`ZoneTrace`], the per-request trace of `trace=FILE` (docs/zone-trace.md).
//!
//! How `ZonedExecutor` serves each request type (`wire::status_of` of the result, OK or the
//! error's `status()`, goes into the status byte):
//!
//! | request | call |
//! |---|---|
//! | IN | `disk.check_read(sector, n)`, then each part from storage or zero-filled (`guest_io`) |
//! | OUT | `disk.reserve_write(sector, n)`, data to storage, `disk.complete` only on failure |
//! | ZONE_APPEND | `disk.reserve_append(sector, n)` likewise → landed sector in the first 8 writable bytes |
//! | FLUSH | `disk.flush()` |
//! | ZONE_REPORT | `disk.report_into(sector, &mut reply)` → (nr_zones, bytes written) (`report`) |
//! | ZONE_OPEN/CLOSE/FINISH/RESET/RESET_ALL | `disk.zone_management(wire::zone_op_of_request(kind)?, sector)` |
//! | GET_ID | answered by the block device itself |
//! | anything else | UNSUPP |

pub mod disk;
pub mod executor;
mod faults;
pub mod geometry;
mod guest_io;
pub mod host;
pub mod image;
pub mod inspect;
mod lanes;
mod report;
pub mod state;
pub mod trace;
pub mod wire;

pub use disk::{ZoneStorage, ZonedDisk};
pub use executor::{PowerCutTrigger, RequestCounts, ZonedExecutor};
pub use geometry::{FailWrite, FaultInjection, GeometryOverrides, ZonedDiskOptions, ZonedGeometry};
pub use host::{HostError, HostZonedDevice, HostZonedDisk};
pub use image::{ImageError, ZonedImage};
pub use state::{Zone, ZoneCondition, ZoneError, ZoneOp, ZoneOpKind, ZoneSet, ZoneType};
pub use trace::{TraceError, ZoneTrace};
