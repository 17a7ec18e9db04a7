//! The zone state machine, independent of storage: zone types and conditions, the rules of
//! reads, writes, appends and zone management operations, open/active resource accounting and
//! implicit close. Every backend (file-emulated, host zoned device) drives this one model.
//!
//! Writes and zone operations are split in two so a backend can do its I/O in between:
//! `prepare_*` validates and returns a plan without changing anything, the backend performs the
//! I/O the plan describes, then `commit_*` applies it. If the I/O fails the caller drops the plan
//! and the state is unchanged. A plan is only valid for the state it was prepared against: any
//! commit or fault injection in between makes `commit_*` refuse it.
//!
//! Each zone's write pointer is kept as the end of its valid data, also for FULL zones (a FINISH
//! leaves it where it was), so reads above it return zeros. The reported [`Zone`] view follows
//! what Linux expects instead (FULL and conventional zones report start + len).
//!
//! Implicit close policy: when a write, append, OPEN or FINISH needs an open resource and the
//! open limit is reached, the implicitly-open zone that became implicitly open the longest ago
//! is closed (FIFO order). If there is none, the request fails with OPEN_RESOURCE.
//!
//! Reads: past the end of the disk (IOERR); sector or length not whole logical blocks (IOERR);
//! crossing a zone boundary unless all zones touched are conventional (INVALID_CMD); touching an
//! OFFLINE zone (INVALID_CMD). Above a write pointer they read zeros.
//!
//! Check order of a write (first failing check wins): past the end of the disk (IOERR); to a
//! conventional zone, sector or length not whole logical blocks (IOERR; in a sequential zone the
//! write granularity, at least a block, catches it below); zone READ_ONLY/OFFLINE/FULL
//! (INVALID_CMD); crossing into another zone, unless all zones touched are
//! conventional (INVALID_CMD); for sequential zones: sector != wp or length not a multiple of the
//! write granularity (UNALIGNED_WP); past the zone capacity (INVALID_CMD); resources
//! (ACTIVE_RESOURCE before OPEN_RESOURCE). A zero-length write in range is a no-op success.
//!
//! Appends: sector not a zone's first sector, or past the end (INVALID_CMD); conventional zone
//! (INVALID_CMD); READ_ONLY/OFFLINE/FULL (INVALID_CMD); longer than max_append_sectors
//! (INVALID_CMD; a geometry with 0 is refused, so UNSUPP never arises); then as a write at wp.
//!
//! Zone operations (sector must be a zone's first sector, else INVALID_CMD; conventional,
//! READ_ONLY and OFFLINE zones: INVALID_CMD), following null_blk:
//!
//! | op | EMPTY | IMPLICIT_OPEN | EXPLICIT_OPEN | CLOSED | FULL |
//! |---|---|---|---|---|---|
//! | OPEN | EXPLICIT_OPEN (active+open) | EXPLICIT_OPEN | ok, no change | EXPLICIT_OPEN (open) | INVALID_CMD |
//! | CLOSE | INVALID_CMD | CLOSED / EMPTY if wp == start | CLOSED / EMPTY if wp == start | ok, no change | INVALID_CMD |
//! | FINISH | FULL (active+open) | FULL | FULL | FULL (open) | ok, no change |
//! | RESET | ok, no change | EMPTY | EMPTY | EMPTY | EMPTY |
//!
//! "(active+open)" and "(open)" are the resource checks made first, which may implicitly close
//! another zone. RESET_ALL resets every open, closed and full sequential zone. A REPORT from a
//! sector past the end is INVALID_CMD. UNSUPP is left to the device for unknown request types.

use std::collections::VecDeque;

use super::geometry::ZonedGeometry;
use super::wire::status;

/// Zone type, with the virtio/Linux numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ZoneType {
    Conventional = 1,
    SequentialWriteRequired = 2,
}

/// Zone condition, with the virtio/Linux numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ZoneCondition {
    NotWritePointer = 0,
    Empty = 1,
    ImplicitOpen = 2,
    ExplicitOpen = 3,
    Closed = 4,
    ReadOnly = 13,
    Full = 14,
    Offline = 15,
}

impl ZoneCondition {
    /// The condition with spec number `value`.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0 => ZoneCondition::NotWritePointer,
            1 => ZoneCondition::Empty,
            2 => ZoneCondition::ImplicitOpen,
            3 => ZoneCondition::ExplicitOpen,
            4 => ZoneCondition::Closed,
            13 => ZoneCondition::ReadOnly,
            14 => ZoneCondition::Full,
            15 => ZoneCondition::Offline,
            _ => return None,
        })
    }

    /// Holds an open resource (and an active one).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            ZoneCondition::ImplicitOpen | ZoneCondition::ExplicitOpen
        )
    }

    /// Holds an active resource.
    pub fn is_active(self) -> bool {
        self.is_open() || self == ZoneCondition::Closed
    }
}

