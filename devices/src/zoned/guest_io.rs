//! Moving the data of IN, OUT and ZONE_APPEND between guest memory and a zoned disk's storage:
//! a read takes the parts below the write pointers from storage and zero-fills the rest; a
//! write or append reserves its sectors in the zone state first, moves the data, and only a
//! failure goes back to the zone state (to roll the reservation back). This is the one path
//! every data request takes, alone or in a lane of a batch (`lanes`).

use std::borrow::Cow;
use std::sync::Mutex;

use log::warn;
use vm_memory::{Address, Bytes};

use super::disk::{sectors_of, Reservation, ZoneStorage, ZonedDisk};
use super::geometry::SECTOR_SIZE;
use super::state::ZoneError;
use super::wire::{self, status};
use crate::block::guest::bytes_to_guest;
use crate::block::request::APPEND_SECTOR_BYTES;
use crate::block::{Completion, Request, RequestType, Segment};
use crate::file_io::GuestBuffers;
use crate::file_io::{AlignedBuffer, DataPath};
use crate::virtio::GuestMemoryMmap;

/// How a request reaches the zone state.
pub(super) enum LaneDisk<'a, S> {
    /// Served on the serving thread, the only one at work: no lock needed.
    Alone(&'a mut ZonedDisk<S>),
    /// One of the lanes of a parallel run, which share the zone state behind a lock.
    Shared(&'a Mutex<&'a mut ZonedDisk<S>>),
}

impl<S> LaneDisk<'_, S> {
    /// Runs `f` on the zone state, holding the lock for its duration if the state is shared.
    pub(super) fn with<R>(&mut self, f: impl FnOnce(&mut ZonedDisk<S>) -> R) -> R {
        match self {
            LaneDisk::Alone(disk) => f(disk),
            // A panicking lane leaves no half-made state change (the lock is held only around
            // whole state-machine calls), so a poisoned lock is still consistent.
            LaneDisk::Shared(shared) => f(&mut shared
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())),
        }
    }
}

/// How data reaches storage.
pub(super) enum Mover<'a, 'b> {
    /// The storage's shared data path (from any thread), straight between guest memory and
    /// storage, with the lane's O_DIRECT bounce buffer.
    Path {
        data: &'a DataPath,
        bounce: &'b mut AlignedBuffer,
    },
    /// Storage without a data path: its own `read` and `write`, through a copy, on the serving
    /// thread (`LaneDisk::Alone`).
    Storage,
}

/// What serves one data request: the zone state and the way to storage.
pub(super) struct Lane<'a, 'b, S> {
    pub(super) disk: LaneDisk<'a, S>,
    pub(super) mover: Mover<'a, 'b>,
}

/// Serves IN, OUT or ZONE_APPEND through `lane`.
pub(super) fn serve_data<S: ZoneStorage>(
    lane: &mut Lane<'_, '_, S>,
    memory: &GuestMemoryMmap,
    request: &Request,
) -> Completion {
    if !request.data_fits_type() {
        return Completion::with_status(status::IOERR);
    }
    match request.kind {
        RequestType::In => match lane.read(memory, request) {
            // At most MAX_REQUEST_DATA_BYTES.
            Ok(()) => Completion::ok(u32::try_from(request.writable_len()).unwrap_or(u32::MAX)),
            Err(error) => Completion::with_status(error.status()),
        },
        RequestType::Out => Completion::with_status(wire::status_of(&lane.write(memory, request))),
        _ => match lane.append(memory, request) {
            // The landed sector goes into the first 8 device-writable bytes.
            Ok(sector) => match bytes_to_guest(memory, &request.writable, &sector.to_le_bytes()) {
                Ok(_) => Completion::ok(APPEND_SECTOR_BYTES as u32),
                Err(_) => Completion::with_status(status::IOERR),
            },
            Err(error) => Completion::with_status(error.status()),
        },
    }
}

impl<S: ZoneStorage> Lane<'_, '_, S> {
    /// IN: the parts of the range below a write pointer from storage, zeros elsewhere.
    fn read(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Result<(), ZoneError> {
        let (sector, len) = (request.sector, request.writable_len());
        let parts = self
            .disk
            .with(|disk| disk.check_read(sector, sectors_of(len)?))?;
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
                self.read_stored(memory, part.sector, &target)?;
            } else {
                zero_fill(memory, &target)?;
            }
        }
        Ok(())
    }

    /// Fills `target` from storage at `sector`.
    fn read_stored(
        &mut self,
        memory: &GuestMemoryMmap,
        sector: u64,
        target: &[Segment],
    ) -> Result<(), ZoneError> {
        let buffers = GuestBuffers::new(memory, target).map_err(|_| ZoneError::Io)?;
        let read = match &mut self.mover {
            Mover::Path { data, bounce } => data.read_into_guest(sector, &buffers, bounce),
            Mover::Storage => {
                let mut bytes = vec![0u8; buffers.len()];
                self.disk
                    .with(|disk| disk.storage_mut().read(sector, &mut bytes))
                    .and_then(|()| buffers.copy_in(&bytes))
            }
        };
        read.map_err(|error| {
            warn!(
                "zoned disk: read of {} bytes at sector {sector} failed: {error}",
                buffers.len()
            );
            ZoneError::Io
        })
    }

    /// OUT: the request's data at its sector.
    fn write(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Result<(), ZoneError> {
        let buffers = GuestBuffers::new(memory, &request.readable).map_err(|_| ZoneError::Io)?;
        let nr_sectors = sectors_of(buffers.len() as u64)?;
        let reservation = self
            .disk
            .with(|disk| disk.reserve_write(request.sector, nr_sectors))?;
        self.store(reservation, &buffers).map(|_| ())
    }

    /// ZONE_APPEND: the request's data to the zone starting at its sector; returns where it
    /// landed.
    fn append(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Result<u64, ZoneError> {
        let buffers = GuestBuffers::new(memory, &request.readable).map_err(|_| ZoneError::Io)?;
        let nr_sectors = sectors_of(buffers.len() as u64)?;
        let reservation = self
            .disk
            .with(|disk| disk.reserve_append(request.sector, nr_sectors))?;
        self.store(reservation, &buffers)
    }

    /// Moves the reserved write's data (resolved in guest memory before the zone state was
    /// touched, so a bad address failed the request whole) and settles the reservation: returns
    /// where the data landed. Only a failure needs the zone state again.
    fn store(
        &mut self,
        reservation: Reservation,
        buffers: &GuestBuffers<'_>,
    ) -> Result<u64, ZoneError> {
        if reservation.nr_sectors == 0 {
            return Ok(reservation.landed());
        }
        let sector = reservation.sector;
        let stored = match &mut self.mover {
            Mover::Path { data, bounce } => data.write_from_guest(sector, buffers, bounce),
            Mover::Storage => {
                let mut bytes = vec![0u8; buffers.len()];
                buffers.copy_out(&mut bytes).and_then(|()| {
                    self.disk
                        .with(|disk| disk.storage_mut().write(sector, &bytes))
                })
            }
        };
        match stored {
            Ok(()) => Ok(reservation.landed()),
            Err(error) => {
                warn!(
                    "zoned disk: write of {} bytes at sector {sector} failed: {error}",
                    buffers.len()
                );
                self.disk
                    .with(|disk| disk.complete(reservation, Err(error)))
            }
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

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;

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
}
