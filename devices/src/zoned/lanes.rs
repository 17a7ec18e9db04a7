//! Parallel service of a batch: a run of data requests each confined to one zone is split into
//! lanes by zone, and up to `MAX_LANES` threads serve them, each taking every request of its
//! zones in order, so each zone sees its requests in submission order. The zone state is shared
//! behind a lock held only to check and commit; data moves beside it through the storage's
//! `DataPath`, with one O_DIRECT bounce buffer per lane kept from batch to batch.

use std::sync::Mutex;
use std::time::Instant;

use super::disk::{ZoneStorage, ZonedDisk};
use super::geometry::{ZonedGeometry, SECTOR_SIZE};
use super::guest_io::{serve_data, Lane, LaneDisk, Mover};
use super::trace::{write_pointer, Observed};
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

/// Serves one data request through `lane`; with `observe`, also sees what it did to the write
/// pointer of `zone` (its zone), read before and after it. Nothing else moves that write pointer
/// meanwhile: every request to a zone goes to the same lane, and an implicit close from another
/// lane changes only the zone's condition.
fn serve_observed<S: ZoneStorage>(
    lane: &mut Lane<'_, '_, S>,
    memory: &GuestMemoryMmap,
    request: &Request,
    zone: Option<usize>,
    observe: bool,
) -> (Completion, Option<Observed>) {
    if !observe {
        return (serve_data(lane, memory, request), None);
    }
    let wp_before = lane.disk.with(|disk| write_pointer(disk.zones(), zone));
    let completion = serve_data(lane, memory, request);
    let wp_after = lane.disk.with(|disk| write_pointer(disk.zones(), zone));
    let observed = Observed {
        done: Instant::now(),
        wp_before,
        wp_after,
    };
    (completion, Some(observed))
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

    /// Serves one data request on this thread; with `observe`, says what it did to the write
    /// pointer of its zone, `zone`.
    pub(super) fn serve_alone<S: ZoneStorage>(
        &mut self,
        disk: &mut ZonedDisk<S>,
        data: Option<&DataPath>,
        memory: &GuestMemoryMmap,
        request: &Request,
        (zone, observe): (Option<usize>, bool),
    ) -> (Completion, Option<Observed>) {
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
        serve_observed(&mut lane, memory, request, zone, observe)
    }

    /// Serves `run` (request index, zone) into `out`: on this thread when the run stays in
    /// one lane, is small on buffered storage, or storage has no data path; otherwise with a
    /// thread per lane. With `observed` (a trace is kept), what each request did to its zone
    /// goes there, at the request's index.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn serve<S: ZoneStorage + Send>(
        &mut self,
        disk: &mut ZonedDisk<S>,
        data: Option<&DataPath>,
        run: &[(usize, usize)],
        requests: &[Request],
        memory: &GuestMemoryMmap,
        out: &mut [Completion],
        mut observed: Option<&mut [Option<Observed>]>,
    ) {
        let observe = observed.is_some();
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
            for &(index, zone) in run {
                let (completion, seen) =
                    self.serve_alone(disk, data, memory, &requests[index], (Some(zone), observe));
                out[index] = completion;
                if let Some(observed) = observed.as_deref_mut() {
                    observed[index] = seen;
                }
            }
            return;
        };
        let mut lanes: Vec<Vec<(usize, usize)>> = vec![Vec::new(); MAX_LANES];
        for &(index, zone) in run {
            lanes[zone % MAX_LANES].push((index, zone));
        }
        // Each lane with work, and its bounce buffer grown here for the lane's largest request:
        // the lane threads only use it (any allocation stays on this long-lived thread).
        let mut work: Vec<(&[(usize, usize)], &mut AlignedBuffer)> = Vec::with_capacity(MAX_LANES);
        for (lane, bounce) in lanes.iter().zip(self.bounces.iter_mut()) {
            if lane.is_empty() {
                continue;
            }
            let largest = lane
                .iter()
                .map(|&(index, _)| data.bounce_len(data_bytes(&requests[index])))
                .max()
                .unwrap_or(0);
            // A buffer that cannot grow here fails its requests in the lane (ENOMEM) instead.
            let _ = bounce.reserve(usize::try_from(largest).unwrap_or(usize::MAX));
            work.push((lane, bounce));
        }
        let disk = Mutex::new(&mut *disk);
        type Served = (usize, (Completion, Option<Observed>));
        let served: Vec<Served> = std::thread::scope(|scope| {
            let disk = &disk;
            let serve_lane = move |lane: &[(usize, usize)], bounce: &mut AlignedBuffer| {
                let mut access = Lane {
                    disk: LaneDisk::Shared(disk),
                    mover: Mover::Path { data, bounce },
                };
                lane.iter()
                    .map(|&(index, zone)| {
                        let request = &requests[index];
                        let served =
                            serve_observed(&mut access, memory, request, Some(zone), observe);
                        (index, served)
                    })
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
        for (index, (completion, seen)) in served {
            out[index] = completion;
            if let Some(observed) = observed.as_deref_mut() {
                observed[index] = seen;
            }
        }
    }
}