/// One zone as reported to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zone {
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub len: u64,
    /// Writable sectors.
    pub capacity: u64,
    /// Write pointer as reported: start + len for FULL and conventional zones, u64::MAX for
    /// READ_ONLY and OFFLINE zones (what Linux substitutes), the write pointer otherwise.
    pub wp: u64,
    pub zone_type: ZoneType,
    pub cond: ZoneCondition,
}

/// A failed request, mapping to a virtio-blk status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    /// Out of range, bad length, or storage failure.
    #[error("I/O error")]
    Io,
    /// The request is invalid for the zone's type or condition.
    #[error("invalid zone command")]
    InvalidCommand,
    /// A write not at the write pointer or not aligned to the write granularity.
    #[error("unaligned write pointer")]
    UnalignedWritePointer,
    /// The open zone limit would be exceeded.
    #[error("too many open zones")]
    OpenResource,
    /// The active zone limit would be exceeded.
    #[error("too many active zones")]
    ActiveResource,
}

impl ZoneError {
    /// The virtio-blk status byte for this error.
    pub fn status(&self) -> u8 {
        match self {
            ZoneError::Io => status::IOERR,
            ZoneError::InvalidCommand => status::ZONE_INVALID_CMD,
            ZoneError::UnalignedWritePointer => status::ZONE_UNALIGNED_WP,
            ZoneError::OpenResource => status::ZONE_OPEN_RESOURCE,
            ZoneError::ActiveResource => status::ZONE_ACTIVE_RESOURCE,
        }
    }
}

/// A zone management operation addressed to one zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneOp {
    Open,
    Close,
    Finish,
    Reset,
}

/// What a zone management plan does: one operation on one zone, or a reset of all zones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneOpKind {
    Single(ZoneOp),
    ResetAll,
}

/// A zone's new state inside a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneUpdate {
    /// Zone index.
    pub index: usize,
    /// First sector of the zone.
    pub start: u64,
    /// Condition before.
    pub old_cond: ZoneCondition,
    /// Condition after.
    pub cond: ZoneCondition,
    /// Internal write pointer (end of valid data) before.
    pub old_wp: u64,
    /// Internal write pointer (end of valid data) after.
    pub wp: u64,
}

/// A validated write or append, to be committed after its data is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritePlan {
    /// Where the data goes (the write pointer for an append).
    pub sector: u64,
    /// Length in sectors.
    pub nr_sectors: u64,
    /// The target zone becomes IMPLICIT_OPEN.
    pub implicitly_opens: bool,
    /// First sector of the zone implicitly closed to make room, if any.
    pub implicitly_closes: Option<u64>,
    zone: usize,
    victim: Option<usize>,
    /// The sequential zone's state once the write is committed; `None` when no zone state
    /// changes (a conventional zone, zero length).
    after: Option<ZoneEntry>,
    generation: u64,
}

impl WritePlan {
    /// The sequential zone whose write pointer the plan moves; `None` for a conventional zone
    /// or a zero-length write, which change no zone state.
    pub fn sequential_zone(&self) -> Option<usize> {
        self.after.map(|_| self.zone)
    }
}

/// A validated zone management operation, to be committed after the backend applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneOpPlan {
    pub kind: ZoneOpKind,
    /// Zones whose state changes, in order of application (an implicit close comes first).
    /// Empty for idempotent successes.
    pub updates: Vec<ZoneUpdate>,
    generation: u64,
}

/// One piece of a read: either backed by data or above the write pointer (read as zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadSegment {
    pub sector: u64,
    pub nr_sectors: u64,
    /// false: above the write pointer, the caller fills zeros without touching storage.
    pub has_data: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ZoneEntry {
    cond: ZoneCondition,
    /// End of valid data: start for EMPTY, start + len for conventional zones.
    wp: u64,
}

/// Why saved zone states cannot be restored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("expected {expected} zone states, got {got}")]
    Count { expected: u64, got: u64 },
    #[error("zone {index}: condition {cond:?} with write pointer {wp} is inconsistent")]
    Inconsistent {
        index: usize,
        cond: ZoneCondition,
        wp: u64,
    },
    #[error("{active} zones are active (open or closed), more than the device's max-active {max_active}")]
    TooManyActive { active: u32, max_active: u32 },
}

