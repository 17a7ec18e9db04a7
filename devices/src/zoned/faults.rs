//! Fault injection for one run of a zoned disk (`--zoned-disk ...,read-only-zones=...`): zones
//! shown READ_ONLY or OFFLINE without storing it, and the n-th write to a zone failed with a
//! chosen status.

use super::disk::{ZoneStorage, ZonedDisk};
use super::geometry::{FailWrite, FaultInjection};
use super::state::ZoneCondition;

/// The injected write failure of a run, and how far it has counted.
#[derive(Debug, Default)]
pub(super) struct WriteFaults {
    fail_write: Option<FailWrite>,
    /// Writes (and appends) to the failing zone seen so far.
    writes_to_failing_zone: u64,
}

impl WriteFaults {
    /// Shows `faults` on `disk` for this run: injects the zone conditions and keeps the write
    /// failure. Every zone named must exist, and the conditions need sequential zones.
    pub(super) fn inject<S: ZoneStorage>(
        disk: &mut ZonedDisk<S>,
        faults: &FaultInjection,
    ) -> Result<Self, String> {
        let geometry = *disk.geometry();
        let nr_zones = geometry.nr_zones();
        let check = |what: &str, zone: u64| -> Result<u64, String> {
            if zone < nr_zones {
                Ok(geometry.zone_start(zone as usize))
            } else {
                Err(format!("zoned disk option {what}: zone {zone} does not exist (the disk has {nr_zones} zones)"))
            }
        };
        let injected = [
            (
                &faults.read_only_zones,
                ZoneCondition::ReadOnly,
                "read-only-zones",
            ),
            (
                &faults.offline_zones,
                ZoneCondition::Offline,
                "offline-zones",
            ),
        ];
        for (zones, cond, what) in injected {
            for &zone in zones {
                let start = check(what, zone)?;
                disk.inject_condition(start, cond).map_err(|_| {
                    format!("zoned disk option {what}: zone {zone} is conventional")
                })?;
            }
        }
        if let Some(fail) = faults.fail_write {
            check("fail-write", fail.zone)?;
        }
        Ok(WriteFaults {
            fail_write: faults.fail_write,
            writes_to_failing_zone: 0,
        })
    }

    /// The status to fail a write (or append) to the zone `zone` with, if it is the injected
    /// one; counts it if it goes to the failing zone.
    pub(super) fn failure(&mut self, zone: Option<usize>, sector: u64) -> Option<u8> {
        let fail = self.fail_write?;
        if zone != Some(fail.zone as usize) {
            return None;
        }
        self.writes_to_failing_zone += 1;
        if self.writes_to_failing_zone != fail.nth {
            return None;
        }
        log::info!(
            "zoned disk: failing write {} at sector {sector} with status {} (fail-write)",
            self.writes_to_failing_zone,
            fail.status
        );
        Some(fail.status)
    }
}
