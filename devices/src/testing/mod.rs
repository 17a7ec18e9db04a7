//! Test support shared by the unit tests, the bench crate and the fuzz targets (`fuzz/`): the
//! driver side of a split virtqueue ([`driver`], whose rings wrap, for benches and device
//! tests), an in-memory block backend, a byte reader that turns fuzzer input into choices, and a
//! guest memory with one split virtqueue at fixed addresses ([`SplitRing`], written descriptor
//! by descriptor, as a fuzzer needs). Compiled for this crate's tests and with the
//! `test-support` (bench) or `testing` (fuzz) feature; the VMM never builds it.
//!
//! [`fuzz`] (tests and the `testing` feature) holds the body of every fuzz target as a plain function, so that the fuzz crate is
//! a thin wrapper and the committed seeds (and every crash ever found) replay on stable in
//! `cargo test`.

pub mod driver;
#[cfg(any(test, feature = "testing"))]
pub mod fuzz;

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
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

/// Guest memory layout of the [`SplitRing`] harness: a 1 MiB region at 0 holding the ring and
/// request buffers, a hole, and a second small region, so that buffers can straddle a hole.
pub mod layout {
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

/// One split virtqueue in guest memory at the [`layout`] addresses, written the way a driver
/// writes it: raw descriptors, available ring entries and index. Nothing is validated, so a
/// test (or a fuzzer) can write whatever a hostile guest could.
#[derive(Debug)]
pub struct SplitRing {
    memory: GuestMemoryMmap,
    size: u16,
    avail_idx: u16,
    next_descriptor: u16,
}

/// Byte offsets inside the split rings (virtio 1.x §2.7).
const RING_IDX_OFFSET: u64 = 2;
const RING_ENTRIES_OFFSET: u64 = 4;
const DESCRIPTOR_SIZE: u64 = 16;

impl SplitRing {
    /// A ring of `size` entries (the caller picks any number; a queue refuses sizes that are
    /// not powers of two) in `memory`, with empty rings.
    pub fn new(memory: &GuestMemoryMmap, size: u16) -> Self {
        SplitRing {
            memory: memory.clone(),
            size,
            avail_idx: 0,
            next_descriptor: 0,
        }
    }

    /// Number of ring entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// A ready queue as the device gets it after DRIVER_OK.
    pub fn queue(&self, max_size: u16, event_idx: bool) -> Option<Queue> {
        let mut queue = Queue::new(max_size).ok()?;
        queue.set_size(self.size);
        let halves = |address: u64| (Some(address as u32), Some((address >> 32) as u32));
        let (low, high) = halves(layout::DESC_TABLE);
        queue.set_desc_table_address(low, high);
        let (low, high) = halves(layout::AVAIL_RING);
        queue.set_avail_ring_address(low, high);
        let (low, high) = halves(layout::USED_RING);
        queue.set_used_ring_address(low, high);
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        Some(queue)
    }

    /// Writes descriptor `index` of the table (indices past the queue size write past the
    /// table, as a driver could).
    pub fn write_descriptor(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; DESCRIPTOR_SIZE as usize];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let at = layout::DESC_TABLE + u64::from(index) * DESCRIPTOR_SIZE;
        // The table lies inside the low region for every u16 index.
        let _ = self.memory.write_slice(&raw, GuestAddress(at));
    }

    /// Puts `head` into the next available ring slot and publishes it.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size.max(1));
        let at = layout::AVAIL_RING + RING_ENTRIES_OFFSET + 2 * slot;
        let _ = self.memory.write_obj(head, GuestAddress(at));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Writes the available index as is (a garbage index breaks the queue).
    pub fn set_avail_idx(&self, idx: u16) {
        let at = layout::AVAIL_RING + RING_IDX_OFFSET;
        let _ = self.memory.write_obj(idx, GuestAddress(at));
    }

    /// Writes the available ring's flags (e.g. VRING_AVAIL_F_NO_INTERRUPT).
    pub fn set_avail_flags(&self, flags: u16) {
        let _ = self
            .memory
            .write_obj(flags, GuestAddress(layout::AVAIL_RING));
    }

    /// The used index the device wrote.
    pub fn used_idx(&self) -> u16 {
        let at = layout::USED_RING + RING_IDX_OFFSET;
        self.memory.read_obj(GuestAddress(at)).unwrap_or(0)
    }

    /// The length the device reported in used ring slot `position` (an index, not modulo).
    pub fn used_len(&self, position: u16) -> u32 {
        let slot = u64::from(position % self.size.max(1));
        let at = layout::USED_RING + RING_ENTRIES_OFFSET + 8 * slot + 4;
        self.memory.read_obj(GuestAddress(at)).unwrap_or(0)
    }

    /// Writes `parts` (address, length, device-writable) as one chain in consecutive
    /// descriptors (wrapping around the table) and publishes its head. Returns the head.
    pub fn add_chain(&mut self, parts: &[(u64, u32, bool)]) -> u16 {
        let size = self.size.max(1);
        let head = self.next_descriptor % size;
        let mut index = head;
        for (i, &(addr, len, writable)) in parts.iter().enumerate() {
            let next = (index + 1) % size;
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < parts.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_descriptor(index, addr, len, flags as u16, next);
            index = next;
        }
        self.next_descriptor = index;
        self.publish(head);
        head
    }

    /// Forgets what was published, as a driver does when it sets the queue up again.
    pub fn clear(&mut self) {
        self.avail_idx = 0;
        self.next_descriptor = 0;
        self.set_avail_idx(0);
        let _ = self
            .memory
            .write_obj(0u16, GuestAddress(layout::USED_RING + RING_IDX_OFFSET));
    }
}

/// Writes a virtio-blk request header (type, reserved, sector) at `addr`.
pub fn write_request_header(memory: &GuestMemoryMmap, addr: u64, request_type: u32, sector: u64) {
    let mut bytes = [0u8; crate::block::request::HEADER_SIZE];
    bytes[..4].copy_from_slice(&request_type.to_le_bytes());
    bytes[8..].copy_from_slice(&sector.to_le_bytes());
    let _ = memory.write_slice(&bytes, GuestAddress(addr));
}
