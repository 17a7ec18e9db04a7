//! The zoned layer of the virtio-blk device: a `RequestHandler` that offers VIRTIO_BLK_F_ZONED
//! (host-managed), fills the zoned config fields, and serves IN/OUT/FLUSH and every ZONE_* request
//! through a `ZonedDisk`, so that every access obeys the zone state machine.

use std::borrow::Cow;
use std::io;
use std::sync::Mutex;

use log::warn;
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::data_path::{AlignedBuffer, DataPath};
use super::disk::{Reservation, ZoneStorage, ZonedDisk};
use super::geometry::SECTOR_SIZE;
use super::geometry::{FailWrite, FaultInjection};
use super::state::{ZoneCondition, ZoneError};
use super::wire::{self, status};
use crate::block::data::GuestBuffers;
use crate::block::device::CONFIG_SIZE;
use crate::block::{
    BlockBackend, Completion, Request, RequestHandler, RequestType, Segment, MAX_REQUEST_DATA_BYTES,
};

/// Bytes of the ZONE_APPEND completion that carry the sector where the data landed.
const APPEND_SECTOR_BYTES: usize = 8;

/// Stands in for the plain block backend of a zoned disk: it gives the device its capacity; all
/// I/O goes through the zoned handler, which intercepts every request that would touch storage.
#[derive(Debug)]
pub struct ZonedCapacity {
    bytes: u64,
}

impl ZonedCapacity {
    pub fn new(bytes: u64) -> Self {
        Self { bytes }
    }
}

fn bypassed() -> io::Error {
    io::Error::other("zoned disk storage is reached only through the zoned handler")
}

