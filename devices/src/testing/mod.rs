//! Test support shared by the unit tests, the bench crate and the fuzz targets (`fuzz/`): the
//! driver side of a split virtqueue ([`driver`]: raw ring writes as a hostile guest makes them,
//! and a well-behaved driver on top, whose rings wrap), an in-memory block backend, a byte
//! reader that turns fuzzer input into choices, and a guest memory with room for one split
//! virtqueue at fixed addresses ([`layout`]). Compiled for this crate's tests and with the
//! `test-support` (bench) or `testing` (fuzz) feature; the VMM never builds it.
//!
//! [`fuzz`] (tests and the `testing` feature) holds the body of every fuzz target as a plain
//! function, so that the fuzz crate is a thin wrapper and the committed seeds (and every crash
//! ever found) replay on stable in `cargo test`.

pub mod driver;
#[cfg(any(test, feature = "testing"))]
pub mod fuzz;

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use vm_memory::{Bytes, GuestAddress};

use crate::block::BlockBackend;
use crate::virtio::{GuestMemoryMmap, InterruptSignal};

/// Storage in a vector. With `strict`, an access outside the storage, or a write to a
/// read-only one, panics instead of failing: the devices promise to check offsets and the
/// read-only flag before calling a backend, and a fuzzer should see it when they do not.
#[derive(Debug)]
pub struct MemoryBackend {
    data: Vec<u8>,
    read_only: bool,
    strict: bool,
}

impl MemoryBackend {
    /// `size` zero bytes of writable storage whose bad accesses are I/O errors.
    pub fn new(size: usize) -> Self {
        MemoryBackend {
            data: vec![0; size],
            read_only: false,
            strict: false,
        }
    }

    /// Storage whose out-of-range accesses and forbidden writes panic (see the type's doc).
    pub fn strict(size: usize, read_only: bool) -> Self {
        MemoryBackend {
            data: vec![0; size],
            read_only,
            strict: true,
        }
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The stored bytes, to prepare a test.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<Range<usize>> {
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(len)?))
            .filter(|range| range.end <= self.data.len());
        match range {
            Some(range) => Ok(range),
            None if self.strict => panic!(
                "backend access of {len} bytes at {offset} outside {} bytes",
                self.data.len()
            ),
            None => Err(io::Error::other("out of range")),
        }
    }
}

impl BlockBackend for MemoryBackend {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let range = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data[range]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            assert!(!self.strict, "write to a read-only backend");
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        let range = self.range(offset, buf.len())?;
        self.data[range].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads fuzzer input front to back. Past the end every read returns zeros, so a decoder
/// never fails and every input means something.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `len` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        taken
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let taken = self.bytes(N);
        out[..taken.len()].copy_from_slice(taken);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// One of `choices`, picked by the next byte.
    pub fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[usize::from(self.u8()) % choices.len()]
    }
}

/// Guest memory layout of the fuzz harness: a 1 MiB region at 0 holding the ring and request
/// buffers, a hole, and a second small region, so that buffers can straddle a hole.
pub mod layout {
    use vm_memory::GuestAddress;

    use super::driver::RingAddresses;

    /// Size of the region at address 0.
    pub const LOW_SIZE: u64 = 0x10_0000;
    /// Start of the second region (a 64 KiB hole lies before it).
    pub const HIGH_START: u64 = LOW_SIZE + 0x1_0000;
    /// Size of the second region.
    pub const HIGH_SIZE: u64 = 0x1_0000;
    /// Descriptor table (16 bytes per entry, up to 256 entries).
    pub const DESC_TABLE: u64 = 0;
    /// Available ring.
    pub const AVAIL_RING: u64 = 0x1000;
    /// Used ring.
    pub const USED_RING: u64 = 0x2000;
    /// The three above, for a [`super::driver::SplitRing`].
    pub const RINGS: RingAddresses = RingAddresses {
        desc_table: GuestAddress(DESC_TABLE),
        avail_ring: GuestAddress(AVAIL_RING),
        used_ring: GuestAddress(USED_RING),
    };
    /// Where request headers go.
    pub const HEADER: u64 = 0x3000;
    /// Where status bytes go.
    pub const STATUS: u64 = 0x3800;
    /// Start of the data area, which runs to the end of the low region.
    pub const DATA: u64 = 0x4000;
}

/// The two-region guest memory of [`layout`].
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), layout::LOW_SIZE as usize),
        (GuestAddress(layout::HIGH_START), layout::HIGH_SIZE as usize),
    ])
    .expect("the test guest memory layout is valid")
}

/// Counts interrupts instead of raising them.
#[derive(Debug, Default)]
pub struct CountingInterrupt {
    pub used: AtomicUsize,
    pub config: AtomicUsize,
}

impl InterruptSignal for CountingInterrupt {
    fn signal_used_queue(&self, _queue_index: u16) -> io::Result<()> {
        self.used.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn signal_config_change(&self) -> io::Result<()> {
        self.config.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Writes a virtio-blk request header (type, reserved, sector) at `addr`.
pub fn write_request_header(memory: &GuestMemoryMmap, addr: u64, request_type: u32, sector: u64) {
    let mut bytes = [0u8; crate::block::request::HEADER_SIZE];
    bytes[..4].copy_from_slice(&request_type.to_le_bytes());
    bytes[8..].copy_from_slice(&sector.to_le_bytes());
    let _ = memory.write_slice(&bytes, GuestAddress(addr));
}
