//! Parallel service of a batch: a run of data requests each confined to one zone is split into
//! lanes by zone, and up to `MAX_LANES` threads serve them, each taking every request of its
//! zones in order, so each zone sees its requests in submission order. The zone state is shared
//! behind a lock held only to check and commit; data moves beside it through the storage's
//! `DataPath`, with one O_DIRECT bounce buffer per lane kept from batch to batch.

use std::sync::Mutex;

use super::disk::{ZoneStorage, ZonedDisk};
use super::geometry::{ZonedGeometry, SECTOR_SIZE};
use super::guest_io::{serve_data, Lane, LaneDisk, Mover};
use crate::block::{Completion, Request, RequestType};
use crate::file_io::{AlignedBuffer, DataPath};
use crate::virtio::GuestMemoryMmap;

/// At most this many threads serve one batch, each taking whole zones.
pub(super) const MAX_LANES: usize = 4;

/// Below this much data a batch on buffered storage runs on one thread: a page-cache copy of
/// a few KiB takes less than starting a thread for it.
pub(super) const PARALLEL_MIN_BYTES: u64 = 512 << 10;

/// The one zone a data request touches, which makes it eligible to run beside requests to
/// other zones. Anything else (other types, a range across zones or outside the disk) is
/// served alone, between the runs, and gets its error there.
pub(super) fn lane_of(geometry: &ZonedGeometry, request: &Request) -> Option<usize> {
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

/// The data bytes `request` moves (in either direction).
fn data_bytes(request: &Request) -> u64 {
    request.readable_len().max(request.writable_len())
}

/// The lanes' bounce buffers, kept between batches: each grown to the largest request its
/// lane has served, never freed per request. (Lane threads that allocated and freed a large
/// buffer per request made glibc trim their malloc arena, which opens
/// /proc/sys/vm/overcommit_memory under the seccomp filter.)
pub(super) struct Lanes {
    bounces: Vec<AlignedBuffer>,
}

impl Lanes {
    pub(super) fn new() -> Self {
        Lanes {
            bounces: (0..MAX_LANES).map(|_| AlignedBuffer::empty()).collect(),
        }
    }

    /// Serves one data request on this thread.
    pub(super) fn serve_alone<S: ZoneStorage>(
        &mut self,
        disk: &mut ZonedDisk<S>,
        data: Option<&DataPath>,
        memory: &GuestMemoryMmap,
        request: &Request,
    ) -> Completion {
        let mover = match data {
            Some(data) => Mover::Path {
                data,
                bounce: &mut self.bounces[0],
            },
            None => Mover::Storage,
        };
        let mut lane = Lane {
            disk: LaneDisk::Alone(disk),
            mover,
        };
        serve_data(&mut lane, memory, request)
    }

    /// Serves `run` (request index, zone) into `out`: on this thread when the run stays in
    /// one lane, is small on buffered storage, or storage has no data path; otherwise with a
    /// thread per lane.
    pub(super) fn serve<S: ZoneStorage + Send>(
        &mut self,
        disk: &mut ZonedDisk<S>,
        data: Option<&DataPath>,
        run: &[(usize, usize)],
        requests: &[Request],
        memory: &GuestMemoryMmap,
        out: &mut [Completion],
    ) {
        // Which lanes the run's zones fall into, one bit each: most runs (a sequential stream,
        // small requests) stay on this thread, and need neither lane lists nor the lock.
        let lanes_used = run
            .iter()
            .fold(0u32, |used, &(_, zone)| used | 1 << (zone % MAX_LANES));
        let run_bytes = || -> u64 {
            run.iter()
                .map(|&(index, _)| data_bytes(&requests[index]))
                .sum()
        };
        let parallel = data.filter(|data| {
            lanes_used.count_ones() >= 2 && (data.is_direct() || run_bytes() >= PARALLEL_MIN_BYTES)
        });
        let Some(data) = parallel else {
            for &(index, _) in run {
                out[index] = self.serve_alone(disk, data, memory, &requests[index]);
            }
            return;
        };
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
        let disk = Mutex::new(&mut *disk);
        let served: Vec<(usize, Completion)> = std::thread::scope(|scope| {
            let disk = &disk;
            let serve_lane = move |lane: &[usize], bounce: &mut AlignedBuffer| {
                let mut access = Lane {
                    disk: LaneDisk::Shared(disk),
                    mover: Mover::Path { data, bounce },
                };
                lane.iter()
                    .map(|&index| (index, serve_data(&mut access, memory, &requests[index])))
                    .collect::<Vec<_>>()
            };
            let mut work = work.into_iter();
            let Some((first, first_bounce)) = work.next() else {
                return Vec::new();
            };
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
            out[index] = completion;
        }
    }
}
