//! A zoned disk: the zone state machine plus a storage backend behind the small
//! [`ZoneStorage`] seam. This is what the zoned executor calls; every method returns a
//! [`ZoneError`] whose `status()` is the byte to put in the request's status.
//!
//! Backends only move bytes and persist or forward zone state; every rule (write pointer,
//! resources, conditions, error codes) lives in [`ZoneSet`], so the file-emulated image and the
//! host zoned device behave the same.

use std::io;
use std::time::Duration;

use super::geometry::{ZonedGeometry, SECTOR_SIZE};
use super::image::{PowerCut, PowerCutReport};
use super::state::{
    ReadSegment, WritePlan, Zone, ZoneCondition, ZoneError, ZoneOp, ZoneOpKind, ZoneOpPlan, ZoneSet,
};
use super::wire;
use crate::file_io::DataPath;

/// What a zoned disk needs from its storage. Called only with requests the state machine has
/// already validated; an `Err` leaves the zone state unchanged and fails the request with IOERR.
pub trait ZoneStorage {
    /// Reads `buf.len()` bytes at `sector`. Only called for ranges below the write pointer;
    /// the disk fills zeros above it itself.
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes `data` at `sector` (for an append: at the write pointer the state machine chose).
    fn write(&mut self, sector: u64, data: &[u8]) -> io::Result<()>;

    /// Applies a zone management plan (OPEN/CLOSE/FINISH/RESET/RESET_ALL, including any
    /// implicit close it carries) before the state machine commits it. A host zoned device
    /// forwards it as ioctls; the file image makes resets durable here.
    fn apply_zone_op(&mut self, plan: &ZoneOpPlan) -> io::Result<()>;

    /// Before a write or append that needs an open resource at the open limit: the state
    /// machine implicitly closes the implicitly-open zone starting at `zone_start`. A host zoned
    /// device is told explicitly, since it would otherwise pick a victim of its own.
    fn implicit_close(&mut self, _zone_start: u64) -> io::Result<()> {
        Ok(())
    }

    /// A handle that moves data from any thread, so that requests to different zones can run
    /// in parallel (see `zoned::lanes`). `None` keeps all I/O on the calling
    /// thread, through `read` and `write`.
    fn data_path(&self) -> Option<DataPath> {
        None
    }

    /// The smallest write the storage does without a read-modify-write, for the guest's
    /// physical block size (VIRTIO_BLK_F_TOPOLOGY). The default, right for a file image, is the
    /// host page: the page cache writes the image in 4 KiB pages. A host device says its own.
    /// Linux's virtio_blk overrides it for zoned disks (physical block size and io_min become
    /// the write granularity), so today only other drivers see it.
    fn physical_block_size(&self) -> u32 {
        4096
    }

    /// Makes every completed write durable, then the current state of the zones listed in
    /// `zones.changed_zones()` (those changed since the last successful flush).
    fn flush(&mut self, zones: &ZoneSet) -> io::Result<()>;

    /// Work a reset left for later, done while the guest leaves the disk alone (the file image
    /// gives reset zones' blocks back here rather than in the reset), for about `budget`; with
    /// `zones` the state now. Returns whether some is left. Called only between batches, with
    /// no request in flight.
    fn reclaim(&mut self, _zones: &ZoneSet, _budget: Duration) -> bool {
        false
    }

    /// The VM lost power (`--power-cut`): storage with a volatile write cache loses what `cut`
    /// says of the writes since the last flush and reports it; storage without one (the
    /// default) makes everything durable, as at a clean stop, and reports nothing. Called once,
    /// with no request in flight; the storage is not used afterwards.
    fn power_cut(&mut self, zones: &ZoneSet, _cut: PowerCut) -> io::Result<Option<PowerCutReport>> {
        self.flush(zones).map(|()| None)
    }