/// All zones of a disk with their conditions, write pointers and resource counts.
#[derive(Clone, Debug)]
pub struct ZoneSet {
    geometry: ZonedGeometry,
    entries: Vec<ZoneEntry>,
    nr_open: u32,
    nr_active: u32,
    /// Zones an injected READ_ONLY or OFFLINE condition took from an active one: they come
    /// back CLOSED in the next run, so their active resources stay taken in this one.
    nr_injected_active: u32,
    nr_implicit_open: u32,
    /// Implicitly-open zones in the order they became so; only kept when max_open != 0.
    implicit_open_fifo: VecDeque<usize>,
    generation: u64,
    changed: Vec<usize>,
    changed_mark: Vec<bool>,
}

impl ZoneSet {
    /// A fresh disk: conventional zones NOT_WP, sequential zones EMPTY.
    pub fn new(geometry: ZonedGeometry) -> Self {
        let n = geometry.nr_zones() as usize;
        let entries = (0..n).map(|i| Self::initial_entry(&geometry, i)).collect();
        ZoneSet {
            geometry,
            entries,
            nr_open: 0,
            nr_active: 0,
            nr_injected_active: 0,
            nr_implicit_open: 0,
            implicit_open_fifo: VecDeque::new(),
            generation: 0,
            changed: Vec::new(),
            changed_mark: vec![false; n],
        }
    }

    fn initial_entry(geometry: &ZonedGeometry, index: usize) -> ZoneEntry {
        let start = geometry.zone_start(index);
        if geometry.is_conventional(index) {
            ZoneEntry {
                cond: ZoneCondition::NotWritePointer,
                wp: start + geometry.zone_len(index),
            }
        } else {
            ZoneEntry {
                cond: ZoneCondition::Empty,
                wp: start,
            }
        }
    }

    /// Rebuilds zones from saved (condition, internal write pointer) pairs, as after a power
    /// loss: open zones come back CLOSED, or EMPTY when their write pointer is at the start.
    pub fn restore(
        geometry: ZonedGeometry,
        states: impl ExactSizeIterator<Item = (ZoneCondition, u64)>,
    ) -> Result<Self, RestoreError> {
        Self::load(geometry, states, true)
    }

    /// Builds zones from the states a live device reports (e.g. BLKREPORTZONE on a host zoned
    /// device): open zones stay open and hold resources; implicitly-open ones enter the
    /// implicit-close order by zone index.
    pub fn from_reported(
        geometry: ZonedGeometry,
        states: impl ExactSizeIterator<Item = (ZoneCondition, u64)>,
    ) -> Result<Self, RestoreError> {
        Self::load(geometry, states, false)
    }

    fn load(
        geometry: ZonedGeometry,
        states: impl ExactSizeIterator<Item = (ZoneCondition, u64)>,
        power_loss: bool,
    ) -> Result<Self, RestoreError> {
        let expected = geometry.nr_zones();
        if states.len() as u64 != expected {
            return Err(RestoreError::Count {
                expected,
                got: states.len() as u64,
            });
        }
        let mut set = ZoneSet::new(geometry);
        for (index, (cond, wp)) in states.enumerate() {
            let cond = Self::checked_state(&geometry, index, cond, wp, power_loss)?;
            // What storage holds is not a change to persist (and listing a million zones
            // would cost 8 bytes each for the rest of the run).
            set.apply_state(index, cond, wp);
        }
        // vmm never leaves more active zones than max-active (open zones count, and come back
        // closed), so only a crafted or damaged table has them; a live device keeps its own.
        let max_active = geometry.max_active;
        if power_loss && max_active != 0 && set.nr_active > max_active {
            return Err(RestoreError::TooManyActive {
                active: set.nr_active,
                max_active,
            });
        }
        debug_assert!(set.changed.is_empty());
        Ok(set)
    }

    /// Checks one zone's saved (condition, write pointer) against the geometry as [`restore`]
    /// does, and returns the condition it comes back with (an open zone comes back CLOSED, or
    /// EMPTY at its start). For a tool that lists every bad zone of a table, where `restore`
    /// stops at the first.
    ///
    /// [`restore`]: ZoneSet::restore
    pub fn restored_condition(
        geometry: &ZonedGeometry,
        index: usize,
        cond: ZoneCondition,
        wp: u64,
    ) -> Result<ZoneCondition, RestoreError> {
        Self::checked_state(geometry, index, cond, wp, true)
    }

