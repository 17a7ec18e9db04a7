//! The driver side of a split virtqueue, for exercising a device model without a guest, in two
//! layers over one ring layout:
//!
//! - [`SplitRing`] writes descriptors and available ring entries exactly as told and reads the
//!   used ring, validating nothing, so a test or a fuzzer (`testing::fuzz`) can write whatever
//!   a hostile guest could.
//! - [`SplitQueueDriver`] is a well-behaved driver built on it, for benches (the `bench` crate)
//!   and device tests: it takes descriptors from a free list, makes chains available and
//!   collects what the device put in the used ring. Unlike `virtio_queue::mock::MockSplitQueue`,
//!   the rings wrap and descriptors are recycled, so any number of requests can go through one
//!   queue.
//!
//! Both write with plain stores into the region (`guest::write`), as a guest driver does, so the
//! driver's side weighs little in a bench. Only in this crate's tests and with the
//! `test-support` or `testing` feature: the VMM never drives a queue from the driver side.

use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryError};

use crate::block::guest;
use crate::virtio::GuestMemoryMmap;

/// Byte layout of a split virtqueue (virtio 1.x §2.7): a table of 16-byte descriptors (le64
/// addr, le32 len, le16 flags, le16 next); an available ring of le16 flags, le16 idx, le16
/// entries and a le16 used_event; a used ring, 4-byte aligned, of le16 flags, le16 idx, 8-byte
/// entries (le32 id, le32 len) and a le16 avail_event.
const DESCRIPTOR_BYTES: u64 = 16;
const DESCRIPTOR_NEXT_OFFSET: u64 = 14;
const RING_IDX_OFFSET: u64 = 2;
const RING_ENTRIES_OFFSET: u64 = 4;
const AVAIL_ENTRY_BYTES: u64 = 2;
const USED_ENTRY_BYTES: u64 = 8;
const RING_EVENT_BYTES: u64 = 2;
const USED_RING_ALIGNMENT: u64 = 4;

/// Where the three parts of a split virtqueue lie in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingAddresses {
    pub desc_table: GuestAddress,
    pub avail_ring: GuestAddress,
    pub used_ring: GuestAddress,
}

impl RingAddresses {
    /// The parts of a queue of `size` entries back to back from `base` (16-byte aligned): the
    /// table, the available ring, then the used ring at the next 4-byte boundary.
    pub fn packed(base: GuestAddress, size: u16) -> Self {
        let avail_ring = base.unchecked_add(u64::from(size) * DESCRIPTOR_BYTES);
        let avail_end = avail_ring.raw_value()
            + RING_ENTRIES_OFFSET
            + AVAIL_ENTRY_BYTES * u64::from(size)
            + RING_EVENT_BYTES;
        RingAddresses {
            desc_table: base,
            avail_ring,
            used_ring: GuestAddress(avail_end.next_multiple_of(USED_RING_ALIGNMENT)),
        }
    }
}

/// One buffer of a chain: where, how long, and whether the device writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
    pub device_writable: bool,
}

impl Buffer {
    pub fn readable(addr: GuestAddress, len: u32) -> Self {
        Buffer {
            addr,
            len,
            device_writable: false,
        }
    }

    pub fn writable(addr: GuestAddress, len: u32) -> Self {
        Buffer {
            addr,
            len,
            device_writable: true,
        }
    }

    /// The descriptor flags of this buffer in a chain, `chained` if another one follows.
    fn flags(&self, chained: bool) -> u16 {
        let mut flags = if self.device_writable {
            VRING_DESC_F_WRITE
        } else {
            0
        };
        if chained {
            flags |= VRING_DESC_F_NEXT;
        }
        flags as u16
    }
}

/// A used ring entry as the device wrote it: the id need not name any chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElement {
    pub id: u32,
    pub len: u32,
}

/// One split virtqueue in guest memory, written the way a driver writes it: raw descriptors,
/// available ring entries, flags and index. Nothing is validated: descriptor indices past the
/// queue size write past the table, any head can be published, any index set.
#[derive(Debug)]
pub struct SplitRing {
    memory: GuestMemoryMmap,
    addresses: RingAddresses,
    size: u16,
    /// The available index: entries published so far, modulo 2^16.
    avail_idx: u16,
    /// Where [`SplitRing::add_chain`] puts the next chain.
    next_descriptor: u16,
}

