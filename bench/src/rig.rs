//! A block device activated on a split virtqueue in in-memory guest memory, and a loop that
//! keeps a number of requests in flight through it, as a guest driver would: header, data and
//! status in guest memory, chains made available, the queue processed, the used ring drained.

use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::block::{guest, request_status, request_type, Block, SIZE_MAX};
use devices::testing::driver::{Buffer, SplitQueueDriver, Used};
use devices::virtio::{GuestMemoryMmap, InterruptSignal, VirtioDevice};
use devices::zoned::wire::request as zone_request;
use vm_memory::{Address, Bytes, GuestAddress};

/// Queue size: what the device offers (`devices::block::QUEUE_SIZE`).
const QUEUE_SIZE: u16 = devices::block::QUEUE_SIZE;
const RINGS: GuestAddress = GuestAddress(0);
const HEADERS: GuestAddress = GuestAddress(0x1_0000);
const STATUSES: GuestAddress = GuestAddress(0x2_0000);
/// Where ZONE_APPEND writes the landed sector (8 bytes per slot).
const APPEND_RESULTS: GuestAddress = GuestAddress(0x3_0000);
const DATA: GuestAddress = GuestAddress(0x10_0000);
const HEADER_BYTES: u32 = 16;
/// How long the device may take to complete anything before the bench gives up.
const STALL: Duration = Duration::from_secs(30);

/// One request: its type, sector and data length; the data direction follows from the type.
#[derive(Clone, Copy, Debug)]
pub struct Op {
    request_type: u32,
    sector: u64,
    data_bytes: u32,
}

impl Op {
    pub fn write(sector: u64, data_bytes: u32) -> Self {
        Op {
            request_type: request_type::OUT,
            sector,
            data_bytes,
        }
    }

    pub fn read(sector: u64, data_bytes: u32) -> Self {
        Op {
            request_type: request_type::IN,
            sector,
            data_bytes,
        }
    }

    pub fn append(zone_sector: u64, data_bytes: u32) -> Self {
        Op {
            request_type: zone_request::ZONE_APPEND,
            sector: zone_sector,
            data_bytes,
        }
    }

    pub fn report(sector: u64, reply_bytes: u32) -> Self {
        Op {
            request_type: zone_request::ZONE_REPORT,
            sector,
            data_bytes: reply_bytes,
        }
    }

    pub fn zone_management(request_type: u32) -> Self {
        Op {
            request_type,
            sector: 0,
            data_bytes: 0,
        }
    }

    /// Whether the device writes the data buffers (reads, reports).
    fn device_writes_data(&self) -> bool {
        matches!(
            self.request_type,
            request_type::IN | zone_request::ZONE_REPORT
        )
    }
}

/// The bench needs no interrupts: it polls the used ring.
struct PolledInterrupt;

