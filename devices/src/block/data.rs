//! Moving request data between guest memory and a backend. Data goes through a bounded bounce
//! buffer, so a request of any size costs at most `BOUNCE_BYTES` of host memory, and every guest
//! access is a checked `vm-memory` access: a bad segment is an error, never a panic.

use std::io;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use super::backend::BlockBackend;
use super::request::Segment;

/// Largest chunk copied at once.
const BOUNCE_BYTES: usize = 256 << 10;

/// Why data could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Guest memory could not be accessed.
    #[error("guest memory cannot be accessed")]
    Guest(#[source] GuestMemoryError),
    /// The backend failed.
    #[error("the backend I/O failed")]
    Backend(#[source] io::Error),
    /// A byte offset overflowed.
    #[error("the disk offset overflows")]
    OffsetOverflow,
}

/// Calls `copy(guest_address, disk_offset, chunk_len)` over `segments` in chunks of at most
/// `BOUNCE_BYTES`, with disk offsets starting at `offset`.
fn for_each_chunk(
    segments: &[Segment],
    offset: u64,
    mut copy: impl FnMut(GuestAddress, u64, usize) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let mut disk_offset = offset;
    for segment in segments {
        let mut done: u32 = 0;
        while done < segment.len {
            let chunk = (segment.len - done).min(BOUNCE_BYTES as u32);
            let address = segment
                .addr
                .checked_add(u64::from(done))
                .ok_or(DataError::Guest(GuestMemoryError::InvalidGuestAddress(
                    segment.addr,
                )))?;
            copy(address, disk_offset, chunk as usize)?;
            done += chunk;
            disk_offset = disk_offset
                .checked_add(u64::from(chunk))
                .ok_or(DataError::OffsetOverflow)?;
        }
    }
    Ok(())
}

fn bounce_buffer(segments: &[Segment]) -> Vec<u8> {
    let largest = segments.iter().map(|s| s.len as usize).max().unwrap_or(0);
    vec![0; largest.min(BOUNCE_BYTES)]
}

/// Writes the guest bytes of `segments` to `backend` from byte `offset` on.
pub fn guest_to_backend<M: GuestMemory + ?Sized>(
    memory: &M,
    segments: &[Segment],
    backend: &mut dyn BlockBackend,
    offset: u64,
) -> Result<(), DataError> {
    let mut buffer = bounce_buffer(segments);
    for_each_chunk(segments, offset, |address, disk_offset, len| {
        let chunk = buffer.get_mut(..len).ok_or(DataError::OffsetOverflow)?;
        memory
            .read_slice(chunk, address)
            .map_err(DataError::Guest)?;
        backend
            .write_at(disk_offset, chunk)
            .map_err(DataError::Backend)
    })
}

/// Fills the guest bytes of `segments` from `backend`, from byte `offset` on.
pub fn backend_to_guest<M: GuestMemory + ?Sized>(
    memory: &M,
    segments: &[Segment],
    backend: &mut dyn BlockBackend,
    offset: u64,
) -> Result<(), DataError> {
    let mut buffer = bounce_buffer(segments);
    for_each_chunk(segments, offset, |address, disk_offset, len| {
        let chunk = buffer.get_mut(..len).ok_or(DataError::OffsetOverflow)?;
        backend
            .read_at(disk_offset, chunk)
            .map_err(DataError::Backend)?;
        memory.write_slice(chunk, address).map_err(DataError::Guest)
    })
}

/// Writes `bytes` into `segments` as far as they reach; returns how many bytes were written.
pub fn bytes_to_guest<M: GuestMemory + ?Sized>(
    memory: &M,
    segments: &[Segment],
    bytes: &[u8],
) -> Result<usize, DataError> {
    let mut written = 0;
    for segment in segments {
        let Some(rest) = bytes.get(written..).filter(|rest| !rest.is_empty()) else {
            break;
        };
        let count = rest.len().min(segment.len as usize);
        memory
            .write_slice(&rest[..count], segment.addr)
            .map_err(DataError::Guest)?;
        written += count;
    }
    Ok(written)
}