impl BlockBackend for ZonedCapacity {
    fn size(&self) -> u64 {
        self.bytes
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&mut self, _offset: u64, _buf: &mut [u8]) -> io::Result<()> {
        Err(bypassed())
    }
    fn write_at(&mut self, _offset: u64, _buf: &[u8]) -> io::Result<()> {
        Err(bypassed())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How many requests of each kind a zoned disk served, for the shutdown log line (and for tests
/// that must prove, say, that a file system really used ZONE_APPEND).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub reads: u64,
    pub writes: u64,
    pub appends: u64,
    pub reports: u64,
    pub zone_management: u64,
    pub flushes: u64,
}

/// Serves a virtio-blk request queue for a host-managed zoned disk.
pub struct ZonedHandler<S: ZoneStorage> {
    disk: ZonedDisk<S>,
    counts: RequestCounts,
    /// An injected write failure, and how many writes to its zone were seen so far.
    fail_write: Option<FailWrite>,
    writes_to_failing_zone: u64,
    /// The run of lane requests (request index, zone) `handle_batch` is collecting, kept
    /// between batches so that collecting it allocates nothing.
    run: Vec<(usize, usize)>,
    /// One O_DIRECT bounce buffer per lane, kept between batches: grown to the largest
    /// request a lane has served, never freed per request. (Lane threads that allocated and
    /// freed a large buffer per request made glibc trim their malloc arena, which opens
    /// /proc/sys/vm/overcommit_memory under the seccomp filter.)
    bounces: Vec<AlignedBuffer>,
}

impl<S: ZoneStorage> ZonedHandler<S> {
    pub fn new(disk: ZonedDisk<S>) -> Self {
        Self {
            disk,
            counts: RequestCounts::default(),
            fail_write: None,
            writes_to_failing_zone: 0,
            run: Vec::new(),
            bounces: (0..MAX_LANES).map(|_| AlignedBuffer::empty()).collect(),
        }
    }

    /// A handler whose disk shows the injected `faults` for this run (nothing is stored).
    pub fn with_faults(mut disk: ZonedDisk<S>, faults: &FaultInjection) -> Result<Self, String> {
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
        let mut handler = Self::new(disk);
        handler.fail_write = faults.fail_write;
        Ok(handler)
    }

    /// The status to fail this write (or append) at `sector` with, if it is the injected one.
    fn injected_write_failure(&mut self, sector: u64) -> Option<u8> {
        let fail = self.fail_write?;
        if self.disk.geometry().zone_index(sector) != Some(fail.zone as usize) {
            return None;
        }
        self.writes_to_failing_zone += 1;
        (self.writes_to_failing_zone == fail.nth).then_some(fail.status)
    }

    pub fn counts(&self) -> RequestCounts {
        self.counts
    }

    /// The capacity backend the block device needs beside this handler.
    pub fn capacity_backend(&self) -> ZonedCapacity {
        ZonedCapacity::new(self.disk.geometry().capacity * crate::block::SECTOR_SIZE)
    }

    pub fn disk(&self) -> &ZonedDisk<S> {
        &self.disk
    }

    pub fn disk_mut(&mut self) -> &mut ZonedDisk<S> {
        &mut self.disk
    }
}

fn completion<T>(result: &Result<T, ZoneError>) -> Completion {
    Completion::with_status(wire::status_of(result))
}

/// Copies the device-readable data of `request` out of guest memory in one piece, so that a
/// write or append is one zone operation that either happens whole or not at all.
fn gather(memory: &GuestMemoryMmap, request: &Request) -> Option<Vec<u8>> {
    let len = usize::try_from(request.readable_len()).ok()?;
    if len as u64 > MAX_REQUEST_DATA_BYTES {
        return None;
    }
    let mut data = vec![0u8; len];
    let mut at = 0;
    for segment in &request.readable {
        let end = at + segment.len as usize;
        memory
            .read_slice(data.get_mut(at..end)?, segment.addr)
            .ok()?;
        at = end;
    }
    Some(data)
}

/// Writes `bytes` into the request's device-writable segments; false if guest memory refused.
fn scatter(memory: &GuestMemoryMmap, request: &Request, bytes: &[u8]) -> bool {
    crate::block::data::bytes_to_guest(memory, &request.writable, bytes).is_ok()
}

/// How a data request reaches the disk: directly (copying through buffers), or through a
/// lane of a batch (straight between guest memory and storage).
trait DiskAccess {
    /// IN: `len` bytes at the request's sector into its device-writable segments.
    fn read(
        &mut self,
        memory: &GuestMemoryMmap,
        request: &Request,
        len: u64,
    ) -> Result<(), ZoneError>;
    /// OUT: the request's device-readable data at its sector.
    fn write(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Result<(), ZoneError>;
    /// ZONE_APPEND: the data to the zone starting at the request's sector; returns where it
    /// landed.
    fn append(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Result<u64, ZoneError>;
}

impl<S: ZoneStorage> DiskAccess for ZonedDisk<S> {
    fn read(
        &mut self,
        memory: &GuestMemoryMmap,
        request: &Request,
        len: u64,
    ) -> Result<(), ZoneError> {
        let mut data = vec![0u8; len as usize];
        ZonedDisk::read(self, request.sector, &mut data)?;
        scatter(memory, request, &data)
            .then_some(())
            .ok_or(ZoneError::Io)
    }
    fn write(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Result<(), ZoneError> {
        let data = gather(memory, request).ok_or(ZoneError::Io)?;
        ZonedDisk::write(self, request.sector, &data)
    }
    fn append(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Result<u64, ZoneError> {
        let data = gather(memory, request).ok_or(ZoneError::Io)?;
        ZonedDisk::append(self, request.sector, &data)
    }
}

/// A lane of a batch: it takes the zone state only to check and commit; data moves through the
/// storage's `DataPath`, straight between guest memory and storage, without the zone state and
/// (for a parallel run) beside the other lanes.
struct Lane<'a, 'b, S> {
    disk: LaneDisk<'a, S>,
    data: &'a DataPath,
    /// The lane's O_DIRECT bounce buffer.
    bounce: &'b mut AlignedBuffer,
}

/// How a lane reaches the zone state.
enum LaneDisk<'a, S> {
    /// The only lane of its run, on the serving thread: no lock needed.
    Alone(&'a mut ZonedDisk<S>),
    /// One of the lanes of a parallel run, which share the zone state behind a lock.
    Shared(&'a Mutex<&'a mut ZonedDisk<S>>),
}

impl<S> Lane<'_, '_, S> {
    /// Runs `f` on the zone state, holding the lock for its duration if the state is shared.
    fn with_disk<R>(&mut self, f: impl FnOnce(&mut ZonedDisk<S>) -> R) -> R {
        match &mut self.disk {
            LaneDisk::Alone(disk) => f(disk),
            // A panicking lane leaves no half-made state change (the lock is held only around
            // whole state-machine calls), so a poisoned lock is still consistent.
            LaneDisk::Shared(shared) => f(&mut shared
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())),
        }
    }
}

/// The part `[from, to)` (in bytes) of the concatenation of `segments`.
fn sub_segments(segments: &[Segment], from: u64, to: u64) -> Vec<Segment> {
    let mut parts = Vec::new();
    let mut start = 0u64;
    for segment in segments {
        let end = start + u64::from(segment.len);
        let (lo, hi) = (from.max(start), to.min(end));
        if lo < hi {
            parts.push(Segment {
                addr: segment.addr.unchecked_add(lo - start),
                len: (hi - lo) as u32,
            });
        }
        start = end;
    }
    parts
}

/// Zeros the guest's `segments`.
fn zero_fill(memory: &GuestMemoryMmap, segments: &[Segment]) -> Result<(), ZoneError> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    for segment in segments {
        let mut done = 0u64;
        while done < u64::from(segment.len) {
            let count = (u64::from(segment.len) - done).min(ZEROS.len() as u64);
            memory
                .write_slice(&ZEROS[..count as usize], segment.addr.unchecked_add(done))
                .map_err(|_| ZoneError::Io)?;
            done += count;
        }
    }
    Ok(())
}

impl<S: ZoneStorage> DiskAccess for Lane<'_, '_, S> {
    fn read(
        &mut self,
        memory: &GuestMemoryMmap,
        request: &Request,
        len: u64,
    ) -> Result<(), ZoneError> {
        let sector = request.sector;
        let nr_sectors = sectors_of(len)?;
        let parts = self.with_disk(|disk| disk.check_read(sector, nr_sectors))?;
        for part in parts {
            let from = (part.sector - sector) * SECTOR_SIZE;
            let to = from + part.nr_sectors * SECTOR_SIZE;
            // Usually one part with data covers the whole request.
            let target = if from == 0 && to == len {
                Cow::Borrowed(request.writable.as_slice())
            } else {
                Cow::Owned(sub_segments(&request.writable, from, to))
            };
            if part.has_data {
                let buffers = GuestBuffers::new(memory, &target).map_err(|_| ZoneError::Io)?;
                self.data
                    .read_into_guest(part.sector, &buffers, self.bounce)
                    .map_err(|_| ZoneError::Io)?;
            } else {
                zero_fill(memory, &target)?;
            }
        }
        Ok(())
    }

    fn write(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Result<(), ZoneError> {
        let buffers = self.buffers(memory, request)?;
        let nr_sectors = sectors_of(buffers.len() as u64)?;
        let reservation = self.with_disk(|disk| disk.reserve_write(request.sector, nr_sectors))?;
        self.store(reservation, &buffers).map(|_| ())
    }

    fn append(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Result<u64, ZoneError> {
        let buffers = self.buffers(memory, request)?;
        let nr_sectors = sectors_of(buffers.len() as u64)?;
        let reservation = self.with_disk(|disk| disk.reserve_append(request.sector, nr_sectors))?;
        self.store(reservation, &buffers)
    }
}

impl<S: ZoneStorage> Lane<'_, '_, S> {
    /// The request's data, resolved in guest memory before the zone state is touched, so a
    /// bad address fails the request whole.
    fn buffers<'m>(
        &self,
        memory: &'m GuestMemoryMmap,
        request: &'m Request,
    ) -> Result<GuestBuffers<'m>, ZoneError> {
        if request.readable_len() > MAX_REQUEST_DATA_BYTES {
            return Err(ZoneError::Io);
        }
        GuestBuffers::new(memory, &request.readable).map_err(|_| ZoneError::Io)
    }

    /// Moves the reserved write's data and settles the reservation: returns where the data
    /// landed. Only a failure needs the zone state again.
    fn store(
        &mut self,
        reservation: Reservation,
        buffers: &GuestBuffers<'_>,
    ) -> Result<u64, ZoneError> {
        if reservation.nr_sectors == 0 {
            return Ok(reservation.landed());
        }
        match self
            .data
            .write_from_guest(reservation.sector, buffers, self.bounce)
        {
            Ok(()) => Ok(reservation.landed()),
            Err(error) => self.with_disk(|disk| disk.complete(reservation, Err(error))),
        }
    }
}

fn sectors_of(len: u64) -> Result<u64, ZoneError> {
    if len % SECTOR_SIZE != 0 {
        return Err(ZoneError::Io);
    }
    Ok(len / SECTOR_SIZE)
}

fn read(disk: &mut impl DiskAccess, memory: &GuestMemoryMmap, request: &Request) -> Completion {
    if !request.data_fits_type() {
        return Completion::with_status(status::IOERR);
    }
    let len = request.writable_len();
    match disk.read(memory, request, len) {
        Ok(()) => Completion::ok(len as u32),
        Err(error) => Completion::with_status(error.status()),
    }
}

fn write(disk: &mut impl DiskAccess, memory: &GuestMemoryMmap, request: &Request) -> Completion {
    if !request.data_fits_type() {
        return Completion::with_status(status::IOERR);
    }
    completion(&disk.write(memory, request))
}

fn append(disk: &mut impl DiskAccess, memory: &GuestMemoryMmap, request: &Request) -> Completion {
    // The device-writable part before the status byte receives the landed sector.
    if !request.data_fits_type() {
        return Completion::with_status(status::IOERR);
    }
    match disk.append(memory, request) {
        Ok(sector) if scatter(memory, request, &sector.to_le_bytes()) => {
            Completion::ok(APPEND_SECTOR_BYTES as u32)
        }
        Ok(_) => Completion::with_status(status::IOERR),
        Err(error) => Completion::with_status(error.status()),
    }
}

/// Serves a data request (IN, OUT, ZONE_APPEND) through `disk`.
fn serve_data(
    disk: &mut impl DiskAccess,
    memory: &GuestMemoryMmap,
    request: &Request,
) -> Completion {
    match request.kind {
        RequestType::In => read(disk, memory, request),
        RequestType::Out => write(disk, memory, request),
        _ => append(disk, memory, request),
    }
}

/// The data bytes `request` moves (in either direction).
fn data_bytes(request: &Request) -> u64 {
    request.readable_len().max(request.writable_len())
}

/// The data bytes of the requests (index, zone) of `run`.
fn run_bytes(run: &[(usize, usize)], requests: &[Request]) -> u64 {
    run.iter()
        .map(|&(index, _)| data_bytes(&requests[index]))
        .sum()
}

/// At most this many threads serve one batch, each taking whole zones.
const MAX_LANES: usize = 4;

/// Below this much data a batch on buffered storage runs on one thread: a page-cache copy of
/// a few KiB takes less than starting a thread for it.
const PARALLEL_MIN_BYTES: u64 = 512 << 10;

impl<S: ZoneStorage + Send> ZonedHandler<S> {
    fn report(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        if !request.data_fits_type() {
            return Completion::with_status(status::IOERR);
        }
        let len = request.writable_len();
        let mut reply = vec![0u8; self.disk.report_reply_len(request.sector, len as usize)];
        match self.disk.report_into(request.sector, &mut reply) {
            Ok((_, written)) if scatter(memory, request, &reply[..written]) => {
                Completion::ok(written as u32)
            }
            Ok(_) => Completion::with_status(status::IOERR),
            Err(error) => Completion::with_status(error.status()),
        }
    }

    fn flush(&mut self, request: &Request) -> Completion {
        if !request.data_fits_type() {
            return Completion::with_status(status::IOERR);
        }
        completion(&self.disk.flush())
    }

    fn zone_management(&mut self, request: &Request) -> Completion {
        let Some(kind) = wire::zone_op_of_request(request.kind) else {
            return Completion::with_status(status::UNSUPP);
        };
        if !request.data_fits_type() {
            return Completion::with_status(status::IOERR);
        }
        completion(&self.disk.zone_management(kind, request.sector))
    }

    /// Counts the request and fails it if it is the injected write failure.
    fn admit(&mut self, request: &Request) -> Option<Completion> {
        let counts = &mut self.counts;
        match request.kind {
            RequestType::In => counts.reads += 1,
            RequestType::Out => counts.writes += 1,
            RequestType::Flush => counts.flushes += 1,
            RequestType::ZoneAppend => counts.appends += 1,
            RequestType::ZoneReport => counts.reports += 1,
            kind if wire::zone_op_of_request(kind).is_some() => counts.zone_management += 1,
            _ => {}
        }
        if matches!(request.kind, RequestType::Out | RequestType::ZoneAppend) {
            if let Some(status) = self.injected_write_failure(request.sector) {
                log::info!(
                    "zoned disk: failing write {} at sector {} with status {status} (fail-write)",
                    self.writes_to_failing_zone,
                    request.sector
                );
                return Some(Completion::with_status(status));
            }
        }
        None
    }

    /// Serves an admitted request here; `None` leaves it to the plain device.
    fn serve(&mut self, request: &Request, memory: &GuestMemoryMmap) -> Option<Completion> {
        Some(match request.kind {
            RequestType::In | RequestType::Out | RequestType::ZoneAppend => {
                serve_data(&mut self.disk, memory, request)
            }
            RequestType::Flush => self.flush(request),
            RequestType::ZoneReport => self.report(memory, request),
            RequestType::ZoneOpen
            | RequestType::ZoneClose
            | RequestType::ZoneFinish
            | RequestType::ZoneReset
            | RequestType::ZoneResetAll => self.zone_management(request),
            // GET_ID and unknown types: the plain device answers (UNSUPP for unknown ones).
            _ => return None,
        })
    }

    /// The one zone a data request touches, which makes it eligible to run beside requests to
    /// other zones. Anything else (other types, a range across zones or outside the disk) is
    /// served alone, between the parallel runs, and gets its error there.
    fn lane_of(&self, request: &Request) -> Option<usize> {
        let geometry = self.disk.geometry();
        let bytes = match request.kind {
            RequestType::In => request.writable_len(),
            RequestType::Out => request.readable_len(),
            RequestType::ZoneAppend => return geometry.zone_index(request.sector),
            _ => return None,
        };
        let last = request
            .sector
            .checked_add(bytes.div_ceil(SECTOR_SIZE).max(1) - 1)?;
        let zone = geometry.zone_index(request.sector)?;
        (geometry.zone_index(last)? == zone).then_some(zone)
    }

    /// Serves `run` (request index, zone) with up to `MAX_LANES` threads, each taking every
    /// request of its zones in order, so each zone sees its requests in submission order.
    fn serve_lanes(
        &mut self,
        run: &[(usize, usize)],
        requests: &[Request],
        memory: &GuestMemoryMmap,
        data: &DataPath,
        out: &mut [Option<Completion>],
    ) {
        // Which lanes the run's zones fall into, one bit each: most runs (a sequential stream,
        // small requests) stay on this thread, and need neither lane lists nor the lock.
        let lanes_used = run
            .iter()
            .fold(0u32, |used, &(_, zone)| used | 1 << (zone % MAX_LANES));
        let parallel = lanes_used.count_ones() >= 2
            && (data.is_direct() || run_bytes(run, requests) >= PARALLEL_MIN_BYTES);
        if !parallel {
            let mut access = Lane {
                disk: LaneDisk::Alone(&mut self.disk),
                data,
                bounce: &mut self.bounces[0],
            };
            for &(index, _) in run {
                out[index] = Some(serve_data(&mut access, memory, &requests[index]));
            }
            return;
        }
        let mut lanes: Vec<Vec<usize>> = vec![Vec::new(); MAX_LANES];
        for &(index, zone) in run {
            lanes[zone % MAX_LANES].push(index);
        }
        // Each lane with work, and its bounce buffer grown here for the lane's largest request:
        // the lane threads only use it (any allocation stays on this long-lived thread).
        let mut work: Vec<(&[usize], &mut AlignedBuffer)> = Vec::with_capacity(MAX_LANES);
        for (lane, bounce) in lanes.iter().zip(self.bounces.iter_mut()) {
            if lane.is_empty() {
                continue;
            }
            let largest = lane
                .iter()
                .map(|&index| data.bounce_len(data_bytes(&requests[index])))
                .max()
                .unwrap_or(0);
            // A buffer that cannot grow here fails its requests in the lane (ENOMEM) instead.
            let _ = bounce.reserve(usize::try_from(largest).unwrap_or(usize::MAX));
            work.push((lane, bounce));
        }
        let disk = Mutex::new(&mut self.disk);
        let served: Vec<(usize, Completion)> = std::thread::scope(|scope| {
            let disk = &disk;
            let serve_lane = move |lane: &[usize], bounce: &mut AlignedBuffer| {
                let mut access = Lane {
                    disk: LaneDisk::Shared(disk),
                    data,
                    bounce,
                };
                lane.iter()
                    .map(|&index| (index, serve_data(&mut access, memory, &requests[index])))
                    .collect::<Vec<_>>()
            };
            let mut work = work.into_iter();
            let (first, first_bounce) = work.next().expect("two lanes or more");
            let handles: Vec<_> = work
                .map(|(lane, bounce)| {
                    std::thread::Builder::new()
                        .name("zoned-lane".into())
                        .spawn_scoped(scope, move || serve_lane(lane, bounce))
                        .map_err(|_| lane)
                })
                .collect();
            let mut served = serve_lane(first, first_bounce);
            for handle in handles {
                match handle {
                    Ok(handle) => served.extend(handle.join().unwrap_or_default()),
                    // No thread: this lane runs here, after the others, with a buffer of its
                    // own (the lane's went with the thread that never started).
                    Err(lane) => served.extend(serve_lane(lane, &mut AlignedBuffer::empty())),
                }
            }
            served
        });
        for (index, completion) in served {
            out[index] = Some(completion);
        }
    }
}

impl<S: ZoneStorage + Send> RequestHandler for ZonedHandler<S> {
    fn features(&self) -> u64 {
        1 << wire::VIRTIO_BLK_F_ZONED | 1 << wire::VIRTIO_BLK_F_TOPOLOGY
    }

    /// The model is always host-managed, which a driver without VIRTIO_BLK_F_ZONED cannot
    /// drive (virtio 1.3 5.2.5: the device must then refuse FEATURES_OK).
    fn required_features(&self) -> u64 {
        1 << wire::VIRTIO_BLK_F_ZONED
    }

    fn fill_config(&self, config: &mut [u8; CONFIG_SIZE]) {
        wire::fill_zoned_config(
            self.disk.geometry(),
            self.disk.physical_block_size(),
            config,
        );
    }

    fn handle(
        &mut self,
        request: &Request,
        memory: &GuestMemoryMmap,
        _backend: &mut dyn BlockBackend,
    ) -> Option<Completion> {
        if let Some(failed) = self.admit(request) {
            return Some(failed);
        }
        self.serve(request, memory)
    }

    /// Requests to different zones run in parallel when storage has a `DataPath`: runs of
    /// reads, writes and appends confined to one zone are split into lanes by zone; every
    /// other request waits for the run before it and is served alone.
    fn handle_batch(
        &mut self,
        requests: &[Request],
        memory: &GuestMemoryMmap,
        _backend: &mut dyn BlockBackend,
    ) -> Vec<Option<Completion>> {
        let mut out = vec![None; requests.len()];
        let data = self.disk.storage().data_path();
        let mut run = std::mem::take(&mut self.run);
        run.clear();
        for (index, request) in requests.iter().enumerate() {
            if let Some(failed) = self.admit(request) {
                out[index] = Some(failed);
                continue;
            }
            match (&data, self.lane_of(request)) {
                (Some(_), Some(zone)) => run.push((index, zone)),
                _ => {
                    if let Some(data) = &data {
                        self.serve_lanes(&run, requests, memory, data, &mut out);
                    }
                    run.clear();
                    out[index] = self.serve(request, memory);
                }
            }
        }
        if let Some(data) = &data {
            self.serve_lanes(&run, requests, memory, data, &mut out);
        }
        self.run = run;
        out
    }

    fn flush(&mut self) -> io::Result<()> {
        let c = self.counts;
        log::info!(
            "zoned disk served {} reads, {} writes, {} appends, {} reports, {} zone management requests, {} flushes",
            c.reads, c.writes, c.appends, c.reports, c.zone_management, c.flushes
        );
        self.disk.flush().map_err(|error| {
            warn!("zoned disk: flush at shutdown failed: {error}");
            io::Error::other(error.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::request_type;
    use crate::zoned::wire::request as zone_request;
    use crate::zoned::{Zone, ZonedGeometry, ZonedImage};
    use vm_memory::GuestAddress;

    const ZONE: u64 = 2048; // 1 MiB zones

    struct Fixture {
        handler: ZonedHandler<crate::zoned::image::ImageFile>,
        memory: GuestMemoryMmap,
        backend: ZonedCapacity,
        path: std::path::PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn fixture(name: &str) -> Fixture {
        fixture_with_faults(name, &FaultInjection::default())
    }

    fn fixture_with_faults(name: &str, faults: &FaultInjection) -> Fixture {
        let path = std::env::temp_dir().join(format!(
            "vmm-zoned-virtio-{}-{name}.img",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let geometry = ZonedGeometry {
            capacity: 8 * ZONE,
            zone_size: ZONE,
            zone_capacity: ZONE,
            conventional_zones: 1,
            max_open: 2,
            max_active: 3,
            max_append_sectors: 256,
            write_granularity: 512,
            logical_block_size: 512,
        };
        let disk = ZonedImage::create(&path, geometry).unwrap();
        let handler = ZonedHandler::with_faults(disk, faults).unwrap();
        let backend = handler.capacity_backend();
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        Fixture {
            handler,
            memory,
            backend,
            path,
        }
    }

    fn request(
        request_type: u32,
        sector: u64,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
    ) -> Request {
        let seg = |&(addr, len): &(u64, u32)| Segment {
            addr: GuestAddress(addr),
            len,
        };
        Request {
            kind: RequestType::from_raw(request_type),
            sector,
            readable: readable.iter().map(seg).collect(),
            writable: writable.iter().map(seg).collect(),
            status: GuestAddress(0xf_fff0),
        }
    }

    impl Fixture {
        fn run(&mut self, request: &Request) -> Completion {
            self.handler
                .handle(request, &self.memory, &mut self.backend)
                .expect("the zoned handler serves this type")
        }
    }

    #[test]
    fn offers_zoned_feature_and_config() {
        let f = fixture("config");
        // VIRTIO_BLK_F_ZONED and VIRTIO_BLK_F_TOPOLOGY.
        assert_eq!(f.handler.features(), 1 << 17 | 1 << 10);
        let mut config = [0u8; CONFIG_SIZE];
        f.handler.fill_config(&mut config);
        assert_eq!(
            u32::from_le_bytes(config[72..76].try_into().unwrap()),
            ZONE as u32
        );
        assert_eq!(u32::from_le_bytes(config[76..80].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(config[80..84].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(config[84..88].try_into().unwrap()), 256);
        assert_eq!(config[92], wire::MODEL_HOST_MANAGED);
        assert_eq!(f.backend.size(), 8 * ZONE * 512);
        // blk_size: 512-byte logical blocks.
        assert_eq!(u32::from_le_bytes(config[20..24].try_into().unwrap()), 512);
        // An image's physical blocks are the host's 4 KiB pages (physical_block_exp 3), so
        // tools that write in physical blocks (blktests' dd) do not send 512-byte requests.
        assert_eq!(config[24], 3);
    }

    /// A 4Kn disk says so in blk_size (VIRTIO_BLK_F_BLK_SIZE, which the plain device offers),
    /// and refuses requests that are not whole 4 KiB blocks, served alone or in a batch.
    #[test]
    fn a_4kn_disk_advertises_its_block_size_and_refuses_partial_blocks() {
        let path =
            std::env::temp_dir().join(format!("vmm-zoned-virtio-{}-4kn.img", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let geometry = ZonedGeometry {
            capacity: 4 * ZONE,
            zone_size: ZONE,
            zone_capacity: ZONE,
            conventional_zones: 1,
            max_open: 0,
            max_active: 0,
            max_append_sectors: 256,
            write_granularity: 4096,
            logical_block_size: 4096,
        };
        let mut handler = ZonedHandler::new(ZonedImage::create(&path, geometry).unwrap());
        std::fs::remove_file(&path).unwrap();
        let mut backend = handler.capacity_backend();
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let block = crate::block::Block::with_handler(
            Box::new(handler.capacity_backend()),
            "z",
            Box::new(ZonedHandler::new(
                ZonedImage::create(&path, geometry).unwrap(),
            )),
        );
        std::fs::remove_file(&path).unwrap();
        let mut blk_size = [0u8; 4];
        crate::virtio::VirtioDevice::read_config(&block, 20, &mut blk_size);
        assert_eq!(u32::from_le_bytes(blk_size), 4096);
        assert_ne!(
            crate::virtio::VirtioDevice::avail_features(&block) & crate::block::feature::BLK_SIZE,
            0
        );
        let requests = [
            // Conventional zone 0: a sector inside a block, and half a block.
            request(request_type::OUT, 1, &[(0x1000, 4096)], &[]),
            request(request_type::OUT, 8, &[(0x1000, 512)], &[]),
            request(request_type::IN, 4, &[], &[(0x4000, 4096)]),
            request(request_type::IN, ZONE, &[], &[(0x4000, 2048)]),
            // Sequential zone 1: the write granularity's status.
            request(request_type::OUT, ZONE, &[(0x1000, 512)], &[]),
            request(
                zone_request::ZONE_APPEND,
                ZONE,
                &[(0x1000, 1024)],
                &[(0x8000, 8)],
            ),
            // Whole blocks are fine.
            request(request_type::OUT, 8, &[(0x1000, 4096)], &[]),
            request(request_type::IN, 8, &[], &[(0x4000, 4096)]),
            request(request_type::OUT, ZONE, &[(0x1000, 8192)], &[]),
        ];
        let statuses = [
            status::IOERR,
            status::IOERR,
            status::IOERR,
            status::IOERR,
            status::ZONE_UNALIGNED_WP,
            status::ZONE_UNALIGNED_WP,
            status::OK,
            status::OK,
            status::OK,
        ];
        let alone: Vec<u8> = requests
            .iter()
            .map(|r| handler.handle(r, &memory, &mut backend).unwrap().status)
            .collect();
        assert_eq!(alone, statuses);
        let mut fresh = ZonedHandler::new(ZonedImage::create(&path, geometry).unwrap());
        std::fs::remove_file(&path).unwrap();
        let batched: Vec<u8> = fresh
            .handle_batch(&requests, &memory, &mut backend)
            .into_iter()
            .map(|c| c.unwrap().status)
            .collect();
        assert_eq!(batched, statuses);
    }

    #[test]
    fn a_driver_without_the_zoned_feature_is_refused_and_gets_unsupp() {
        use crate::block::{Block, BlockBackend as _};
        use crate::test_support::{Buffer, SplitQueueDriver};
        use crate::virtio::{InterruptSignal, VirtioDevice, VIRTIO_F_VERSION_1};

        struct NoInterrupt;
        impl InterruptSignal for NoInterrupt {
            fn signal_used_queue(&self, _queue_index: u16) -> io::Result<()> {
                Ok(())
            }
            fn signal_config_change(&self) -> io::Result<()> {
                Ok(())
            }
        }

        // The fixture's image, but the handler goes into a whole device.
        let mut f = fixture("no-zoned-feature");
        let memory = f.memory.clone();
        let path = f.path.with_extension("device.img");
        let _ = std::fs::remove_file(&path);
        let geometry = *f.handler.disk.geometry();
        f.backend = ZonedCapacity::new(0);
        let disk = ZonedImage::create(&path, geometry).unwrap();
        let _ = std::fs::remove_file(&path);
        let handler = ZonedHandler::new(disk);
        let capacity = handler.capacity_backend();
        assert_eq!(capacity.size(), 8 * ZONE * 512);
        let mut block = Block::with_handler(Box::new(capacity), "z", Box::new(handler));
        let zoned = 1u64 << wire::VIRTIO_BLK_F_ZONED;
        // Spec 5.2.5: a host-managed device refuses FEATURES_OK without VIRTIO_BLK_F_ZONED.
        assert!(!block.accepts_features(VIRTIO_F_VERSION_1));
        assert!(block.accepts_features(VIRTIO_F_VERSION_1 | zoned));
        // Should a device run anyway, zone requests get UNSUPP (5.2.6).
        block.set_acked_features(VIRTIO_F_VERSION_1);
        let (mut driver, queue) =
            SplitQueueDriver::new(&memory, GuestAddress(0x8_0000), 8).unwrap();
        block
            .activate(
                memory.clone(),
                vec![queue],
                std::sync::Arc::new(NoInterrupt),
            )
            .unwrap();
        let header = GuestAddress(0x1000);
        memory
            .write_obj(zone_request::ZONE_RESET_ALL, header)
            .unwrap();
        memory.write_obj(0u64, GuestAddress(0x1008)).unwrap();
        memory.write_obj(0xffu8, GuestAddress(0x2000)).unwrap();
        driver
            .add_chain(&[
                Buffer::readable(header, 16),
                Buffer::writable(GuestAddress(0x2000), 1),
            ])
            .unwrap();
        block.process_queue(0).unwrap();
        let status: u8 = memory.read_obj(GuestAddress(0x2000)).unwrap();
        assert_eq!(status, status::UNSUPP);
    }

    #[test]
    fn writes_follow_the_write_pointer_and_reads_above_it_are_zero() {
        let mut f = fixture("write");
        f.memory
            .write_slice(&[0xab; 4096], GuestAddress(0x1000))
            .unwrap();
        // Sequential zone 1: a write at its start is fine, a second one at the start is not.
        assert_eq!(
            f.run(&request(request_type::OUT, ZONE, &[(0x1000, 4096)], &[]))
                .status,
            status::OK
        );
        assert_eq!(
            f.run(&request(request_type::OUT, ZONE, &[(0x1000, 4096)], &[]))
                .status,
            status::ZONE_UNALIGNED_WP
        );
        // Read 16 KiB from the zone start: 4 KiB of data, then zeros.
        f.memory
            .write_slice(&[0x55; 16384], GuestAddress(0x10000))
            .unwrap();
        let done = f.run(&request(request_type::IN, ZONE, &[], &[(0x10000, 16384)]));
        assert_eq!(done, Completion::ok(16384));
        let mut back = vec![0u8; 16384];
        f.memory
            .read_slice(&mut back, GuestAddress(0x10000))
            .unwrap();
        assert!(back[..4096].iter().all(|b| *b == 0xab));
        assert!(back[4096..].iter().all(|b| *b == 0));
        // Data in the wrong direction is refused.
        assert_eq!(
            f.run(&request(
                request_type::OUT,
                2 * ZONE,
                &[(0x1000, 512)],
                &[(0x2000, 512)]
            ))
            .status,
            status::IOERR
        );
        assert_eq!(
            f.run(&request(request_type::FLUSH, 0, &[], &[])).status,
            status::OK
        );
    }

    #[test]
    fn append_returns_the_landed_sector_in_the_first_eight_bytes() {
        let mut f = fixture("append");
        f.memory
            .write_slice(&[1; 1024], GuestAddress(0x1000))
            .unwrap();
        let first = f.run(&request(
            zone_request::ZONE_APPEND,
            2 * ZONE,
            &[(0x1000, 1024)],
            &[(0x3000, 15)],
        ));
        assert_eq!(first, Completion::ok(8));
        let second = f.run(&request(
            zone_request::ZONE_APPEND,
            2 * ZONE,
            &[(0x1000, 1024)],
            &[(0x3000, 15)],
        ));
        assert_eq!(second, Completion::ok(8));
        let landed: u64 = f.memory.read_obj(GuestAddress(0x3000)).unwrap();
        assert_eq!(landed, 2 * ZONE + 2);
        // No room for the sector: IOERR. Append to a conventional zone: INVALID_CMD.
        assert_eq!(
            f.run(&request(
                zone_request::ZONE_APPEND,
                2 * ZONE,
                &[(0x1000, 512)],
                &[(0x3000, 4)]
            ))
            .status,
            status::IOERR
        );
        assert_eq!(
            f.run(&request(
                zone_request::ZONE_APPEND,
                0,
                &[(0x1000, 512)],
                &[(0x3000, 15)]
            ))
            .status,
            status::ZONE_INVALID_CMD
        );
    }

    #[test]
    fn report_and_zone_management() {
        let mut f = fixture("report");
        assert_eq!(
            f.run(&request(zone_request::ZONE_OPEN, 3 * ZONE, &[], &[]))
                .status,
            status::OK
        );
        assert_eq!(
            f.run(&request(zone_request::ZONE_OPEN, 0, &[], &[])).status,
            status::ZONE_INVALID_CMD
        );
        assert_eq!(
            f.run(&request(zone_request::ZONE_OPEN, 4 * ZONE, &[], &[]))
                .status,
            status::OK
        );
        // max_open = 2, both explicitly open: a third explicit open needs a resource.
        assert_eq!(
            f.run(&request(zone_request::ZONE_OPEN, 5 * ZONE, &[], &[]))
                .status,
            status::ZONE_OPEN_RESOURCE
        );
        // A report buffer for the header and three zones, split over two descriptors.
        let done = f.run(&request(
            zone_request::ZONE_REPORT,
            3 * ZONE + 7,
            &[],
            &[(0x4000, 100), (0x5000, 156)],
        ));
        assert_eq!(done, Completion::ok(256));
        let nr_zones: u64 = f.memory.read_obj(GuestAddress(0x4000)).unwrap();
        assert_eq!(nr_zones, 3);
        let first_start: u64 = f.memory.read_obj(GuestAddress(0x4000 + 64 + 8)).unwrap();
        assert_eq!(first_start, 3 * ZONE);
        // Zone ops carry no data; RESET_ALL empties everything.
        assert_eq!(
            f.run(&request(
                zone_request::ZONE_CLOSE,
                3 * ZONE,
                &[(0x1000, 512)],
                &[]
            ))
            .status,
            status::IOERR
        );
        assert_eq!(
            f.run(&request(zone_request::ZONE_RESET_ALL, 0, &[], &[]))
                .status,
            status::OK
        );
        assert_eq!(
            f.run(&request(zone_request::ZONE_OPEN, 5 * ZONE, &[], &[]))
                .status,
            status::OK
        );
        // A buffer of the largest request size gets the eight zones, nothing more.
        let done = f.run(&request(
            zone_request::ZONE_REPORT,
            0,
            &[],
            &[(0x4000, MAX_REQUEST_DATA_BYTES as u32)],
        ));
        assert_eq!(done, Completion::ok(64 + 8 * 64));
        let nr_zones: u64 = f.memory.read_obj(GuestAddress(0x4000)).unwrap();
        assert_eq!(nr_zones, 8);
        assert_eq!(f.handler.counts().zone_management, 7);
        assert_eq!(f.handler.counts().reports, 2);
        // GET_ID is left to the plain device.
        let get_id = request(request_type::GET_ID, 0, &[], &[(0x1000, 20)]);
        assert!(f
            .handler
            .handle(&get_id, &f.memory, &mut f.backend)
            .is_none());
    }

    #[test]
    fn injected_faults_show_for_this_run_only() {
        let faults = FaultInjection {
            read_only_zones: vec![2],
            offline_zones: vec![3],
            fail_write: Some(FailWrite {
                zone: 4,
                nth: 2,
                status: status::ZONE_INVALID_CMD,
            }),
        };
        let mut f = fixture_with_faults("faults", &faults);
        f.memory
            .write_slice(&[7; 512], GuestAddress(0x1000))
            .unwrap();
        let write = |sector| request(request_type::OUT, sector, &[(0x1000, 512)], &[]);
        assert_eq!(f.run(&write(2 * ZONE)).status, status::ZONE_INVALID_CMD);
        assert_eq!(f.run(&write(3 * ZONE)).status, status::ZONE_INVALID_CMD);
        // The second write to zone 4 fails and changes nothing; the next one lands at the same wp.
        assert_eq!(f.run(&write(4 * ZONE)).status, status::OK);
        assert_eq!(f.run(&write(4 * ZONE + 1)).status, status::ZONE_INVALID_CMD);
        assert_eq!(f.run(&write(4 * ZONE + 1)).status, status::OK);
        assert_eq!(f.handler.disk().zones().zone(4).unwrap().wp, 4 * ZONE + 2);
        // The report shows the injected conditions (READ_ONLY 13, OFFLINE 15).
        let done = f.run(&request(
            zone_request::ZONE_REPORT,
            2 * ZONE,
            &[],
            &[(0x4000, 192)],
        ));
        assert_eq!(done, Completion::ok(192));
        let cond = |at: u64| f.memory.read_obj::<u8>(GuestAddress(at)).unwrap();
        assert_eq!((cond(0x4000 + 64 + 25), cond(0x4000 + 128 + 25)), (13, 15));
        // Nothing of it is stored: once closed, the image reopens with zones 2 and 3 empty.
        RequestHandler::flush(&mut f.handler).unwrap();
        let other = f.path.with_extension("other");
        let geometry = *f.handler.disk().geometry();
        let closed = std::mem::replace(
            &mut f.handler,
            ZonedHandler::new(ZonedImage::create(&other, geometry).unwrap()),
        );
        drop(closed);
        let reopened = ZonedImage::open(&f.path, &Default::default()).unwrap();
        assert_eq!(reopened.zones().zone(2).unwrap().cond, ZoneCondition::Empty);
        assert_eq!(reopened.zones().zone(3).unwrap().cond, ZoneCondition::Empty);
        assert_eq!(reopened.zones().zone(4).unwrap().wp, 4 * ZONE + 2);
        std::fs::remove_file(other).unwrap();
    }

    #[test]
    fn faults_on_missing_or_conventional_zones_are_refused() {
        let path = std::env::temp_dir().join(format!(
            "vmm-zoned-virtio-{}-badfault.img",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let geometry = ZonedGeometry {
            capacity: 4 * ZONE,
            zone_size: ZONE,
            zone_capacity: ZONE,
            conventional_zones: 1,
            max_open: 0,
            max_active: 0,
            max_append_sectors: 256,
            write_granularity: 512,
            logical_block_size: 512,
        };
        for (faults, expected) in [
            (
                FaultInjection {
                    read_only_zones: vec![0],
                    ..Default::default()
                },
                "zone 0 is conventional",
            ),
            (
                FaultInjection {
                    offline_zones: vec![9],
                    ..Default::default()
                },
                "zone 9 does not exist",
            ),
            (
                FaultInjection {
                    fail_write: Some(FailWrite {
                        zone: 4,
                        nth: 1,
                        status: 1,
                    }),
                    ..Default::default()
                },
                "zone 4 does not exist",
            ),
        ] {
            let disk = ZonedImage::create(&path, geometry).unwrap();
            match ZonedHandler::with_faults(disk, &faults) {
                Err(message) => assert!(message.contains(expected), "{message}"),
                Ok(_) => panic!("{faults:?} accepted"),
            }
            std::fs::remove_file(&path).unwrap();
        }
    }

    /// One batch mixing lanes (three zones), a barrier (FLUSH) and errors gives the same
    /// completions, zone states and data as the same requests served one at a time.
    #[test]
    fn a_batch_completes_like_requests_served_alone() {
        let batch = [
            request(request_type::OUT, ZONE, &[(0x1000, 4096)], &[]),
            request(request_type::OUT, 2 * ZONE, &[(0x2000, 4096)], &[]),
            request(request_type::OUT, 8, &[(0x3000, 4096)], &[]),
            request(
                zone_request::ZONE_APPEND,
                ZONE,
                &[(0x4000, 4096)],
                &[(0x8000, 8)],
            ),
            request(request_type::OUT, 2 * ZONE + 8, &[(0x5000, 4096)], &[]),
            // Not at the write pointer: UNALIGNED_WRITE, in its lane.
            request(request_type::OUT, 2 * ZONE + 64, &[(0x5000, 512)], &[]),
            request(request_type::FLUSH, 0, &[], &[]),
            request(request_type::IN, ZONE, &[], &[(0x10000, 8192)]),
            // Across zones 1 and 2: served alone, as an error.
            request(request_type::OUT, 2 * ZONE - 8, &[(0x1000, 8192)], &[]),
            request(
                zone_request::ZONE_APPEND,
                2 * ZONE,
                &[(0x6000, 1024)],
                &[(0x8008, 8)],
            ),
            request(request_type::IN, 2 * ZONE, &[], &[(0x20000, 9216)]),
        ];
        let fill = |f: &Fixture| {
            for (i, addr) in [0x1000u64, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000]
                .into_iter()
                .enumerate()
            {
                f.memory
                    .write_slice(&[i as u8 + 1; 4096], GuestAddress(addr))
                    .unwrap();
            }
        };
        let mut alone = fixture("batch-alone");
        let mut together = fixture("batch-together");
        fill(&alone);
        fill(&together);
        let expected: Vec<Completion> = batch.iter().map(|r| alone.run(r)).collect();
        let got = together
            .handler
            .handle_batch(&batch, &together.memory, &mut together.backend);
        let got: Vec<Completion> = got.into_iter().map(|c| c.expect("served")).collect();
        assert_eq!(got, expected);
        assert_eq!(expected[5].status, status::ZONE_UNALIGNED_WP);
        assert_ne!(expected[8].status, status::OK);
        let zones =
            |f: &Fixture| -> Vec<Zone> { f.handler.disk().report(0, 16).unwrap().collect() };
        assert_eq!(zones(&together), zones(&alone));
        for (addr, len) in [(0x8000u64, 16usize), (0x10000, 8192), (0x20000, 9216)] {
            let mut a = vec![0u8; len];
            let mut b = vec![0u8; len];
            alone.memory.read_slice(&mut a, GuestAddress(addr)).unwrap();
            together
                .memory
                .read_slice(&mut b, GuestAddress(addr))
                .unwrap();
            assert_eq!(a, b, "guest memory at {addr:#x}");
        }
        assert_eq!(together.handler.counts(), alone.handler.counts());
    }

    /// Storage whose data path reports each write's sector to a test hook.
    struct HookedStorage {
        data: DataPath,
    }

    impl ZoneStorage for HookedStorage {
        fn read(&mut self, sector: u64, buf: &mut [u8]) -> io::Result<()> {
            self.data.read(sector, buf)
        }
        fn write(&mut self, sector: u64, data: &[u8]) -> io::Result<()> {
            self.data.write(sector, data)
        }
        fn apply_zone_op(&mut self, _plan: &crate::zoned::state::ZoneOpPlan) -> io::Result<()> {
            Ok(())
        }
        fn data_path(&self) -> Option<DataPath> {
            Some(self.data.clone())
        }
        fn flush(&mut self, _zones: &crate::zoned::ZoneSet) -> io::Result<()> {
            Ok(())
        }
    }

    /// Four sequential zones without open or active limits, for the lane tests.
    fn four_open_zones() -> ZonedGeometry {
        ZonedGeometry::new(ZonedGeometry {
            capacity: 4 * ZONE,
            zone_size: ZONE,
            zone_capacity: ZONE,
            conventional_zones: 0,
            max_open: 0,
            max_active: 0,
            max_append_sectors: 256,
            write_granularity: 512,
            logical_block_size: 512,
        })
        .unwrap()
    }

    /// Writes to two zones in one batch overlap: the write to zone 1 waits inside storage until
    /// the write to zone 2 has started, which only happens if they run at the same time.
    #[test]
    fn writes_to_different_zones_run_in_parallel() {
        use std::sync::mpsc;
        use std::time::Duration;
        let geometry = four_open_zones();
        let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        file.set_len(4 * ZONE * SECTOR_SIZE).unwrap();
        let (started, seen) = mpsc::channel::<u64>();
        let seen = Mutex::new(seen);
        let overlapped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = overlapped.clone();
        let hook = move |sector: u64| {
            if sector == ZONE {
                // Zone 1 waits for zone 2's write to begin.
                let got = seen.lock().unwrap().recv_timeout(Duration::from_secs(10));
                flag.store(got == Ok(2 * ZONE), std::sync::atomic::Ordering::SeqCst);
            } else {
                let _ = started.send(sector);
            }
        };
        let storage = HookedStorage {
            data: DataPath::buffered(std::sync::Arc::new(file), 0)
                .with_write_hook(std::sync::Arc::new(hook)),
        };
        let mut handler = ZonedHandler::new(ZonedDisk::new(
            crate::zoned::ZoneSet::new(geometry),
            storage,
        ));
        let mut backend = handler.capacity_backend();
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // Enough data to be worth two threads on buffered storage.
        let half = (PARALLEL_MIN_BYTES / 2) as u32;
        let batch = [
            request(request_type::OUT, ZONE, &[(0x1000, half)], &[]),
            request(request_type::OUT, 2 * ZONE, &[(0x1000, half)], &[]),
        ];
        let done = handler.handle_batch(&batch, &memory, &mut backend);
        assert_eq!(done, vec![Some(Completion::ok(0)); 2]);
        assert!(
            overlapped.load(std::sync::atomic::Ordering::SeqCst),
            "the write to zone 1 finished before the write to zone 2 started"
        );
        let zones: Vec<Zone> = handler.disk().report(0, 4).unwrap().collect();
        assert_eq!(zones[1].wp, ZONE + u64::from(half) / 512);
        assert_eq!(zones[2].wp, 2 * ZONE + u64::from(half) / 512);
    }

    /// A lane whose data does not reach storage fails its request and puts the zone's write
    /// pointer back, on the serving thread and in a parallel run alike.
    #[test]
    fn a_failed_lane_write_leaves_the_write_pointer_where_it_was() {
        let geometry = four_open_zones();
        let temp = vmm_sys_util::tempfile::TempFile::new().unwrap();
        temp.as_file().set_len(4 * ZONE * SECTOR_SIZE).unwrap();
        // Opened read-only: every write fails.
        let file = std::fs::File::open(temp.as_path()).unwrap();
        let storage = HookedStorage {
            data: DataPath::buffered(std::sync::Arc::new(file), 0),
        };
        let mut handler = ZonedHandler::new(ZonedDisk::new(
            crate::zoned::ZoneSet::new(geometry),
            storage,
        ));
        let mut backend = handler.capacity_backend();
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let failed = Some(Completion::with_status(status::IOERR));
        let small = [
            request(request_type::OUT, ZONE, &[(0x1000, 4096)], &[]),
            request(request_type::OUT, 2 * ZONE, &[(0x1000, 4096)], &[]),
        ];
        assert_eq!(
            handler.handle_batch(&small, &memory, &mut backend),
            vec![failed; 2]
        );
        let half = (PARALLEL_MIN_BYTES / 2) as u32;
        let large = [
            request(request_type::OUT, ZONE, &[(0x1000, half)], &[]),
            request(request_type::OUT, 2 * ZONE, &[(0x1000, half)], &[]),
        ];
        assert_eq!(
            handler.handle_batch(&large, &memory, &mut backend),
            vec![failed; 2]
        );
        let zones: Vec<Zone> = handler.disk().report(0, 4).unwrap().collect();
        assert_eq!(zones[1].wp, ZONE);
        assert_eq!(zones[1].cond, ZoneCondition::Empty);
        assert_eq!(zones[2].wp, 2 * ZONE);
        assert_eq!(zones[2].cond, ZoneCondition::Empty);
    }

    /// Counts the allocations that look like O_DIRECT bounce buffers of at least 32 KiB
    /// (page-aligned): only lane tests over direct storage make them.
    struct CountingAllocator;

    static BOUNCE_ALLOCATIONS: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            if layout.align() == 4096 && layout.size() >= 32 << 10 {
                BOUNCE_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            // SAFETY: the caller's contract for `alloc` holds for `System.alloc`.
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            // SAFETY: `ptr` came from `System` with this layout.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
            if layout.align() == 4096 && layout.size() >= 32 << 10 {
                BOUNCE_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            // SAFETY: as for `alloc`.
            unsafe { std::alloc::System.alloc_zeroed(layout) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: CountingAllocator = CountingAllocator;

    /// Lanes over O_DIRECT storage (parallel lane threads) move data through one bounce buffer
    /// per lane, kept by the handler: after the first batch, no request allocates one. A lane
    /// thread that allocated and freed a large buffer per request made glibc trim its arena
    /// and open /proc/sys/vm/overcommit_memory, which the seccomp filter punished (#16).
    #[test]
    fn direct_lanes_allocate_no_bounce_buffer_per_request() {
        let geometry = four_open_zones();
        let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        file.set_len(4 * ZONE * SECTOR_SIZE).unwrap();
        // A regular file: the arithmetic and buffers of O_DIRECT without its alignment rules.
        let storage = HookedStorage {
            data: DataPath::direct(std::sync::Arc::new(file), 4096),
        };
        let mut handler = ZonedHandler::new(ZonedDisk::new(
            crate::zoned::ZoneSet::new(geometry),
            storage,
        ));
        let mut backend = handler.capacity_backend();
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        memory
            .write_slice(&[0x5a; 36 << 10], GuestAddress(0x1000))
            .unwrap();
        let len = 36u32 << 10;
        let step = u64::from(len) / SECTOR_SIZE;
        let batch = |round: u64| {
            [
                request(
                    request_type::OUT,
                    ZONE + round * step,
                    &[(0x1000, len)],
                    &[],
                ),
                request(
                    request_type::OUT,
                    2 * ZONE + round * step,
                    &[(0x1000, len)],
                    &[],
                ),
                // Widened to whole blocks: the sector is not on a 4 KiB boundary.
                request(request_type::IN, ZONE + 1, &[], &[(0x20000, len)]),
                request(request_type::IN, 2 * ZONE, &[], &[(0x40000, len)]),
            ]
        };
        let expected = vec![
            Some(Completion::ok(0)),
            Some(Completion::ok(0)),
            Some(Completion::ok(len)),
            Some(Completion::ok(len)),
        ];
        assert_eq!(
            handler.handle_batch(&batch(0), &memory, &mut backend),
            expected
        );
        let before = BOUNCE_ALLOCATIONS.load(std::sync::atomic::Ordering::SeqCst);
        for round in 1..20 {
            assert_eq!(
                handler.handle_batch(&batch(round), &memory, &mut backend),
                expected
            );
        }
        let after = BOUNCE_ALLOCATIONS.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(after - before, 0, "bounce buffers allocated per request");
        let mut back = vec![0u8; len as usize];
        memory.read_slice(&mut back, GuestAddress(0x40000)).unwrap();
        assert!(back.iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn sub_segments_cut_the_concatenation() {
        let seg = |addr: u64, len: u32| Segment {
            addr: GuestAddress(addr),
            len,
        };
        let segments = [seg(0x1000, 700), seg(0x5000, 1348), seg(0x9000, 2048)];
        assert_eq!(sub_segments(&segments, 0, 4096), segments.to_vec());
        assert_eq!(
            sub_segments(&segments, 512, 1536),
            vec![seg(0x1000 + 512, 188), seg(0x5000, 836)]
        );
        assert_eq!(sub_segments(&segments, 2048, 4096), vec![seg(0x9000, 2048)]);
        assert!(sub_segments(&segments, 4096, 4096).is_empty());
    }

    /// A read in odd-sized pieces across the write pointer (data, then zeros) and a write from
    /// odd-sized pieces give the same bytes through a batch as served alone.
    #[test]
    fn scattered_buffers_move_the_same_bytes_in_a_batch() {
        let pieces = [(0x1000u64, 700u32), (0x5000, 1348), (0x9000, 2048)];
        let into = [(0x20000u64, 700u32), (0x25000, 1348), (0x29000, 2048)];
        let batch = [
            request(request_type::OUT, ZONE, &pieces[..2], &[]),
            request(request_type::IN, ZONE, &[], &into),
        ];
        let mut alone = fixture("scatter-alone");
        let mut together = fixture("scatter-together");
        for f in [&alone, &together] {
            for (i, &(addr, len)) in pieces.iter().enumerate() {
                let bytes: Vec<u8> = (0..len).map(|b| (b as u8) ^ (i as u8 * 17)).collect();
                f.memory.write_slice(&bytes, GuestAddress(addr)).unwrap();
            }
            for &(addr, len) in &into {
                f.memory
                    .write_slice(&vec![0xee; len as usize], GuestAddress(addr))
                    .unwrap();
            }
        }
        let expected: Vec<Completion> = batch.iter().map(|r| alone.run(r)).collect();
        let got: Vec<Completion> = together
            .handler
            .handle_batch(&batch, &together.memory, &mut together.backend)
            .into_iter()
            .map(|c| c.expect("served"))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(expected, vec![Completion::ok(0), Completion::ok(4096)]);
        for &(addr, len) in &into {
            let mut a = vec![0u8; len as usize];
            let mut b = vec![0u8; len as usize];
            alone.memory.read_slice(&mut a, GuestAddress(addr)).unwrap();
            together
                .memory
                .read_slice(&mut b, GuestAddress(addr))
                .unwrap();
            assert_eq!(a, b, "read buffer at {addr:#x}");
        }
        let mut tail = vec![0u8; 2048];
        together
            .memory
            .read_slice(&mut tail, GuestAddress(0x29000))
            .unwrap();
        assert!(tail.iter().all(|&b| b == 0), "above the write pointer");
    }
}