impl SplitRing {
    /// A ring of `size` entries (the caller picks any number; a queue refuses sizes that are
    /// not powers of two) at `addresses` in `memory`. Nothing is written: the rings are as
    /// memory holds them until [`SplitRing::clear`].
    pub fn new(memory: &GuestMemoryMmap, addresses: RingAddresses, size: u16) -> Self {
        SplitRing {
            memory: memory.clone(),
            addresses,
            size,
            avail_idx: 0,
            next_descriptor: 0,
        }
    }

    /// Number of ring entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The available index last published.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// A ready queue on these rings, as the device gets it after DRIVER_OK. A size the queue
    /// refuses is logged and leaves the queue at `max_size`, as a transport would hand it over.
    pub fn queue(&self, max_size: u16, event_idx: bool) -> Result<Queue, virtio_queue::Error> {
        let mut queue = Queue::new(max_size)?;
        queue.try_set_desc_table_address(self.addresses.desc_table)?;
        queue.try_set_avail_ring_address(self.addresses.avail_ring)?;
        queue.try_set_used_ring_address(self.addresses.used_ring)?;
        queue.set_size(self.size);
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        Ok(queue)
    }

    /// Writes descriptor `index` of the table (indices past the queue size write past the
    /// table, as a driver could).
    pub fn write_descriptor(
        &self,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<(), GuestMemoryError> {
        let mut raw = [0u8; DESCRIPTOR_BYTES as usize];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        guest::write(&self.memory, self.descriptor(index), &raw)
    }

    /// The `next` field of descriptor `index`.
    pub fn descriptor_next(&self, index: u16) -> Result<u16, GuestMemoryError> {
        let at = self.descriptor(index).unchecked_add(DESCRIPTOR_NEXT_OFFSET);
        self.read(at).map(u16::from_le_bytes)
    }

    /// Writes `buffers` as one chain in consecutive descriptors from where the last one ended
    /// (wrapping around the table, overwriting its own start if it is longer than the queue)
    /// and publishes its head, even for an empty chain. Returns the head.
    pub fn add_chain(&mut self, buffers: &[Buffer]) -> Result<u16, GuestMemoryError> {
        let size = self.size.max(1);
        let head = self.next_descriptor % size;
        let mut index = head;
        for (position, buffer) in buffers.iter().enumerate() {
            let next = (index + 1) % size;
            let flags = buffer.flags(position + 1 < buffers.len());
            self.write_descriptor(index, buffer.addr.raw_value(), buffer.len, flags, next)?;
            index = next;
        }
        self.next_descriptor = index;
        self.publish(head)?;
        Ok(head)
    }

    /// Puts `head` into the next available ring slot and publishes it.
    pub fn publish(&mut self, head: u16) -> Result<(), GuestMemoryError> {
        let at = self.ring_entry(self.addresses.avail_ring, AVAIL_ENTRY_BYTES, self.avail_idx);
        guest::write(&self.memory, at, &head.to_le_bytes())?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The ring entry must be visible before the index that publishes it.
        fence(Ordering::Release);
        self.set_avail_idx(self.avail_idx)
    }

    /// Writes the available index as is (a garbage index breaks the queue).
    pub fn set_avail_idx(&self, idx: u16) -> Result<(), GuestMemoryError> {
        let at = self.addresses.avail_ring.unchecked_add(RING_IDX_OFFSET);
        guest::write(&self.memory, at, &idx.to_le_bytes())
    }

    /// Writes the available ring's flags (e.g. VRING_AVAIL_F_NO_INTERRUPT).
    pub fn set_avail_flags(&self, flags: u16) -> Result<(), GuestMemoryError> {
        guest::write(
            &self.memory,
            self.addresses.avail_ring,
            &flags.to_le_bytes(),
        )
    }

    /// The used index the device wrote. The entries below it are read after it.
    pub fn used_idx(&self) -> Result<u16, GuestMemoryError> {
        let at = self.addresses.used_ring.unchecked_add(RING_IDX_OFFSET);
        let idx = self.read(at).map(u16::from_le_bytes)?;
        fence(Ordering::Acquire);
        Ok(idx)
    }

    /// The used ring entry the device wrote at `position` (an index, not modulo the size).
    pub fn used_element(&self, position: u16) -> Result<UsedElement, GuestMemoryError> {
        let at = self.ring_entry(self.addresses.used_ring, USED_ENTRY_BYTES, position);
        let [i0, i1, i2, i3, l0, l1, l2, l3] = self.read(at)?;
        Ok(UsedElement {
            id: u32::from_le_bytes([i0, i1, i2, i3]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
        })
    }

    /// Forgets what was published, as a driver does when it sets the queue up again: both
    /// indices back to zero (the flags stay as they are).
    pub fn clear(&mut self) -> Result<(), GuestMemoryError> {
        self.avail_idx = 0;
        self.next_descriptor = 0;
        self.set_avail_idx(0)?;
        let at = self.addresses.used_ring.unchecked_add(RING_IDX_OFFSET);
        guest::write(&self.memory, at, &0u16.to_le_bytes())
    }

    fn descriptor(&self, index: u16) -> GuestAddress {
        self.addresses
            .desc_table
            .unchecked_add(u64::from(index) * DESCRIPTOR_BYTES)
    }

    /// The entry of `ring` (available or used) that index `position` lands on.
    fn ring_entry(&self, ring: GuestAddress, entry_bytes: u64, position: u16) -> GuestAddress {
        let slot = u64::from(position % self.size.max(1));
        ring.unchecked_add(RING_ENTRIES_OFFSET + entry_bytes * slot)
    }

    /// `N` bytes of guest memory at `at`, read as a driver would: straight from the region.
    fn read<const N: usize>(&self, at: GuestAddress) -> Result<[u8; N], GuestMemoryError> {
        let mut bytes = [0u8; N];
        guest::read(&self.memory, at, &mut bytes)?;
        Ok(bytes)
    }
}

/// Why the driver could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The rings or a descriptor could not be written or read in guest memory.
    #[error("guest memory access failed")]
    Memory(#[from] GuestMemoryError),
    /// More descriptors were asked for than are free.
    #[error("{wanted} descriptors wanted, {free} free")]
    QueueFull { wanted: usize, free: usize },
    /// The device put an unknown or unused head into the used ring.
    #[error("the device returned descriptor {0}, which is not an outstanding chain head")]
    BadUsedHead(u32),
    /// The queue could not be configured with these addresses and size.
    #[error("the queue cannot be set up: {0}")]
    Setup(virtio_queue::Error),
}

/// A chain the device has finished: its head descriptor and the used length it reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub head: u16,
    pub len: u32,
}

/// A well-behaved driver of one split virtqueue: chains in free descriptors only, the used
/// ring checked against what is outstanding.
pub struct SplitQueueDriver {
    ring: SplitRing,
    /// Free descriptor indices.
    free: Vec<u16>,
    /// For each outstanding head: how many descriptors its chain holds (0: not outstanding).
    chain_lengths: Vec<u16>,
    next_used: u16,
}

impl SplitQueueDriver {
    /// Lays out a queue of `size` entries (a power of two) at `base` (16-byte aligned, see
    /// [`RingAddresses::packed`]) and returns the driver and the device's `Queue`, ready for
    /// `VirtioDevice::activate`.
    pub fn new(
        memory: &GuestMemoryMmap,
        base: GuestAddress,
        size: u16,
    ) -> Result<(Self, Queue), DriverError> {
        let mut ring = SplitRing::new(memory, RingAddresses::packed(base, size), size);
        // Both rings start empty, and the driver wants interrupts.
        ring.clear()?;
        ring.set_avail_flags(0)?;
        let queue = ring.queue(size, false).map_err(DriverError::Setup)?;
        let driver = SplitQueueDriver {
            ring,
            free: (0..size).rev().collect(),
            chain_lengths: vec![0; usize::from(size)],
            next_used: 0,
        };
        Ok((driver, queue))
    }

