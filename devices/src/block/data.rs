//! Moving request data between guest memory and a `BlockBackend` that has no direct path (only
//! `read_at`/`write_at`), in chunks of at most `CHUNK_BYTES` bounced through a buffer: the
//! default of `BlockBackend::read_segments`/`write_segments`. Files take the direct path in
//! `crate::file_io`. Every guest access is a checked `vm-memory` access: a bad segment is an
//! error, never a panic.

use std::io;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryError};

use super::backend::BlockBackend;
use super::request::Segment;
use crate::virtio::GuestMemoryMmap;

/// Largest chunk moved at once.
const CHUNK_BYTES: usize = 256 << 10;

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
/// `CHUNK_BYTES`, with disk offsets starting at `offset`.
fn for_each_chunk(
    segments: &[Segment],
    offset: u64,
    mut copy: impl FnMut(GuestAddress, u64, usize) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let mut disk_offset = offset;
    for segment in segments {
        let mut done: u32 = 0;
        while done < segment.len {
            let chunk = (segment.len - done).min(CHUNK_BYTES as u32);
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

/// Writes the guest bytes of `segments` to `backend` from byte `offset` on, a chunk at a time
/// through a buffer and `write_at` (what `BlockBackend::write_segments` does unless
/// overridden).
pub fn guest_to_backend<B: BlockBackend + ?Sized>(
    memory: &GuestMemoryMmap,
    segments: &[Segment],
    backend: &mut B,
    offset: u64,
) -> Result<(), DataError> {
    let mut buffer = Vec::new();
    for_each_chunk(segments, offset, |address, disk_offset, len| {
        buffer.resize(len, 0);
        memory
            .read_slice(&mut buffer, address)
            .map_err(DataError::Guest)?;
        backend
            .write_at(disk_offset, &buffer)
            .map_err(DataError::Backend)
    })
}

/// Fills the guest bytes of `segments` from `backend`, from byte `offset` on, a chunk at a time
/// through `read_at` and a buffer (what `BlockBackend::read_segments` does unless overridden).
pub fn backend_to_guest<B: BlockBackend + ?Sized>(
    memory: &GuestMemoryMmap,
    segments: &[Segment],
    backend: &mut B,
    offset: u64,
) -> Result<(), DataError> {
    let mut buffer = Vec::new();
    for_each_chunk(segments, offset, |address, disk_offset, len| {
        buffer.resize(len, 0);
        backend
            .read_at(disk_offset, &mut buffer)
            .map_err(DataError::Backend)?;
        memory
            .write_slice(&buffer, address)
            .map_err(DataError::Guest)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryBackend;
    use crate::virtio::GuestMemoryMmap;

    fn segment(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn segments_larger_than_the_bounce_buffer_move_in_chunks() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let pattern: Vec<u8> = (0..(700u32 << 10)).map(|i| (i % 251) as u8).collect();
        memory.write_slice(&pattern, GuestAddress(0x1000)).unwrap();
        let mut backend = MemoryBackend::new(2 << 20);
        let source = [
            segment(0x1000, 600 << 10),
            segment(0x1000 + (600 << 10), 100 << 10),
        ];
        guest_to_backend(&memory, &source, &mut backend, 4096).unwrap();
        assert_eq!(&backend.bytes()[4096..4096 + pattern.len()], &pattern[..]);

        let target = [segment(0x20_0000, 300 << 10), segment(0x10_0000, 400 << 10)];
        backend_to_guest(&memory, &target, &mut backend, 4096).unwrap();
        let mut first = vec![0u8; 300 << 10];
        let mut second = vec![0u8; 400 << 10];
        memory
            .read_slice(&mut first, GuestAddress(0x20_0000))
            .unwrap();
        memory
            .read_slice(&mut second, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(first, &pattern[..300 << 10]);
        assert_eq!(second, &pattern[300 << 10..]);
    }

    #[test]
    fn failures_are_errors_not_panics() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let mut backend = MemoryBackend::new(1024);
        let outside = [segment(0x800, 0x1000)];
        assert!(matches!(
            guest_to_backend(&memory, &outside, &mut backend, 0),
            Err(DataError::Guest(_))
        ));
        let inside = [segment(0, 512)];
        assert!(matches!(
            backend_to_guest(&memory, &inside, &mut backend, 1000),
            Err(DataError::Backend(_))
        ));
        assert!(matches!(
            guest_to_backend(&memory, &inside, &mut backend, u64::MAX - 10),
            Err(DataError::Backend(_)) | Err(DataError::OffsetOverflow)
        ));
    }
}