    /// After a failed write, append or zone operation involving the sequential zone starting at
    /// `zone_start`: the zone's actual (condition, write pointer) if storage can tell. A host zoned device
    /// re-reads it with BLKREPORTZONE, since part of the write may have landed. `None` (the
    /// default, right for the file image whose failed writes change no state) keeps the state.
    fn zone_state_after_error(
        &mut self,
        _zone_start: u64,
    ) -> io::Result<Option<(ZoneCondition, u64)>> {
        Ok(None)
    }
}

/// A zoned disk: zone state plus storage.
#[derive(Debug)]
pub struct ZonedDisk<S> {
    zones: ZoneSet,
    storage: S,
}

/// The sectors of a transfer of `len` bytes; a transfer that is not whole sectors is IOERR.
pub(super) fn sectors_of(len: u64) -> Result<u64, ZoneError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(ZoneError::Io);
    }
    Ok(len / SECTOR_SIZE)
}

/// A write or append whose zone state is committed and whose data is on its way to storage.
#[derive(Debug)]
#[must_use = "a reservation must be completed"]
pub struct Reservation {
    /// Where the data goes.
    pub sector: u64,
    pub nr_sectors: u64,
    /// The sequential zone written and its (condition, write pointer) before the reservation.
    before: Option<(usize, (ZoneCondition, u64))>,
}

impl Reservation {
    /// Settles a reservation whose data storage took: returns where the data landed. Success
    /// changes no zone state (the reservation committed it), so this needs no access to the
    /// disk; a failed store goes to [`ZonedDisk::complete`].
    pub fn landed(self) -> u64 {
        self.sector
    }
}

/// A storage failure as a request status: a host zoned device reports its resource limits as
/// ETOOMANYREFS (open) and EOVERFLOW (active), which keep their meaning for the guest; anything
/// else is an I/O error.
fn io_error(error: io::Error) -> ZoneError {
    match error.raw_os_error() {
        Some(libc::ETOOMANYREFS) => ZoneError::OpenResource,
        Some(libc::EOVERFLOW) => ZoneError::ActiveResource,
        _ => ZoneError::Io,
    }
}

impl<S: ZoneStorage> ZonedDisk<S> {
    /// Combines restored (or fresh) zone state with its storage.
    pub fn new(zones: ZoneSet, storage: S) -> Self {
        ZonedDisk { zones, storage }
    }

    /// The disk's geometry (for the config space: see [`wire::fill_zoned_config`]).
    pub fn geometry(&self) -> &ZonedGeometry {
        self.zones.geometry()
    }

    /// The physical block size the guest is told: the storage's, at least one logical block
    /// and a power of two (anything else a host reports is taken as one logical block).
    pub fn physical_block_size(&self) -> u32 {
        let logical = self.geometry().logical_block_size;
        let physical = self.storage.physical_block_size();
        if physical.is_power_of_two() && physical > logical {
            physical
        } else {
            logical
        }
    }

    /// The zone state, read-only.
    pub fn zones(&self) -> &ZoneSet {
        &self.zones
    }

