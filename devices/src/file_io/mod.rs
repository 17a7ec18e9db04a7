//! File I/O between guest memory and a file or host block device, shared by the plain disk
//! (`block::RawFile`) and the zoned backends (`zoned::image`, `zoned::host`): a request's guest
//! segments resolved to iovecs ([`GuestBuffers`]) for one preadv/pwritev, and the sector-addressed
//! [`DataPath`] with its O_DIRECT side (aligned bounce buffers, [`AlignedBuffer`]).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::{Bytes, GuestMemory, Permissions};

use crate::block::guest::{self, bytes_to_guest};
use crate::block::Segment;
use crate::virtio::GuestMemoryMmap;

mod data_path;

pub use data_path::{AlignedBuffer, DataPath};

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
        // SAFETY: the iovecs are a GuestBuffers' own (its read_from and write_to are the only
        // callers): each describes `iov_len` bytes of a guest memory region, which stays mapped
        // while the GuestBuffers borrows the memory, so for the whole call; one adjusted after a
        // short transfer still lies inside the original. `file` keeps the descriptor open. A
        // batch holds at most IOV_MAX iovecs, so its length fits the c_int count.
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
                // SAFETY: `done` is less than this iovec's length (the branch above), so the
                // pointer moves inside the memory the iovec describes.
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
