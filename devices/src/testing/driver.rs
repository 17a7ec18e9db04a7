//! The driver side of a split virtqueue, for exercising a device model without a guest: benches
//! (the `bench` crate) and tests build descriptor chains in guest memory, make them available,
//! let the device process the queue, and collect what it put in the used ring. Unlike
//! `virtio_queue::mock::MockSplitQueue`, the rings wrap and descriptors are recycled, so any
//! number of requests can go through one queue.
//!
//! Only in this crate's tests and with the `test-support` or `testing` feature: the VMM never
//! drives a queue from the driver side.

use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryError};

use crate::block::guest;
use crate::virtio::GuestMemoryMmap;

/// Bytes of one split-ring descriptor (addr, len, flags, next).
const DESCRIPTOR_BYTES: u64 = 16;

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
}

/// A chain the device has finished: its head descriptor and the used length it reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub head: u16,
    pub len: u32,
}

/// A split virtqueue driven from the driver side, with its rings at fixed guest addresses.
pub struct SplitQueueDriver {
    memory: GuestMemoryMmap,
    size: u16,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    /// Free descriptor indices.
    free: Vec<u16>,
    /// For each outstanding head: how many descriptors its chain holds (0: not outstanding).
    chain_lengths: Vec<u16>,
    next_avail: u16,
    next_used: u16,
}

impl SplitQueueDriver {
    /// Guest memory the rings of a queue of `size` entries need, from their base address.
    pub fn ring_bytes(size: u16) -> u64 {
        let size = u64::from(size);
        // Descriptor table, then avail (flags, idx, ring, used_event), then used (flags, idx,
        // ring of 8-byte elements, avail_event), aligned to 4 as the spec requires.
        let avail = size * DESCRIPTOR_BYTES;
        let used = (avail + 6 + 2 * size).next_multiple_of(4);
        used + 6 + 8 * size
    }

    /// Lays out a queue of `size` entries (a power of two) at `base` (16-byte aligned) and
    /// returns the driver and the device's `Queue`, ready for `VirtioDevice::activate`.
    pub fn new(
        memory: &GuestMemoryMmap,
        base: GuestAddress,
        size: u16,
    ) -> Result<(Self, Queue), DriverError> {
        let desc_table = base;
        let avail_ring = base.unchecked_add(u64::from(size) * DESCRIPTOR_BYTES);
        let used_ring =
            GuestAddress((avail_ring.raw_value() + 6 + 2 * u64::from(size)).next_multiple_of(4));
        // Both rings start empty: flags and indices zero.
        memory.write_obj(0u32, avail_ring)?;
        memory.write_obj(0u32, used_ring)?;
        let mut queue = Queue::new(size).map_err(DriverError::Setup)?;
        queue
            .try_set_desc_table_address(desc_table)
            .map_err(DriverError::Setup)?;
        queue
            .try_set_avail_ring_address(avail_ring)
            .map_err(DriverError::Setup)?;
        queue
            .try_set_used_ring_address(used_ring)
            .map_err(DriverError::Setup)?;
        queue.set_size(size);
        queue.set_ready(true);
        let driver = SplitQueueDriver {
            memory: memory.clone(),
            size,
            desc_table,
            avail_ring,
            used_ring,
            free: (0..size).rev().collect(),
            chain_lengths: vec![0; usize::from(size)],
            next_avail: 0,
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
        // A driver writes its rings with plain stores: the accesses go straight to the region.
        // Descriptors are taken from the free list in order; each points at the next one taken.
        let count = buffers.len();
        let taken = self.free.len() - count;
        let indices = &self.free[taken..];
        for (position, buffer) in buffers.iter().enumerate() {
            let index = indices[count - 1 - position];
            let next = (position + 1 < count).then(|| indices[count - 2 - position]);
            let mut flags = if buffer.device_writable {
                VRING_DESC_F_WRITE
            } else {
                0
            };
            if next.is_some() {
                flags |= VRING_DESC_F_NEXT;
            }
            let mut bytes = [0u8; DESCRIPTOR_BYTES as usize];
            bytes[..8].copy_from_slice(&buffer.addr.raw_value().to_le_bytes());
            bytes[8..12].copy_from_slice(&buffer.len.to_le_bytes());
            bytes[12..14].copy_from_slice(&(flags as u16).to_le_bytes());
            bytes[14..].copy_from_slice(&next.unwrap_or(0).to_le_bytes());
            let at = self
                .desc_table
                .unchecked_add(u64::from(index) * DESCRIPTOR_BYTES);
            guest::write(&self.memory, at, &bytes)?;
        }
        let head = indices[count - 1];
        self.free.truncate(taken);
        self.chain_lengths[usize::from(head)] = count as u16;
        let slot = u64::from(self.next_avail % self.size);
        guest::write(
            &self.memory,
            self.avail_ring.unchecked_add(4 + 2 * slot),
            &head.to_le_bytes(),
        )?;
        self.next_avail = self.next_avail.wrapping_add(1);
        // The ring entry must be visible before the index that publishes it.
        fence(Ordering::Release);
        guest::write(
            &self.memory,
            self.avail_ring.unchecked_add(2),
            &self.next_avail.to_le_bytes(),
        )?;
        Ok(head)
    }

    /// Chains made available and not yet seen in the used ring.
    pub fn outstanding(&self) -> u16 {
        self.next_avail.wrapping_sub(self.next_used)
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
        let used_idx = u16::from_le_bytes(self.read(self.used_ring.unchecked_add(2))?);
        fence(Ordering::Acquire);
        while self.next_used != used_idx {
            let slot = u64::from(self.next_used % self.size);
            let element: [u8; 8] = self.read(self.used_ring.unchecked_add(4 + 8 * slot))?;
            let [i0, i1, i2, i3, l0, l1, l2, l3] = element;
            let id = u32::from_le_bytes([i0, i1, i2, i3]);
            let len = u32::from_le_bytes([l0, l1, l2, l3]);
            let head = u16::try_from(id)
                .ok()
                .filter(|&head| head < self.size)
                .ok_or(DriverError::BadUsedHead(id))?;
            let count = std::mem::take(&mut self.chain_lengths[usize::from(head)]);
            if count == 0 {
                return Err(DriverError::BadUsedHead(id));
            }
            let mut index = head;
            for _ in 0..count {
                self.free.push(index);
                let at = self
                    .desc_table
                    .unchecked_add(u64::from(index) * DESCRIPTOR_BYTES + 14);
                index = u16::from_le_bytes(self.read(at)?);
            }
            done.push(Used { head, len });
            self.next_used = self.next_used.wrapping_add(1);
        }
        Ok(())
    }

    /// `N` bytes of guest memory at `at`, read as a driver would: straight from the region.
    fn read<const N: usize>(&self, at: GuestAddress) -> Result<[u8; N], DriverError> {
        let mut bytes = [0u8; N];
        guest::read(&self.memory, at, &mut bytes)?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vmm_sys_util::tempfile::TempFile;

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