    /// The storage backend.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage backend, mutable: for moving the data of requests the zone state has
    /// checked (`guest_io`), since writing through it bypasses the zone state.
    pub(crate) fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// VIRTIO_BLK_T_IN: reads `buf.len()` bytes (a multiple of 512) at `sector`. Reads may
    /// cross zones; parts above a write pointer read as zeros without touching storage.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), ZoneError> {
        let nr = sectors_of(buf.len() as u64)?;
        let segments = self.zones.check_read(sector, nr)?;
        for seg in segments {
            let from = ((seg.sector - sector) * SECTOR_SIZE) as usize;
            let to = from + (seg.nr_sectors * SECTOR_SIZE) as usize;
            let part = &mut buf[from..to];
            if seg.has_data {
                self.storage.read(seg.sector, part).map_err(io_error)?;
            } else {
                part.fill(0);
            }
        }
        Ok(())
    }

    /// VIRTIO_BLK_T_OUT: writes `data` (a multiple of 512 bytes) at `sector`.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), ZoneError> {
        let reservation = self.reserve_write(sector, sectors_of(data.len() as u64)?)?;
        let stored = self.store(&reservation, data);
        self.complete(reservation, stored).map(|_| ())
    }

    /// VIRTIO_BLK_T_ZONE_APPEND: appends `data` to the zone starting at `zone_start` and
    /// returns the sector where it landed (for the first 8 bytes of the in-header).
    pub fn append(&mut self, zone_start: u64, data: &[u8]) -> Result<u64, ZoneError> {
        let reservation = self.reserve_append(zone_start, sectors_of(data.len() as u64)?)?;
        let stored = self.store(&reservation, data);
        self.complete(reservation, stored)
    }

    fn store(&mut self, reservation: &Reservation, data: &[u8]) -> io::Result<()> {
        if reservation.nr_sectors == 0 {
            return Ok(());
        }
        self.storage.write(reservation.sector, data)
    }

    /// First half of a write: checks it against the zone state and commits its effect (the
    /// write pointer moves now, so the next write to the zone can be checked before this one's
    /// data has landed). The data then goes to storage, possibly on another thread through a
    /// [`DataPath`], and [`Self::complete`] settles the outcome.
    pub fn reserve_write(
        &mut self,
        sector: u64,
        nr_sectors: u64,
    ) -> Result<Reservation, ZoneError> {
        let plan = self.zones.prepare_write(sector, nr_sectors)?;
        self.reserve(plan)
    }

    /// First half of an append to the zone starting at `zone_start`: the reservation's
    /// `sector` is where the data goes.
    pub fn reserve_append(
        &mut self,
        zone_start: u64,
        nr_sectors: u64,
    ) -> Result<Reservation, ZoneError> {
        let plan = self.zones.prepare_append(zone_start, nr_sectors)?;
        self.reserve(plan)
    }

    fn reserve(&mut self, plan: WritePlan) -> Result<Reservation, ZoneError> {
        let reservation = Reservation {
            sector: plan.sector,
            nr_sectors: plan.nr_sectors,
            before: plan
                .sequential_zone()
                .map(|index| (index, self.zones.saved_state(index))),
        };
        if plan.nr_sectors == 0 {
            return Ok(reservation);
        }
        if let Some(victim) = plan.implicitly_closes {
            if let Err(e) = self.storage.implicit_close(victim) {
                self.resync_after_error(victim);
                return Err(io_error(e));
            }
        }
        self.zones.commit_write(plan)?;
        Ok(reservation)
    }

    /// Second half of a write or append: `stored` is what storage said. On failure the zone
    /// takes the state storage reports (a host zoned device may have taken part of the data)
    /// or, if storage cannot tell, its write pointer goes back to where it was before the
    /// reservation (see `ZoneSet::roll_back_write`). Returns
    /// the sector where the data landed.
    pub fn complete(
        &mut self,
        reservation: Reservation,
        stored: io::Result<()>,
    ) -> Result<u64, ZoneError> {
        let error = match stored {
            Ok(()) => return Ok(reservation.landed()),
            Err(error) => error,
        };
        if let Some((index, (cond, wp))) = reservation.before {
            let zone_start = self.zones.geometry().zone_start(index);
            let taken = match self.storage.zone_state_after_error(zone_start) {
                Ok(Some((reported_cond, reported_wp))) => self
                    .zones
                    .resync_zone(index, reported_cond, reported_wp)
                    .is_ok(),
                _ => false,
            };
            // No report, or one that contradicts the geometry: the write pointer goes back to
            // where it was, without reopening a zone that other requests closed meanwhile.
            if !taken {
                self.zones.roll_back_write(index, (cond, wp));
            }
        }
        Err(io_error(error))
    }

    /// Lets storage correct the state of a sequential zone after a failed operation.
    fn resync_after_error(&mut self, sector: u64) {
        let geometry = *self.zones.geometry();
        let Some(index) = geometry.zone_index(sector) else {
            return;
        };
        if geometry.is_conventional(index) {
            return;
        }
        if let Ok(Some((cond, wp))) = self
            .storage
            .zone_state_after_error(geometry.zone_start(index))
        {
            // A report that contradicts the geometry is ignored: keeping the old state is safe.
            let _ = self.zones.resync_zone(index, cond, wp);
        }
    }

    /// Reads for a parallel request: which parts of `nr_sectors` at `sector` hold data.
    pub fn check_read(&self, sector: u64, nr_sectors: u64) -> Result<Vec<ReadSegment>, ZoneError> {
        self.zones.check_read(sector, nr_sectors)
    }

    fn run_zone_op(&mut self, plan: ZoneOpPlan) -> Result<(), ZoneError> {
        if !plan.updates.is_empty() {
            if let Err(e) = self.storage.apply_zone_op(&plan) {
                // Part of the plan (say, the implicit close before an OPEN) may have been
                // applied: let storage say where each zone involved stands.
                for update in &plan.updates {
                    self.resync_after_error(update.start);
                }
                return Err(io_error(e));
            }
        }
        self.zones.commit_zone_op(plan)
    }

    /// VIRTIO_BLK_T_ZONE_OPEN/CLOSE/FINISH/RESET on the zone starting at `zone_start`.
    pub fn zone_op(&mut self, op: ZoneOp, zone_start: u64) -> Result<(), ZoneError> {
        let plan = self.zones.prepare_zone_op(op, zone_start)?;
        self.run_zone_op(plan)
    }

    /// VIRTIO_BLK_T_ZONE_RESET_ALL.
    pub fn reset_all(&mut self) -> Result<(), ZoneError> {
        let plan = self.zones.prepare_reset_all();
        self.run_zone_op(plan)
    }

    /// Any zone management request, by kind (see [`wire::zone_op_of_request`]); `sector` is
    /// ignored for RESET_ALL.
    pub fn zone_management(&mut self, kind: ZoneOpKind, sector: u64) -> Result<(), ZoneError> {
        match kind {
            ZoneOpKind::Single(op) => self.zone_op(op, sector),
            ZoneOpKind::ResetAll => self.reset_all(),
        }
    }

    /// Up to `max_zones` zones starting with the one containing `from_sector`.
    pub fn report(
        &self,
        from_sector: u64,
        max_zones: usize,
    ) -> Result<impl Iterator<Item = Zone> + '_, ZoneError> {
        self.zones.report(from_sector, max_zones)
    }

    /// VIRTIO_BLK_T_ZONE_REPORT into a reply buffer: returns (nr_zones, bytes written). A
    /// buffer shorter than the 64-byte header is IOERR.
    pub fn report_into(&self, from_sector: u64, buf: &mut [u8]) -> Result<(u64, usize), ZoneError> {
        let zones = self
            .zones
            .report(from_sector, wire::report_capacity(buf.len()))?;
        wire::encode_zone_report(zones, buf).ok_or(ZoneError::Io)
    }

    /// How much of a report buffer of `buffer_len` bytes a ZONE_REPORT from `from_sector` can
    /// fill: the header plus one descriptor per zone from there to the end of the disk. A
    /// handler allocates this much, not what the guest offered (up to the request size limit),
    /// so a huge buffer for a small disk costs no host memory.
    pub fn report_reply_len(&self, from_sector: u64, buffer_len: usize) -> usize {
        let g = self.geometry();
        let first = g.zone_index(from_sector).map_or(g.nr_zones(), |i| i as u64);
        let zones_left = g.nr_zones() - first;
        let needed = zones_left
            .saturating_mul(wire::REPORT_DESCRIPTOR_SIZE as u64)
            .saturating_add(wire::REPORT_HEADER_SIZE as u64);
        usize::try_from(needed).map_or(buffer_len, |needed| buffer_len.min(needed))
    }

    /// Lets storage do the work resets left for later, for about `budget` (see
    /// [`ZoneStorage::reclaim`]); returns whether some is left.
    pub fn reclaim(&mut self, budget: Duration) -> bool {
        self.storage.reclaim(&self.zones, budget)
    }

    /// VIRTIO_BLK_T_FLUSH: everything written before is durable afterwards, with the zone
    /// states that describe it.
    pub fn flush(&mut self) -> Result<(), ZoneError> {
        self.storage.flush(&self.zones).map_err(io_error)?;
        self.zones.clear_changed();
        Ok(())
    }

    /// A power cut (see `ZoneStorage::power_cut`); the disk is not used afterwards.
    pub fn power_cut(&mut self, cut: PowerCut) -> io::Result<Option<PowerCutReport>> {
        self.storage.power_cut(&self.zones, cut)
    }

    /// Fault injection for this run only: the zone shows READ_ONLY or OFFLINE, and the image
    /// keeps its real state. See `ZoneSet::inject_condition`.
    pub fn inject_condition(
        &mut self,
        zone_start: u64,
        cond: ZoneCondition,
    ) -> Result<(), ZoneError> {
        self.zones.inject_condition(zone_start, cond)
    }

    /// Fault injection: makes a zone READ_ONLY or OFFLINE (persisted by the next flush).
    pub fn set_zone_condition(
        &mut self,
        zone_start: u64,
        cond: ZoneCondition,
    ) -> Result<(), ZoneError> {
        self.zones.set_zone_condition(zone_start, cond)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Storage in memory, with switchable failures.
    #[derive(Default)]
    struct MemStorage {
        data: Vec<u8>,
        fail: bool,
        after_error: Option<(ZoneCondition, u64)>,
        flushes: usize,
        zone_ops: Vec<ZoneOpKind>,
        implicit_closes: Vec<u64>,
    }

    impl ZoneStorage for MemStorage {
        fn read(&mut self, sector: u64, buf: &mut [u8]) -> io::Result<()> {
            if self.fail {
                return Err(io::Error::other("injected"));
            }
            let at = (sector * 512) as usize;
            buf.copy_from_slice(&self.data[at..at + buf.len()]);
            Ok(())
        }
        fn write(&mut self, sector: u64, data: &[u8]) -> io::Result<()> {
            if self.fail {
                return Err(io::Error::other("injected"));
            }
            let at = (sector * 512) as usize;
            self.data[at..at + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn apply_zone_op(&mut self, plan: &ZoneOpPlan) -> io::Result<()> {
            if self.fail {
                return Err(io::Error::other("injected"));
            }
            self.zone_ops.push(plan.kind);
            Ok(())
        }
        fn implicit_close(&mut self, zone_start: u64) -> io::Result<()> {
            self.implicit_closes.push(zone_start);
            Ok(())
        }
        fn flush(&mut self, _zones: &ZoneSet) -> io::Result<()> {
            if self.fail {
                return Err(io::Error::other("injected"));
            }
            self.flushes += 1;
            Ok(())
        }
        fn zone_state_after_error(
            &mut self,
            _zone_start: u64,
        ) -> io::Result<Option<(ZoneCondition, u64)>> {
            Ok(self.after_error)
        }
    }

    fn disk() -> ZonedDisk<MemStorage> {
        let g = ZonedGeometry::new(ZonedGeometry {
            capacity: 64,
            zone_size: 16,
            zone_capacity: 16,
            conventional_zones: 1,
            max_open: 0,
            max_active: 0,
            max_append_sectors: 8,
            write_granularity: 512,
            logical_block_size: 512,
        })
        .unwrap();
        let storage = MemStorage {
            // Non-zero garbage: reads above the write pointer must not see it.
            data: vec![0x5A; 64 * 512],
            ..Default::default()
        };
        ZonedDisk::new(ZoneSet::new(g), storage)
    }

    #[test]
    fn request_paths_and_status_codes() {
        let mut d = disk();
        d.write(16, &[1u8; 1024]).unwrap();
        assert_eq!(d.append(16, &[2u8; 512]), Ok(18));
        let mut buf = vec![0xFFu8; 16 * 512];
        d.read(16, &mut buf).unwrap();
        assert!(buf[..1024].iter().all(|&b| b == 1));
        assert!(buf[1024..1536].iter().all(|&b| b == 2));
        assert!(buf[1536..].iter().all(|&b| b == 0), "zeros above the wp");
        assert_eq!(d.write(16, &[1u8; 512]).unwrap_err().status(), 4);
        assert_eq!(d.write(17, &[1u8; 100]).unwrap_err().status(), 1);
        assert_eq!(d.append(0, &[1u8; 512]).unwrap_err().status(), 3);
        d.zone_management(ZoneOpKind::Single(ZoneOp::Finish), 32)
            .unwrap();
        d.zone_management(ZoneOpKind::ResetAll, 0).unwrap();
        assert_eq!(
            d.storage().zone_ops,
            vec![ZoneOpKind::Single(ZoneOp::Finish), ZoneOpKind::ResetAll]
        );
        // Idempotent ops do not reach storage.
        d.zone_op(ZoneOp::Reset, 16).unwrap();
        assert_eq!(d.storage().zone_ops.len(), 2);
        let mut reply = vec![0u8; 64 * 3];
        assert_eq!(d.report_into(20, &mut reply), Ok((2, 192)));
        assert_eq!(d.report_into(0, &mut [0u8; 10]), Err(ZoneError::Io));
        // A report needs at most the header and the zones from its sector on.
        assert_eq!(d.report_reply_len(20, 64 << 20), 64 + 3 * 64);
        assert_eq!(d.report_reply_len(0, usize::MAX), 64 + 4 * 64);
        assert_eq!(d.report_reply_len(63, 1 << 30), 64 + 64);
        assert_eq!(d.report_reply_len(0, 100), 100);
        assert_eq!(d.report_reply_len(0, 10), 10);
        assert_eq!(
            d.report_reply_len(64, 1 << 20),
            64,
            "past the end: header only"
        );
        assert_eq!(
            d.report_into(64, &mut reply),
            Err(ZoneError::InvalidCommand)
        );
        d.write(0, &[3u8; 512]).unwrap();
        d.flush().unwrap();
        assert!(d.zones().changed_zones().is_empty());
        d.set_zone_condition(48, ZoneCondition::Offline).unwrap();
        assert_eq!(d.read(40, &mut [0u8; 8192]).unwrap_err().status(), 3);
    }

    #[test]
    fn implicit_closes_reach_storage_and_failed_zone_ops_resync() {
        let g = ZonedGeometry::new(ZonedGeometry {
            capacity: 64,
            zone_size: 16,
            zone_capacity: 16,
            conventional_zones: 0,
            max_open: 1,
            max_active: 0,
            max_append_sectors: 8,
            write_granularity: 512,
            logical_block_size: 512,
        })
        .unwrap();
        let storage = MemStorage {
            data: vec![0; 64 * 512],
            ..Default::default()
        };
        let mut d = ZonedDisk::new(ZoneSet::new(g), storage);
        d.write(0, &[1u8; 512]).unwrap();
        d.write(16, &[1u8; 512]).unwrap();
        assert_eq!(d.append(32, &[1u8; 512]), Ok(32));
        assert_eq!(d.storage().implicit_closes, vec![0, 16]);
        assert_eq!(d.zones().saved_state(1), (ZoneCondition::Closed, 17));
        // An OPEN that fails after storage closed the implicitly-open zone: storage's word on
        // the zones involved replaces the state.
        d.storage.fail = true;
        d.storage.after_error = Some((ZoneCondition::Closed, 33));
        assert_eq!(d.zone_op(ZoneOp::Open, 16), Err(ZoneError::Io));
        assert_eq!(d.zones().saved_state(2), (ZoneCondition::Closed, 33));
        assert_eq!(d.zones().open_zones(), 0);
    }

    #[test]
    fn a_failed_write_rolls_back_without_reopening_a_zone_closed_meanwhile() {
        let g = ZonedGeometry::new(ZonedGeometry {
            capacity: 64,
            zone_size: 16,
            zone_capacity: 16,
            conventional_zones: 0,
            max_open: 1,
            max_active: 0,
            max_append_sectors: 8,
            write_granularity: 512,
            logical_block_size: 512,
        })
        .unwrap();
        let storage = MemStorage {
            data: vec![0; 64 * 512],
            ..Default::default()
        };
        let mut d = ZonedDisk::new(ZoneSet::new(g), storage);
        d.write(0, &[1u8; 512]).unwrap();
        // Lane A reserves a write into the implicitly-open zone 0; lane B's write to zone 1
        // closes zone 0 implicitly; then A's write fails.
        let a = d.reserve_write(1, 1).unwrap();
        d.write(16, &[1u8; 512]).unwrap();
        assert_eq!(d.zones().saved_state(0), (ZoneCondition::Closed, 2));
        let failed = d.complete(a, Err(io::Error::from_raw_os_error(libc::EIO)));
        assert_eq!(failed, Err(ZoneError::Io));
        assert_eq!(d.zones().saved_state(0), (ZoneCondition::Closed, 1));
        assert_eq!(d.zones().open_zones(), 1, "max-open=1 holds");
        // A write that filled its zone (releasing its open resource) fails after another zone
        // took that resource: the zone gets its write pointer back, but not an open resource.
        d.write(32, &[1u8; 15 * 512]).unwrap();
        let a = d.reserve_write(47, 1).unwrap();
        assert_eq!(d.zones().saved_state(2), (ZoneCondition::Full, 48));
        d.write(17, &[1u8; 512]).unwrap();
        let failed = d.complete(a, Err(io::Error::from_raw_os_error(libc::EIO)));
        assert_eq!(failed, Err(ZoneError::Io));
        assert_eq!(d.zones().saved_state(2), (ZoneCondition::Closed, 47));
        assert_eq!(d.zones().open_zones(), 1, "max-open=1 holds");
        assert_eq!(d.zones().saved_state(1), (ZoneCondition::ImplicitOpen, 18));
    }

    #[test]
    fn host_errnos_keep_their_zone_meaning() {
        let errno = |e| io_error(io::Error::from_raw_os_error(e));
        assert_eq!(errno(libc::ETOOMANYREFS), ZoneError::OpenResource);
        assert_eq!(errno(libc::EOVERFLOW), ZoneError::ActiveResource);
        assert_eq!(errno(libc::EIO), ZoneError::Io);
        assert_eq!(errno(libc::EINVAL), ZoneError::Io);
        assert_eq!(io_error(io::Error::other("x")), ZoneError::Io);
        assert_eq!(ZoneError::OpenResource.status(), 5);
        assert_eq!(ZoneError::ActiveResource.status(), 6);
    }

    #[test]
    fn storage_failure_leaves_state_unchanged() {
        let mut d = disk();
        d.write(16, &[1u8; 512]).unwrap();
        d.storage.fail = true;
        assert_eq!(d.write(17, &[1u8; 512]), Err(ZoneError::Io));
        assert_eq!(d.append(16, &[1u8; 512]), Err(ZoneError::Io));
        assert_eq!(d.zone_op(ZoneOp::Reset, 16), Err(ZoneError::Io));
        assert_eq!(d.flush(), Err(ZoneError::Io));
        assert_eq!(d.zones().changed_zones(), &[1], "still to be persisted");
        assert_eq!(d.zones().saved_state(1), (ZoneCondition::ImplicitOpen, 17));
        d.storage.fail = false;
        d.write(17, &[1u8; 512]).unwrap();
        // A backend that can re-read the zone corrects the write pointer after an error.
        d.storage.fail = true;
        d.storage.after_error = Some((ZoneCondition::ImplicitOpen, 19));
        assert_eq!(d.write(18, &[1u8; 1024]), Err(ZoneError::Io));
        assert_eq!(d.zones().saved_state(1), (ZoneCondition::ImplicitOpen, 19));
        // A nonsensical report is ignored.
        d.storage.after_error = Some((ZoneCondition::Empty, 19));
        assert_eq!(d.append(16, &[1u8; 512]), Err(ZoneError::Io));
        assert_eq!(d.zones().saved_state(1), (ZoneCondition::ImplicitOpen, 19));
    }
}