    /// Descriptors not in use by an outstanding chain.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Writes `buffers` as one chain and makes it available to the device; returns its head.
    pub fn add_chain(&mut self, buffers: &[Buffer]) -> Result<u16, DriverError> {
        if buffers.is_empty() || buffers.len() > self.free.len() {
            return Err(DriverError::QueueFull {
                wanted: buffers.len(),
                free: self.free.len(),
            });
        }
        // Descriptors are taken from the free list in order; each points at the next one taken.
        let count = buffers.len();
        let taken = self.free.len() - count;
        let indices = &self.free[taken..];
        for (position, buffer) in buffers.iter().enumerate() {
            let index = indices[count - 1 - position];
            let next = (position + 1 < count).then(|| indices[count - 2 - position]);
            let flags = buffer.flags(next.is_some());
            let (addr, len) = (buffer.addr.raw_value(), buffer.len);
            self.ring
                .write_descriptor(index, addr, len, flags, next.unwrap_or(0))?;
        }
        let head = indices[count - 1];
        self.free.truncate(taken);
        self.chain_lengths[usize::from(head)] = count as u16;
        self.ring.publish(head)?;
        Ok(head)
    }

    /// Chains made available and not yet seen in the used ring.
    pub fn outstanding(&self) -> u16 {
        self.ring.avail_idx().wrapping_sub(self.next_used)
    }

