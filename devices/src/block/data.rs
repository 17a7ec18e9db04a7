//! Moving request data between guest memory and a backend, in chunks of at most `CHUNK_BYTES`
//! (a backend without a direct path bounces each chunk through a buffer that size). Every guest
//! access is a checked `vm-memory` access: a bad segment is an error, never a panic.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions};

use super::backend::BlockBackend;
use super::guest;
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
/// through `write_from_guest` (what `BlockBackend::write_segments` does unless overridden).
pub fn guest_to_backend<B: BlockBackend + ?Sized>(
    memory: &GuestMemoryMmap,
    segments: &[Segment],
    backend: &mut B,
    offset: u64,
) -> Result<(), DataError> {
    for_each_chunk(segments, offset, |address, disk_offset, len| {
        backend.write_from_guest(memory, address, len, disk_offset)
    })
}

/// Fills the guest bytes of `segments` from `backend`, from byte `offset` on, a chunk at a time
/// through `read_into_guest` (what `BlockBackend::read_segments` does unless overridden).
pub fn backend_to_guest<B: BlockBackend + ?Sized>(
    memory: &GuestMemoryMmap,
    segments: &[Segment],
    backend: &mut B,
    offset: u64,
) -> Result<(), DataError> {
    for_each_chunk(segments, offset, |address, disk_offset, len| {
        backend.read_into_guest(memory, address, len, disk_offset)
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

/// EINVAL: a buffer outside guest memory, or an offset that does not fit.
pub(crate) fn invalid_input() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// Iovecs kept inline: a request's data is almost always a few segments in one region.
const INLINE_IOVECS: usize = 4;

/// The iovecs of a request, inline up to `INLINE_IOVECS`.
enum Iovecs {
    Inline {
        count: usize,
        items: [libc::iovec; INLINE_IOVECS],
    },
    Heap(Vec<libc::iovec>),
}

impl Iovecs {
    fn new() -> Self {
        Iovecs::Inline {
            count: 0,
            items: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; INLINE_IOVECS],
        }
    }

    fn push(&mut self, iovec: libc::iovec) {
        match self {
            Iovecs::Inline { count, items } if *count < INLINE_IOVECS => {
                items[*count] = iovec;
                *count += 1;
            }
            Iovecs::Inline { items, .. } => {
                let mut all = items.to_vec();
                all.push(iovec);
                *self = Iovecs::Heap(all);
            }
            Iovecs::Heap(all) => all.push(iovec),
        }
    }

    fn as_slice(&self) -> &[libc::iovec] {
        match self {
            Iovecs::Inline { count, items } => &items[..*count],
            Iovecs::Heap(all) => all,
        }
    }
}

/// Guest buffers resolved to host memory: the iovecs of a request's data segments, checked
/// against guest memory before any I/O starts.
pub struct GuestBuffers<'m> {
    iovecs: Iovecs,
    len: usize,
    memory: &'m GuestMemoryMmap,
    segments: &'m [Segment],
}

impl<'m> GuestBuffers<'m> {
    /// Writes the buffers, in order, to `file` at byte `offset` (pwritev).
    pub fn write_to(&self, file: &File, offset: u64) -> io::Result<()> {
        vectored_at(file, self.iovecs.as_slice(), offset, true)
    }

    /// Fills the buffers, in order, from `file` at byte `offset` (preadv).
    pub fn read_from(&self, file: &File, offset: u64) -> io::Result<()> {
        vectored_at(file, self.iovecs.as_slice(), offset, false)
    }

    /// Resolves `segments`; an address outside guest memory is an error.
    pub fn new(memory: &'m GuestMemoryMmap, segments: &'m [Segment]) -> io::Result<Self> {
        let mut iovecs = Iovecs::new();
        let mut len = 0usize;
        for segment in segments {
            if segment.len == 0 {
                continue;
            }
            // Usually the segment lies in one region.
            if let Some(slice) = guest::region_slice(memory, segment.addr, segment.len as usize) {
                iovecs.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
                len += slice.len();
                continue;
            }
            let slices = memory
                .get_slices(segment.addr, segment.len as usize, Permissions::ReadWrite)
                .map_err(|_| invalid_input())?;
            for slice in slices {
                let slice = slice.map_err(|_| invalid_input())?;
                // GuestMemoryMmap regions are plain mappings that live as long as the memory
                // (borrowed for 'm), so the pointer stays valid after the guard is gone.
                let base = slice.ptr_guard_mut().as_ptr();
                iovecs.push(libc::iovec {
                    iov_base: base.cast(),
                    iov_len: slice.len(),
                });
                len += slice.len();
            }
        }
        Ok(GuestBuffers {
            iovecs,
            len,
            memory,
            segments,
        })
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the buffers out, in order (for O_DIRECT, which needs aligned memory).
    pub fn copy_out(&self, into: &mut [u8]) -> io::Result<()> {
        let mut at = 0;
        for segment in self.segments {
            let end = at + segment.len as usize;
            let part = into.get_mut(at..end).ok_or_else(invalid_input)?;
            self.memory
                .read_slice(part, segment.addr)
                .map_err(|_| invalid_input())?;
            at = end;
        }
        Ok(())
    }

    /// Copies `bytes` in, in order.
    pub fn copy_in(&self, bytes: &[u8]) -> io::Result<()> {
        bytes_to_guest(self.memory, self.segments, bytes)
            .map(|_| ())
            .map_err(|_| invalid_input())
    }
}

/// Most iovecs one preadv/pwritev call takes (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

/// pwritev/preadv of all of `iovecs` at `offset`, resuming after short transfers. A single
/// buffer (the usual small request) goes through pwrite/pread, which spare the kernel copying
/// in and checking an iovec array.
fn vectored_at(
    file: &File,
    iovecs: &[libc::iovec],
    mut offset: u64,
    write: bool,
) -> io::Result<()> {
    // Borrowed: only a transfer that stops inside an iovec needs a copy to adjust.
    let mut iovecs = std::borrow::Cow::Borrowed(iovecs);
    let mut first = 0;
    while first < iovecs.len() {
        let batch = &iovecs[first..(first + IOV_MAX).min(iovecs.len())];
        let at = libc::off_t::try_from(offset).map_err(|_| invalid_input())?;
        let fd = file.as_raw_fd();
        // SAFETY: every iovec points into guest memory borrowed by the caller's GuestBuffers
        // for the whole call, with its length; the count is at most IOV_MAX.
        let done = unsafe {
            match (batch, write) {
                ([one], true) => libc::pwrite(fd, one.iov_base, one.iov_len, at),
                ([one], false) => libc::pread(fd, one.iov_base, one.iov_len, at),
                (_, true) => libc::pwritev(fd, batch.as_ptr(), batch.len() as i32, at),
                (_, false) => libc::preadv(fd, batch.as_ptr(), batch.len() as i32, at),
            }
        };
        if done < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if done == 0 {
            return Err(if write {
                io::ErrorKind::WriteZero.into()
            } else {
                io::ErrorKind::UnexpectedEof.into()
            });
        }
        let mut done = done as usize;
        offset += done as u64;
        while done > 0 {
            if done >= iovecs[first].iov_len {
                done -= iovecs[first].iov_len;
                first += 1;
            } else {
                let iovec = &mut iovecs.to_mut()[first];
                // SAFETY: stays inside the same iovec's memory.
                iovec.iov_base = unsafe { iovec.iov_base.cast::<u8>().add(done) }.cast();
                iovec.iov_len -= done;
                done = 0;
            }
        }
        while first < iovecs.len() && iovecs[first].iov_len == 0 {
            first += 1;
        }
    }
    Ok(())
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

    #[test]
    fn bytes_fill_segments_as_far_as_they_reach() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let written =
            bytes_to_guest(&memory, &[segment(0x10, 3), segment(0x20, 10)], b"abcdefgh").unwrap();
        assert_eq!(written, 8);
        let mut out = [0u8; 5];
        memory.read_slice(&mut out, GuestAddress(0x20)).unwrap();
        assert_eq!(&out, b"defgh");
        assert_eq!(bytes_to_guest(&memory, &[], b"abc").unwrap(), 0);
        assert_eq!(bytes_to_guest(&memory, &[segment(0, 4)], b"").unwrap(), 0);
    }
}