    /// Validates a zone state against the geometry; returns the condition to use.
    fn checked_state(
        geometry: &ZonedGeometry,
        index: usize,
        cond: ZoneCondition,
        wp: u64,
        power_loss: bool,
    ) -> Result<ZoneCondition, RestoreError> {
        let start = geometry.zone_start(index);
        let cap_end = start + geometry.zone_capacity_of(index);
        let len_end = start + geometry.zone_len(index);
        let bad = || RestoreError::Inconsistent { index, cond, wp };
        if geometry.is_conventional(index) {
            return match cond {
                ZoneCondition::NotWritePointer
                | ZoneCondition::ReadOnly
                | ZoneCondition::Offline
                    if wp == len_end =>
                {
                    Ok(cond)
                }
                _ => Err(bad()),
            };
        }
        if wp < start || wp > cap_end {
            return Err(bad());
        }
        Ok(match cond {
            ZoneCondition::Empty if wp == start => cond,
            ZoneCondition::ExplicitOpen if wp < cap_end && !power_loss => cond,
            ZoneCondition::ImplicitOpen if start < wp && wp < cap_end && !power_loss => cond,
            ZoneCondition::ImplicitOpen | ZoneCondition::ExplicitOpen | ZoneCondition::Closed
                if wp < cap_end =>
            {
                if wp == start {
                    ZoneCondition::Empty
                } else {
                    ZoneCondition::Closed
                }
            }
            ZoneCondition::Full | ZoneCondition::ReadOnly | ZoneCondition::Offline => cond,
            _ => return Err(bad()),
        })
    }

    /// Replaces the state of zone `index` with what storage reports, e.g. after a failed write
    /// to a host zoned device, whose write pointer may then have moved. Any plan prepared
    /// before is invalidated.
    pub fn resync_zone(
        &mut self,
        index: usize,
        cond: ZoneCondition,
        wp: u64,
    ) -> Result<(), RestoreError> {
        if index >= self.entries.len() {
            return Err(RestoreError::Inconsistent { index, cond, wp });
        }
        let cond = Self::checked_state(&self.geometry, index, cond, wp, false)?;
        self.generation += 1;
        self.set_state(index, cond, wp);
        Ok(())
    }

    /// Undoes the write pointer move of a write to sequential zone `index` whose data storage
    /// failed; `before` is the zone's (condition, write pointer) when the write was reserved.
    /// Other requests may have changed the zone since, so it never takes back a resource it
    /// gave up: a zone closed meanwhile (say, implicitly, by another lane's write) stays
    /// closed, one the write filled becomes CLOSED only if an active resource is free (else it
    /// stays FULL), an open one keeps its condition unless the write had opened it implicitly
    /// (then it goes back to EMPTY or CLOSED). A zone
    /// reset or taken offline meanwhile is left alone. Any plan prepared before is invalidated.
    pub fn roll_back_write(&mut self, index: usize, before: (ZoneCondition, u64)) {
        let Some(&now) = self.entries.get(index) else {
            return;
        };
        let (before_cond, wp) = before;
        let start = self.geometry.zone_start(index);
        if self.geometry.is_conventional(index) || wp < start || wp > now.wp {
            return;
        }
        let closed = if wp == start {
            ZoneCondition::Empty
        } else {
            ZoneCondition::Closed
        };
        let cond = match now.cond {
            // Opened explicitly, or open already before the write: it keeps its resources.
            ZoneCondition::ExplicitOpen => now.cond,
            ZoneCondition::ImplicitOpen if before_cond.is_open() => now.cond,
            ZoneCondition::ImplicitOpen | ZoneCondition::Closed => closed,
            ZoneCondition::Full => {
                let g = &self.geometry;
                if closed == ZoneCondition::Closed
                    && g.max_active != 0
                    && self.nr_active + self.nr_injected_active >= g.max_active
                {
                    ZoneCondition::Full
                } else {
                    closed
                }
            }
            _ => return,
        };
        self.generation += 1;
        self.set_state(index, cond, wp);
    }

    /// The geometry.
    pub fn geometry(&self) -> &ZonedGeometry {
        &self.geometry
    }

    /// Number of zones.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true: a valid geometry has at least one zone.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Zones holding an open resource.
    pub fn open_zones(&self) -> u32 {
        self.nr_open
    }

    /// Zones holding an active resource (open or closed).
    pub fn active_zones(&self) -> u32 {
        self.nr_active
    }

    /// Implicitly-open zones.
    pub fn implicit_open_zones(&self) -> u32 {
        self.nr_implicit_open
    }