    /// Collects every chain the device has completed since the last call and frees its
    /// descriptors.
    pub fn take_used(&mut self) -> Result<Vec<Used>, DriverError> {
        let mut done = Vec::new();
        self.take_used_into(&mut done)?;
        Ok(done)
    }

    /// `take_used`, appending to `done` (a caller polling in a loop keeps one vector).
    pub fn take_used_into(&mut self, done: &mut Vec<Used>) -> Result<(), DriverError> {
        let used_idx = self.ring.used_idx()?;
        while self.next_used != used_idx {
            let UsedElement { id, len } = self.ring.used_element(self.next_used)?;
            let head = u16::try_from(id)
                .ok()
                .filter(|&head| head < self.ring.size())
                .ok_or(DriverError::BadUsedHead(id))?;
            let count = std::mem::take(&mut self.chain_lengths[usize::from(head)]);
            if count == 0 {
                return Err(DriverError::BadUsedHead(id));
            }
            let mut index = head;
            for _ in 0..count {
                self.free.push(index);
                index = self.ring.descriptor_next(index)?;
            }
            done.push(Used { head, len });
            self.next_used = self.next_used.wrapping_add(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vmm_sys_util::tempfile::TempFile;

    use vm_memory::Bytes;

    use super::*;
    use crate::block::{request_status, request_type, Block, RawFile};
    use crate::virtio::{InterruptSignal, VirtioDevice};

    struct NoInterrupt;

    impl InterruptSignal for NoInterrupt {
        fn signal_used_queue(&self, _queue_index: u16) -> std::io::Result<()> {
            Ok(())
        }
        fn signal_config_change(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn chains_go_round_the_ring_many_times() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let file = TempFile::new().unwrap();
        file.as_file().set_len(64 * 512).unwrap();
        let backend = RawFile::open(file.as_path(), false).unwrap();
        let mut block = Block::new(Box::new(backend), "x");
        let (mut driver, queue) = SplitQueueDriver::new(&memory, GuestAddress(0), 8).unwrap();
        block
            .activate(memory.clone(), vec![queue], Arc::new(NoInterrupt))
            .unwrap();
        let header = GuestAddress(0x1_0000);
        let data = GuestAddress(0x2_0000);
        let status = GuestAddress(0x3_0000);
        // 100 writes through an 8-entry queue, 2 chains at a time: the rings wrap many times.
        for round in 0..50u64 {
            for n in 0..2u64 {
                let sector = (round * 2 + n) % 64;
                let h = header.unchecked_add(n * 16);
                memory.write_obj(request_type::OUT, h).unwrap();
                memory.write_obj(sector, h.unchecked_add(8)).unwrap();
                memory.write_obj(0xaau8, status.unchecked_add(n)).unwrap();
                driver
                    .add_chain(&[
                        Buffer::readable(h, 16),
                        Buffer::readable(data, 512),
                        Buffer::writable(status.unchecked_add(n), 1),
                    ])
                    .unwrap();
            }
            assert_eq!(driver.free_descriptors(), 2);
            assert!(driver
                .add_chain(&[Buffer::readable(header, 16); 3])
                .is_err());
            block.process_queue(0).unwrap();
            let used = driver.take_used().unwrap();
            assert_eq!(used.len(), 2);
            assert!(used.iter().all(|u| u.len == 1));
            for n in 0..2u64 {
                let byte: u8 = memory.read_obj(status.unchecked_add(n)).unwrap();
                assert_eq!(byte, request_status::OK);
            }
            assert_eq!((driver.outstanding(), driver.free_descriptors()), (0, 8));
        }
    }
}