impl InterruptSignal for PolledInterrupt {
    fn signal_used_queue(&self, _queue_index: u16) -> std::io::Result<()> {
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct Rig {
    memory: GuestMemoryMmap,
    driver: SplitQueueDriver,
    block: Block,
    slots: usize,
    data_stride: u64,
    /// Room for one chain's buffers and for the completions of one poll, kept between requests.
    buffers: Vec<Buffer>,
    used: Vec<Used>,
}

impl Rig {
    /// Activates `block` on a fresh queue with room for `slots` requests in flight of up to
    /// `max_data_bytes` each.
    pub fn new(mut block: Block, slots: usize, max_data_bytes: u32) -> Result<Self, String> {
        assert!(slots <= 64, "the header and status areas hold 64 slots");
        let data_stride = u64::from(max_data_bytes).next_multiple_of(4096);
        let memory_bytes =
            (DATA.raw_value() + slots as u64 * data_stride).next_multiple_of(1 << 20);
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), memory_bytes as usize)])
            .map_err(|e| format!("cannot allocate guest memory: {e}"))?;
        let (driver, queue) = SplitQueueDriver::new(&memory, RINGS, QUEUE_SIZE)
            .map_err(|e| format!("cannot set up the queue: {e}"))?;
        // The data the writes carry: a pattern, not zero pages.
        let pattern: Vec<u8> = (0..data_stride as usize * slots)
            .map(|i| (i as u8).wrapping_mul(29) ^ (i >> 12) as u8)
            .collect();
        memory
            .write_slice(&pattern, DATA)
            .map_err(|e| format!("cannot fill guest memory: {e}"))?;
        // As a transport does at FEATURES_OK.
        block.set_acked_features(block.avail_features());
        block
            .activate(memory.clone(), vec![queue], Arc::new(PolledInterrupt))
            .map_err(|e| format!("cannot activate the device: {e}"))?;
        Ok(Rig {
            memory,
            driver,
            block,
            slots,
            data_stride,
            buffers: Vec::new(),
            used: Vec::new(),
        })
    }

    fn data_of(&self, slot: usize) -> GuestAddress {
        DATA.unchecked_add(slot as u64 * self.data_stride)
    }

    fn status_of(slot: usize) -> GuestAddress {
        STATUSES.unchecked_add(slot as u64)
    }

    /// Writes the request's header and chain as a guest driver would: with plain stores into
    /// its own memory (`guest::write`), not through `vm-memory`'s general accessors, so that
    /// the driver's side weighs as little as it does in a guest.
    fn submit(&mut self, slot: usize, op: &Op) -> Result<u16, String> {
        let header = HEADERS.unchecked_add(slot as u64 * u64::from(HEADER_BYTES));
        let memory_error = |e: vm_memory::GuestMemoryError| format!("guest memory: {e}");
        let mut bytes = [0u8; HEADER_BYTES as usize];
        bytes[..4].copy_from_slice(&op.request_type.to_le_bytes());
        bytes[8..].copy_from_slice(&op.sector.to_le_bytes());
        guest::write(&self.memory, header, &bytes).map_err(memory_error)?;
        // A value no request completes with, so an unanswered request shows.
        guest::write(&self.memory, Self::status_of(slot), &[0xff]).map_err(memory_error)?;
        let buffers = &mut self.buffers;
        buffers.clear();
        buffers.push(Buffer::readable(header, HEADER_BYTES));
        let data = DATA.unchecked_add(slot as u64 * self.data_stride);
        let mut done = 0u32;
        while done < op.data_bytes {
            let len = (op.data_bytes - done).min(SIZE_MAX);
            let addr = data.unchecked_add(u64::from(done));
            buffers.push(if op.device_writes_data() {
                Buffer::writable(addr, len)
            } else {
                Buffer::readable(addr, len)
            });
            done += len;
        }
        if op.request_type == zone_request::ZONE_APPEND {
            buffers.push(Buffer::writable(
                APPEND_RESULTS.unchecked_add(slot as u64 * 8),
                8,
            ));
        }
        buffers.push(Buffer::writable(Self::status_of(slot), 1));
        self.driver
            .add_chain(buffers)
            .map_err(|e| format!("cannot queue a request: {e}"))
    }

    /// Runs `count` requests, `op_of(i)` for i in 0..count, keeping up to `depth` in flight
    /// (at most the slots of the rig). Every request must complete with OK. Returns the time
    /// from the first submission to the last completion.
    pub fn run(
        &mut self,
        count: u64,
        depth: usize,
        mut op_of: impl FnMut(u64) -> Op,
    ) -> Result<Duration, String> {
        let depth = depth.min(self.slots);
        let mut free_slots: Vec<usize> = (0..depth).rev().collect();
        let mut in_flight: Vec<Option<(usize, Op)>> = vec![None; usize::from(QUEUE_SIZE)];
        let (mut next, mut done) = (0u64, 0u64);
        let start = Instant::now();
        while done < count {
            while next < count {
                let Some(slot) = free_slots.pop() else { break };
                let op = op_of(next);
                let head = self.submit(slot, &op)?;
                in_flight[usize::from(head)] = Some((slot, op));
                next += 1;
            }
            self.block
                .process_queue(0)
                .map_err(|e| format!("the device failed the queue: {e}"))?;
            let waiting_since = Instant::now();
            let mut used = std::mem::take(&mut self.used);
            loop {
                used.clear();
                self.driver
                    .take_used_into(&mut used)
                    .map_err(|e| format!("the used ring: {e}"))?;
                if !used.is_empty() {
                    break;
                }
                if waiting_since.elapsed() > STALL {
                    return Err(format!(
                        "the device completed none of {} requests in {STALL:?}",
                        self.driver.outstanding()
                    ));
                }
                std::thread::yield_now();
            }
            for used in &used {
                let Some((slot, op)) = in_flight[usize::from(used.head)].take() else {
                    return Err(format!("the device completed unknown chain {}", used.head));
                };
                let mut status = [0u8];
                guest::read(&self.memory, Self::status_of(slot), &mut status)
                    .map_err(|e| format!("guest memory: {e}"))?;
                if status[0] != request_status::OK {
                    return Err(format!("{op:?} completed with status {}", status[0]));
                }
                free_slots.push(slot);
                done += 1;
            }
            self.used = used;
        }
        Ok(start.elapsed())
    }

    /// The `nr_zones` field of the ZONE_REPORT reply in `slot`'s data buffer.
    /// Leaves the device alone until it has done all its deferred work (the zoned image's
    /// reclaim of reset zones), as the VMM's idle timer would over time.
    pub fn idle(&mut self) {
        use devices::virtio::VirtioDevice;
        while self.block.idle(std::time::Duration::MAX) {}
    }

    pub fn report_zone_count(&self, slot: usize) -> Result<u64, String> {
        self.memory
            .read_obj::<u64>(self.data_of(slot))
            .map(u64::from_le)
            .map_err(|e| format!("guest memory: {e}"))
    }
}