    /// Condition and internal write pointer (end of valid data) of zone `index`, as persisted
    /// by backends. Panics if `index` is out of range.
    pub fn saved_state(&self, index: usize) -> (ZoneCondition, u64) {
        let e = self.entries[index];
        (e.cond, e.wp)
    }

    /// The reported view of zone `index`, or None past the last zone.
    pub fn zone(&self, index: usize) -> Option<Zone> {
        let e = self.entries.get(index)?;
        let g = &self.geometry;
        let start = g.zone_start(index);
        let len = g.zone_len(index);
        let wp = match e.cond {
            ZoneCondition::NotWritePointer | ZoneCondition::Full => start + len,
            ZoneCondition::ReadOnly | ZoneCondition::Offline => u64::MAX,
            _ => e.wp,
        };
        Some(Zone {
            start,
            len,
            capacity: g.zone_capacity_of(index),
            wp,
            zone_type: if g.is_conventional(index) {
                ZoneType::Conventional
            } else {
                ZoneType::SequentialWriteRequired
            },
            cond: e.cond,
        })
    }

    /// Up to `max_zones` zones, starting with the one containing `from_sector`. Lazy: the cost
    /// is linear in the number of zones taken. A sector past the end is INVALID_CMD.
    pub fn report(
        &self,
        from_sector: u64,
        max_zones: usize,
    ) -> Result<impl Iterator<Item = Zone> + '_, ZoneError> {
        let first = self
            .geometry
            .zone_index(from_sector)
            .ok_or(ZoneError::InvalidCommand)?;
        let end = first.saturating_add(max_zones).min(self.entries.len());
        Ok((first..end).filter_map(move |i| self.zone(i)))
    }

    /// Zone indices whose state changed since the last [`ZoneSet::clear_changed`], each once.
    pub fn changed_zones(&self) -> &[usize] {
        &self.changed
    }

    /// Whether zone `index` is among [`ZoneSet::changed_zones`].
    pub fn is_changed(&self, index: usize) -> bool {
        self.changed_mark.get(index).copied().unwrap_or(false)
    }

    /// Forgets the changed zones (after a backend persisted them).
    pub fn clear_changed(&mut self) {
        for &i in &self.changed {
            self.changed_mark[i] = false;
        }
        self.changed.clear();
    }

    fn mark_changed(&mut self, index: usize) {
        if !self.changed_mark[index] {
            self.changed_mark[index] = true;
            self.changed.push(index);
        }
    }

    /// Sets a zone's state, keeping resource counts, the implicit-open FIFO and the changed list.
    fn set_state(&mut self, index: usize, cond: ZoneCondition, wp: u64) {
        self.mark_changed(index);
        self.apply_state(index, cond, wp);
    }

    /// `set_state` without listing the zone as changed: for states read back from storage.
    fn apply_state(&mut self, index: usize, cond: ZoneCondition, wp: u64) {
        let old = self.entries[index].cond;
        if old == cond {
            // Same condition: counts and the implicit-open age stay as they are.
            self.entries[index].wp = wp;
            return;
        }
        if old.is_open() {
            self.nr_open -= 1;
        }
        if old.is_active() {
            self.nr_active -= 1;
        }
        if old == ZoneCondition::ImplicitOpen {
            self.nr_implicit_open -= 1;
            if self.geometry.max_open != 0 {
                if let Some(pos) = self.implicit_open_fifo.iter().position(|&z| z == index) {
                    self.implicit_open_fifo.remove(pos);
                }
            }
        }
        if cond.is_open() {
            self.nr_open += 1;
        }
        if cond.is_active() {
            self.nr_active += 1;
        }
        if cond == ZoneCondition::ImplicitOpen {
            self.nr_implicit_open += 1;
            if self.geometry.max_open != 0 {
                self.implicit_open_fifo.push_back(index);
            }
        }
        self.entries[index] = ZoneEntry { cond, wp };
    }

    /// Resource check for a zone about to become open (or to pass through open). Returns the
    /// zone to close implicitly, if one must be.
    fn check_resources(
        &self,
        needs_active: bool,
        needs_open: bool,
    ) -> Result<Option<usize>, ZoneError> {
        let g = &self.geometry;
        let active = self.nr_active + self.nr_injected_active;
        if needs_active && g.max_active != 0 && active >= g.max_active {
            return Err(ZoneError::ActiveResource);
        }
        if needs_open && g.max_open != 0 && self.nr_open >= g.max_open {
            return match self.implicit_open_fifo.front() {
                Some(&victim) => Ok(Some(victim)),
                None => Err(ZoneError::OpenResource),
            };
        }
        Ok(None)
    }

    /// Resources needed for a zone in `cond` to become open: (active, open).
    fn needs_for_open(cond: ZoneCondition) -> (bool, bool) {
        match cond {
            ZoneCondition::Empty => (true, true),
            ZoneCondition::Closed => (false, true),
            _ => (false, false),
        }
    }

    /// Splits a read into data-backed parts and parts above the write pointer. Past the end of
    /// the disk is IOERR; crossing a zone boundary is INVALID_CMD unless every zone touched is
    /// conventional (virtio 1.3 5.2.6.3; Linux splits reads at zone boundaries anyway);
    /// touching an OFFLINE zone is INVALID_CMD.
    pub fn check_read(&self, sector: u64, nr_sectors: u64) -> Result<Vec<ReadSegment>, ZoneError> {
        let end = sector.checked_add(nr_sectors).ok_or(ZoneError::Io)?;
        if end > self.geometry.capacity {
            return Err(ZoneError::Io);
        }
        // Only a device with 512-byte blocks could serve part of a block.
        if !self.geometry.is_block_aligned(sector, nr_sectors) {
            return Err(ZoneError::Io);
        }
        if nr_sectors > 0 {
            let first = self.geometry.zone_index(sector).ok_or(ZoneError::Io)?;
            let last = self.geometry.zone_index(end - 1).ok_or(ZoneError::Io)?;
            // Conventional zones come first, so the last zone touched decides.
            if first != last && !self.geometry.is_conventional(last) {
                return Err(ZoneError::InvalidCommand);
            }
        }
        let mut segments: Vec<ReadSegment> = Vec::new();
        let mut push = |sector: u64, nr_sectors: u64, has_data: bool| {
            if nr_sectors == 0 {
                return;
            }
            if let Some(last) = segments.last_mut() {
                if last.has_data == has_data && last.sector + last.nr_sectors == sector {
                    last.nr_sectors += nr_sectors;
                    return;
                }
            }
            segments.push(ReadSegment {
                sector,
                nr_sectors,
                has_data,
            });
        };
        let mut pos = sector;
        while pos < end {
            let index = self.geometry.zone_index(pos).ok_or(ZoneError::Io)?;
            let zone_end = self.geometry.zone_start(index) + self.geometry.zone_len(index);
            let piece_end = end.min(zone_end);
            let e = self.entries[index];
            if e.cond == ZoneCondition::Offline {
                return Err(ZoneError::InvalidCommand);
            }
            let data_end = e.wp.clamp(pos, piece_end);
            push(pos, data_end - pos, true);
            push(data_end, piece_end - data_end, false);
            pos = piece_end;
        }
        Ok(segments)
    }

    /// Validates a write of `nr_sectors` at `sector`. Nothing changes until
    /// [`ZoneSet::commit_write`].
    pub fn prepare_write(&self, sector: u64, nr_sectors: u64) -> Result<WritePlan, ZoneError> {
        let end = sector.checked_add(nr_sectors).ok_or(ZoneError::Io)?;
        if end > self.geometry.capacity || (nr_sectors > 0 && sector >= self.geometry.capacity) {
            return Err(ZoneError::Io);
        }
        let noop = WritePlan {
            sector,
            nr_sectors: 0,
            implicitly_opens: false,
            implicitly_closes: None,
            zone: 0,
            victim: None,
            after: None,
            generation: self.generation,
        };
        if nr_sectors == 0 {
            return Ok(noop);
        }
        let index = self.geometry.zone_index(sector).ok_or(ZoneError::Io)?;
        let last = self.geometry.zone_index(end - 1).ok_or(ZoneError::Io)?;
        if self.geometry.is_conventional(index)
            && !self.geometry.is_block_aligned(sector, nr_sectors)
        {
            return Err(ZoneError::Io);
        }
        for i in index..=last {
            if matches!(
                self.entries[i].cond,
                ZoneCondition::ReadOnly | ZoneCondition::Offline | ZoneCondition::Full
            ) {
                return Err(ZoneError::InvalidCommand);
            }
        }
        if self.geometry.is_conventional(index) {
            if last != index && !self.geometry.is_conventional(last) {
                return Err(ZoneError::InvalidCommand);
            }
            return Ok(WritePlan {
                nr_sectors,
                zone: index,
                ..noop
            });
        }
        if last != index {
            return Err(ZoneError::InvalidCommand);
        }
        self.plan_sequential(index, sector, nr_sectors)
    }

    /// Checks shared by writes and appends to sequential zone `index` at `sector`.
    fn plan_sequential(
        &self,
        index: usize,
        sector: u64,
        nr_sectors: u64,
    ) -> Result<WritePlan, ZoneError> {
        let e = self.entries[index];
        let gran = self.geometry.granularity_sectors();
        if sector != e.wp || nr_sectors & (gran - 1) != 0 {
            return Err(ZoneError::UnalignedWritePointer);
        }
        let cap_end = self.geometry.zone_start(index) + self.geometry.zone_capacity_of(index);
        if e.wp + nr_sectors > cap_end {
            return Err(ZoneError::InvalidCommand);
        }
        let (needs_active, needs_open) = Self::needs_for_open(e.cond);
        let victim = self.check_resources(needs_active, needs_open)?;
        // Computed now, against the state the plan is valid for: the implicit close at commit
        // touches another zone (an implicitly-open one, while this one is EMPTY or CLOSED).
        let wp = e.wp + nr_sectors;
        let cond = if wp >= cap_end {
            ZoneCondition::Full
        } else if needs_open {
            ZoneCondition::ImplicitOpen
        } else {
            e.cond
        };
        Ok(WritePlan {
            sector,
            nr_sectors,
            implicitly_opens: needs_open,
            implicitly_closes: victim.map(|v| self.geometry.zone_start(v)),
            zone: index,
            victim,
            after: Some(ZoneEntry { cond, wp }),
            generation: self.generation,
        })
    }

    /// Validates a ZONE_APPEND of `nr_sectors` to the zone starting at `zone_start`; the plan's
    /// `sector` is where the data lands.
    pub fn prepare_append(&self, zone_start: u64, nr_sectors: u64) -> Result<WritePlan, ZoneError> {
        let index = self.zone_start_index(zone_start)?;
        if self.geometry.is_conventional(index) {
            return Err(ZoneError::InvalidCommand);
        }
        let e = self.entries[index];
        if matches!(
            e.cond,
            ZoneCondition::ReadOnly | ZoneCondition::Offline | ZoneCondition::Full
        ) {
            return Err(ZoneError::InvalidCommand);
        }
        if nr_sectors > u64::from(self.geometry.max_append_sectors) {
            return Err(ZoneError::InvalidCommand);
        }
        if nr_sectors == 0 {
            return Ok(WritePlan {
                sector: e.wp,
                nr_sectors: 0,
                implicitly_opens: false,
                implicitly_closes: None,
                zone: index,
                victim: None,
                after: None,
                generation: self.generation,
            });
        }
        self.plan_sequential(index, e.wp, nr_sectors)
    }

    /// Applies a write or append plan after its data was written.
    pub fn commit_write(&mut self, plan: WritePlan) -> Result<(), ZoneError> {
        if plan.generation != self.generation {
            return Err(ZoneError::Io);
        }
        let Some(after) = plan.after else {
            return Ok(());
        };
        self.generation += 1;
        if let Some(victim) = plan.victim {
            self.implicit_close(victim);
        }
        self.set_state(plan.zone, after.cond, after.wp);
        Ok(())
    }

    fn implicit_close(&mut self, index: usize) {
        let (cond, wp) = self.closed_state(index);
        self.set_state(index, cond, wp);
    }

    /// State of zone `index` after a CLOSE.
    fn closed_state(&self, index: usize) -> (ZoneCondition, u64) {
        let wp = self.entries[index].wp;
        if wp == self.geometry.zone_start(index) {
            (ZoneCondition::Empty, wp)
        } else {
            (ZoneCondition::Closed, wp)
        }
    }

    /// Index of the zone whose first sector is `sector`, else INVALID_CMD.
    fn zone_start_index(&self, sector: u64) -> Result<usize, ZoneError> {
        let index = self
            .geometry
            .zone_index(sector)
            .ok_or(ZoneError::InvalidCommand)?;
        if self.geometry.zone_start(index) != sector {
            return Err(ZoneError::InvalidCommand);
        }
        Ok(index)
    }

    fn update(&self, index: usize, cond: ZoneCondition, wp: u64) -> ZoneUpdate {
        ZoneUpdate {
            index,
            start: self.geometry.zone_start(index),
            old_cond: self.entries[index].cond,
            cond,
            old_wp: self.entries[index].wp,
            wp,
        }
    }

    /// Validates OPEN/CLOSE/FINISH/RESET of the zone starting at `zone_start`.
    pub fn prepare_zone_op(&self, op: ZoneOp, zone_start: u64) -> Result<ZoneOpPlan, ZoneError> {
        let index = self.zone_start_index(zone_start)?;
        if self.geometry.is_conventional(index) {
            return Err(ZoneError::InvalidCommand);
        }
        let e = self.entries[index];
        if matches!(e.cond, ZoneCondition::ReadOnly | ZoneCondition::Offline) {
            return Err(ZoneError::InvalidCommand);
        }
        let mut updates = Vec::new();
        let start = zone_start;
        use ZoneCondition::*;
        match op {
            ZoneOp::Open => match e.cond {
                ExplicitOpen => {}
                Full => return Err(ZoneError::InvalidCommand),
                _ => {
                    let (needs_active, needs_open) = Self::needs_for_open(e.cond);
                    if let Some(victim) = self.check_resources(needs_active, needs_open)? {
                        let (c, wp) = self.closed_state(victim);
                        updates.push(self.update(victim, c, wp));
                    }
                    updates.push(self.update(index, ExplicitOpen, e.wp));
                }
            },
            ZoneOp::Close => match e.cond {
                Closed => {}
                Empty | Full => return Err(ZoneError::InvalidCommand),
                _ => {
                    let (c, wp) = self.closed_state(index);
                    updates.push(self.update(index, c, wp));
                }
            },
            ZoneOp::Finish => match e.cond {
                Full => {}
                _ => {
                    let (needs_active, needs_open) = Self::needs_for_open(e.cond);
                    if let Some(victim) = self.check_resources(needs_active, needs_open)? {
                        let (c, wp) = self.closed_state(victim);
                        updates.push(self.update(victim, c, wp));
                    }
                    updates.push(self.update(index, Full, e.wp));
                }
            },
            ZoneOp::Reset => match e.cond {
                Empty => {}
                _ => updates.push(self.update(index, Empty, start)),
            },
        }
        Ok(ZoneOpPlan {
            kind: ZoneOpKind::Single(op),
            updates,
            generation: self.generation,
        })
    }

    /// Plans RESET_ALL: every open, closed and full sequential zone becomes EMPTY.
    pub fn prepare_reset_all(&self) -> ZoneOpPlan {
        let updates = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.cond.is_active() || e.cond == ZoneCondition::Full)
            .map(|(i, _)| self.update(i, ZoneCondition::Empty, self.geometry.zone_start(i)))
            .collect();
        ZoneOpPlan {
            kind: ZoneOpKind::ResetAll,
            updates,
            generation: self.generation,
        }
    }

    /// Applies a zone management plan after the backend applied it to storage.
    pub fn commit_zone_op(&mut self, plan: ZoneOpPlan) -> Result<(), ZoneError> {
        if plan.generation != self.generation {
            return Err(ZoneError::Io);
        }
        if plan.updates.is_empty() {
            return Ok(());
        }
        self.generation += 1;
        for u in plan.updates {
            self.set_state(u.index, u.cond, u.wp);
        }
        Ok(())
    }

    /// Fault injection: makes the zone starting at `zone_start` READ_ONLY or OFFLINE, releasing
    /// its resources. Other conditions are INVALID_CMD.
    pub fn set_zone_condition(
        &mut self,
        zone_start: u64,
        cond: ZoneCondition,
    ) -> Result<(), ZoneError> {
        if !matches!(cond, ZoneCondition::ReadOnly | ZoneCondition::Offline) {
            return Err(ZoneError::InvalidCommand);
        }
        let index = self.zone_start_index(zone_start)?;
        self.generation += 1;
        let wp = self.entries[index].wp;
        self.set_state(index, cond, wp);
        Ok(())
    }

    /// Fault injection for one run: like `set_zone_condition`, but the zone stays off the
    /// changed list, so a backend that persists changes never stores the injected condition. A
    /// READ_ONLY or OFFLINE zone accepts no writes or zone operations, so it is never changed
    /// (and listed) again. A zone that was active keeps its active resource for the run: it is
    /// active again in the next one, which must not find more than max_active such zones.
    /// Conventional zones are refused.
    pub fn inject_condition(
        &mut self,
        zone_start: u64,
        cond: ZoneCondition,
    ) -> Result<(), ZoneError> {
        let index = self.zone_start_index(zone_start)?;
        if self.entries[index].cond == ZoneCondition::NotWritePointer {
            return Err(ZoneError::InvalidCommand);
        }
        let already_changed = self.changed_mark[index];
        let was_active = self.entries[index].cond.is_active();
        self.set_zone_condition(zone_start, cond)?;
        self.nr_injected_active += u32::from(was_active);
        if !already_changed {
            self.changed_mark[index] = false;
            self.changed.retain(|&i| i != index);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
