//! The virtio-blk device: its feature bits and config space, its one request queue, parsing
//! and completing requests. It is transport-independent (it implements `VirtioDevice`) and
//! storage-independent: every parsed batch goes to one `Executor` (a plain disk or a zoned one),
//! which also gives the storage's features and config fields.

use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::debug;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::backend::BlockBackend;
use super::executor::{Answered, Completion, Executor};
use super::guest::{self, bytes_to_guest};
use super::plain::PlainExecutor;
use super::request::{Malformed, Request, RequestType};
use super::{feature, request_status, QUEUE_SIZE, SEG_MAX, SERIAL_BYTES, SIZE_MAX};
use crate::virtio::{
    read_config_bytes, ActivateError, GuestMemoryMmap, InterruptSignal, QueueError, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use crate::zoned::image::{PowerCut, PowerCutReport};

/// Size of `struct virtio_blk_config` including the zoned fields (virtio 1.3).
pub const CONFIG_SIZE: usize = 96;

/// Byte offsets of the config fields this device fills (little endian).
pub mod config_offset {
    /// le64: disk size in 512-byte sectors.
    pub const CAPACITY: usize = 0;
    /// le32: largest data segment in bytes.
    pub const SIZE_MAX: usize = 8;
    /// le32: largest number of data segments in one request.
    pub const SEG_MAX: usize = 12;
    /// le32: logical block size in bytes.
    pub const BLK_SIZE: usize = 20;
    /// Topology (VIRTIO_BLK_F_TOPOLOGY): u8 log2 of physical blocks per logical block, u8
    /// alignment offset, le16 minimum and le32 optimal I/O size, both in logical blocks.
    pub const PHYSICAL_BLOCK_EXP: usize = 24;
    pub const ALIGNMENT_OFFSET: usize = 25;
    pub const MIN_IO_SIZE: usize = 26;
    pub const OPT_IO_SIZE: usize = 28;
    /// le16: number of request queues.
    pub const NUM_QUEUES: usize = 34;
    /// Start of the zoned fields (`zone_sectors` onwards), filled by a zoned handler.
    pub const ZONED: usize = 72;
}

/// Fills blk_size with the logical block size and the topology fields with the physical one (a
/// power-of-two multiple of it, also the minimum I/O size), both in bytes. The topology fields
/// count only with VIRTIO_BLK_F_TOPOLOGY offered.
pub fn fill_block_sizes(config: &mut [u8; CONFIG_SIZE], logical: u32, physical: u32) {
    put(config, config_offset::BLK_SIZE, &logical.to_le_bytes());
    let blocks = (physical / logical.max(1)).max(1);
    config[config_offset::PHYSICAL_BLOCK_EXP] = blocks.trailing_zeros() as u8;
    config[config_offset::ALIGNMENT_OFFSET] = 0;
    let min_io = u16::try_from(blocks).unwrap_or(1);
    put(config, config_offset::MIN_IO_SIZE, &min_io.to_le_bytes());
    put(config, config_offset::OPT_IO_SIZE, &0u32.to_le_bytes());
}

/// Serves parsed requests; the part of the device the queue feeds.
struct RequestServer {
    executor: Box<dyn Executor>,
    /// The driver accepted the executor's required features.
    executor_enabled: bool,
    serial: [u8; SERIAL_BYTES],
    /// The batch being served (kept to reuse its room).
    batch: Batch,
}

/// What became of one chain of a batch.
enum Outcome {
    /// A request for the executor, at this index of `Batch::requests`.
    Execute(usize),
    /// A request the device answered itself (GET_ID, or a type it refuses), with the address
    /// of its status byte and the bytes its device-writable buffers may hold.
    Answered(GuestAddress, Completion, u64),
    /// Not a request.
    Malformed(Malformed),
}

/// The requests of one batch, with room kept from batch to batch.
#[derive(Default)]
struct Batch {
    /// Well-formed requests for the executor, in the order they were made available.
    requests: Vec<Request>,
    /// Each chain: its head, and what became of it.
    parsed: Vec<(u16, Outcome)>,
    /// The executor's completions, one per request.
    completions: Vec<Completion>,
    /// For each chain: its head and the used length to report.
    used: Vec<(u16, u32)>,
}

impl RequestServer {
    /// Parses one available chain into the batch; answers it at once if the device, not the
    /// executor, serves it.
    fn add_chain(&mut self, memory: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) {
        let head = chain.head_index();
        let outcome = match Request::parse(memory, chain) {
            Ok(request) => self.route(memory, request),
            Err(malformed) => Outcome::Malformed(malformed),
        };
        self.batch.parsed.push((head, outcome));
    }

    /// GET_ID is the device's identity, not storage: the device answers it. Zoned types from a
    /// driver that refused the executor's required features get UNSUPP (virtio 1.3 5.2.6).
    fn route(&mut self, memory: &GuestMemoryMmap, request: Request) -> Outcome {
        let completion = if request.kind == RequestType::GetId {
            self.get_id(memory, &request)
        } else if request.kind.is_zoned() && !self.executor_enabled {
            Completion::with_status(request_status::UNSUPP)
        } else {
            self.batch.requests.push(request);
            return Outcome::Execute(self.batch.requests.len() - 1);
        };
        self.executor.answered(Answered::Request {
            request: &request,
            status: completion.status,
        });
        Outcome::Answered(request.status, completion, request.writable_len())
    }

    /// Serves the chains added since the last call (made available together) and returns,
    /// for each head, the used length to report: data bytes written plus the status byte, or
    /// 0 for a chain with no status byte to answer in.
    fn serve_batch(&mut self, memory: &GuestMemoryMmap) -> &[(u16, u32)] {
        let mut batch = std::mem::take(&mut self.batch);
        batch.completions.clear();
        if !batch.requests.is_empty() {
            self.executor
                .execute(&batch.requests, memory, &mut batch.completions);
        }
        batch.used.clear();
        for (head, outcome) in batch.parsed.drain(..) {
            let (status_address, mut completion, writable) = match outcome {
                Outcome::Execute(index) => {
                    let request = &batch.requests[index];
                    // An executor that answered too few requests failed the rest.
                    let completion = batch
                        .completions
                        .get(index)
                        .copied()
                        .unwrap_or(Completion::with_status(request_status::IOERR));
                    (request.status, completion, request.writable_len())
                }
                Outcome::Answered(address, completion, writable) => (address, completion, writable),
                Outcome::Malformed(Malformed {
                    error,
                    status: Some(address),
                }) => {
                    debug!("virtio-blk: malformed request: {error}");
                    self.executor.answered(Answered::Malformed {
                        error: &error,
                        answered: true,
                    });
                    (address, Completion::with_status(request_status::IOERR), 0)
                }
                Outcome::Malformed(Malformed {
                    error,
                    status: None,
                }) => {
                    debug!("virtio-blk: dropping request: {error}");
                    self.executor.answered(Answered::Malformed {
                        error: &error,
                        answered: false,
                    });
                    batch.used.push((head, 0));
                    continue;
                }
            };
            // An executor cannot claim more bytes than the guest offered.
            let writable = u32::try_from(writable).unwrap_or(u32::MAX);
            completion.data_bytes_written = completion.data_bytes_written.min(writable);
            let len = match guest::write(memory, status_address, &[completion.status]) {
                Ok(()) => completion.data_bytes_written.saturating_add(1),
                Err(error) => {
                    debug!("virtio-blk: cannot write the request status: {error}");
                    0
                }
            };
            batch.used.push((head, len));
        }
        batch.requests.clear();
        self.batch = batch;
        &self.batch.used
    }

    /// GET_ID: the serial, truncated to the buffer the driver gave.
    fn get_id(&self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        if !request.data_fits_type() {
            return Completion::with_status(request_status::IOERR);
        }
        match bytes_to_guest(memory, &request.writable, &self.serial) {
            // At most SERIAL_BYTES.
            Ok(written) => Completion::ok(u32::try_from(written).unwrap_or(0)),
            Err(error) => {
                debug!("virtio-blk: GET_ID reply failed: {error}");
                Completion::with_status(request_status::IOERR)
            }
        }
    }
}

/// What the device holds between DRIVER_OK and reset.
struct Active {
    memory: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<dyn InterruptSignal>,
}

/// How many `VirtioDevice::idle` calls in a row without a request come before the executor
/// gets idle time (the VMM calls every 100 ms).
const QUIET_CALLS: u32 = 10;

/// A virtio-blk device with one request queue of `QUEUE_SIZE` entries.
pub struct Block {
    server: RequestServer,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_SIZE],
    queue_max_sizes: [u16; 1],
    active: Option<Active>,
    /// Requests were served since the last `idle` call: the guest is not idle.
    served_since_idle: bool,
    /// `idle` calls in a row with no request served in between.
    quiet_calls: u32,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("capacity_sectors", &self.capacity_sectors())
            .field("avail_features", &self.avail_features)
            .field("acked_features", &self.acked_features)
            .field("activated", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Block {
    /// A plain block device over `backend`. `serial` is what GET_ID returns (truncated to 20
    /// bytes). Read-only backends get the RO feature.
    pub fn new(backend: Box<dyn BlockBackend>, serial: &str) -> Self {
        Self::with_executor(Box::new(PlainExecutor::new(backend)), serial)
    }

    /// A block device whose requests `executor` serves, and whose storage features and config
    /// fields it gives.
    pub fn with_executor(executor: Box<dyn Executor>, serial: &str) -> Self {
        let avail_features = VIRTIO_F_VERSION_1
            | feature::SIZE_MAX
            | feature::SEG_MAX
            | feature::BLK_SIZE
            | feature::FLUSH
            // Fewer notifications and interrupts: each is a VM exit.
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | executor.features();
        let mut config = [0u8; CONFIG_SIZE];
        put(
            &mut config,
            config_offset::SIZE_MAX,
            &SIZE_MAX.to_le_bytes(),
        );
        put(&mut config, config_offset::SEG_MAX, &SEG_MAX.to_le_bytes());
        put(&mut config, config_offset::NUM_QUEUES, &1u16.to_le_bytes());
        executor.fill_config(&mut config);
        let mut serial_bytes = [0u8; SERIAL_BYTES];
        let serial = serial.as_bytes();
        let count = serial.len().min(SERIAL_BYTES);
        serial_bytes[..count].copy_from_slice(&serial[..count]);
        Block {
            server: RequestServer {
                executor,
                executor_enabled: false,
                serial: serial_bytes,
                batch: Batch::default(),
            },
            avail_features,
            acked_features: 0,
            config,
            queue_max_sizes: [QUEUE_SIZE],
            active: None,
            served_since_idle: false,
            quiet_calls: 0,
        }
    }

    /// Disk size in 512-byte sectors, as the guest sees it (the config space's capacity).
    pub fn capacity_sectors(&self) -> u64 {
        let mut capacity = [0u8; 8];
        capacity.copy_from_slice(&self.config[config_offset::CAPACITY..][..8]);
        u64::from_le_bytes(capacity)
    }

    /// Makes everything written durable (e.g. before the VMM exits).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.server.executor.flush()
    }
}

/// Copies `bytes` into `config` at `offset`; offsets are constants inside `CONFIG_SIZE`.
pub(crate) fn put(config: &mut [u8; CONFIG_SIZE], offset: usize, bytes: &[u8]) {
    if let Some(field) = config.get_mut(offset..offset + bytes.len()) {
        field.copy_from_slice(bytes);
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn unserved(&self) -> Option<(u16, u16)> {
        let active = self.active.as_ref()?;
        let next_avail = active.queue.next_avail();
        let avail = active
            .queue
            .avail_idx(&active.memory, Ordering::Acquire)
            .ok()?;
        (avail.0 != next_avail).then_some((0, next_avail))
    }

    fn unseen_completions(&self) -> Option<(u16, u16, u16)> {
        let active = self.active.as_ref()?;
        if !active.queue.event_idx_enabled() {
            return None;
        }
        let next_used = active.queue.next_used();
        let used_event = used_event(&active.queue, &active.memory)?;
        (used_event != next_used).then_some((0, next_used, used_event))
    }

    fn debug_state(&self) -> String {
        let Some(active) = self.active.as_ref() else {
            return "not activated".into();
        };
        let queue = &active.queue;
        let in_memory = |index: Result<Wrapping<u16>, _>| match index {
            Ok(Wrapping(value)) => value.to_string(),
            Err(_) => "unreadable".into(),
        };
        // The driver's flags are the avail ring's first 16 bits (NO_INTERRUPT = 1).
        let avail_flags: Option<u16> = active
            .memory
            .read_obj(GuestAddress(queue.avail_ring()))
            .ok();
        // With EVENT_IDX: how far the driver consumed completions (used_event) and where the
        // device asked to be notified next (avail_event, at the end of the used ring).
        let event_idx = if queue.event_idx_enabled() {
            let avail_event: Option<u16> = active
                .memory
                .read_obj(GuestAddress(
                    queue.used_ring() + 4 + 8 * u64::from(queue.size()),
                ))
                .ok();
            let shown = |value: Option<u16>| value.map_or("unreadable".into(), |v| v.to_string());
            format!(
                " used_event {} avail_event {}",
                shown(used_event(queue, &active.memory)),
                shown(avail_event),
            )
        } else {
            " (no EVENT_IDX)".into()
        };
        format!(
            "queue: next_avail {} next_used {} avail.idx {} used.idx {} avail.flags {}{event_idx}",
            queue.next_avail(),
            queue.next_used(),
            in_memory(queue.avail_idx(&active.memory, Ordering::Acquire)),
            in_memory(queue.used_idx(&active.memory, Ordering::Acquire)),
            avail_flags.map_or("unreadable".into(), |f| format!("{f:#x}")),
        )
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
        self.server.executor_enabled = self.accepts_features(self.acked_features);
    }

    fn accepts_features(&self, features: u64) -> bool {
        let required = self.server.executor.required_features();
        features & required == required
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `writeback` is writable, and only with CONFIG_WCE, which is not offered.
        debug!(
            "virtio-blk: ignoring a {}-byte config write at {offset}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn InterruptSignal>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActivated);
        }
        let given = queues.len();
        let Ok([queue]) = <[Queue; 1]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 1, given });
        };
        self.active = Some(Active {
            memory,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.server.executor_enabled = false;
    }

    fn process_queue(&mut self, queue_index: u16) -> Result<(), QueueError> {
        if queue_index != 0 {
            return Err(QueueError::UnknownQueue(queue_index));
        }
        let Some(active) = self.active.as_mut() else {
            return Err(QueueError::NotActivated);
        };
        let queue_error = QueueError::Queue;
        loop {
            // The guest need not notify while the queue is being drained (with EVENT_IDX this
            // is implicit: it notifies only past the avail_event written below).
            active
                .queue
                .disable_notification(&active.memory)
                .map_err(queue_error)?;
            // Everything available now is served as one batch (a handler may run parts of it
            // in parallel); at most the queue size, since each chain holds a distinct head.
            let mut available = active.queue.iter(&active.memory).map_err(queue_error)?;
            let mut any = false;
            for chain in &mut available {
                self.server.add_chain(&active.memory, chain);
                any = true;
            }
            if any {
                self.served_since_idle = true;
                for &(head, used_len) in self.server.serve_batch(&active.memory) {
                    active
                        .queue
                        .add_used(&active.memory, head, used_len)
                        .map_err(queue_error)?;
                }
                // With EVENT_IDX, only when the used index passed the driver's used_event.
                if active
                    .queue
                    .needs_notification(&active.memory)
                    .map_err(queue_error)?
                {
                    active
                        .interrupt
                        .signal_used_queue(queue_index)
                        .map_err(QueueError::Interrupt)?;
                }
            }
            // Notifications back on (avail_event = next_avail with EVENT_IDX); requests that
            // arrived meanwhile may have gone unnotified, so look again.
            if !active
                .queue
                .enable_notification(&active.memory)
                .map_err(queue_error)?
            {
                return Ok(());
            }
        }
    }

    fn shutdown(&mut self) -> std::io::Result<()> {
        self.flush()
    }

    fn power_cut(&mut self, cut: PowerCut) -> std::io::Result<Option<PowerCutReport>> {
        self.server.executor.power_cut(cut)
    }

    /// Deferred work runs only once the guest has sent nothing for `QUIET_CALLS` calls in a
    /// row (a second at the VMM's pace), so that a zone reset and rewritten at once (a test
    /// suite's next pass) is never reclaimed in between; and never on a device the driver has
    /// not started.
    fn idle(&mut self, budget: std::time::Duration) -> bool {
        if std::mem::take(&mut self.served_since_idle) {
            self.quiet_calls = 0;
            return true;
        }
        if self.quiet_calls < QUIET_CALLS {
            self.quiet_calls += 1;
            return true;
        }
        self.active.is_some() && self.server.executor.idle(budget)
    }
}

/// The driver's used_event (EVENT_IDX): the u16 after the avail ring's entries.
fn used_event(queue: &Queue, memory: &GuestMemoryMmap) -> Option<u16> {
    let address = queue.avail_ring() + 4 + 2 * u64::from(queue.size());
    memory
        .load::<u16>(GuestAddress(address), Ordering::Acquire)
        .ok()
        .map(u16::from_le)
}

#[cfg(test)]
mod tests {
    use crate::block::SECTOR_SIZE;
    use std::io;
    use std::sync::atomic::Ordering;

    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::block::backend::RawFile;
    use crate::block::request::HEADER_SIZE;
    use crate::block::request_type;
    use crate::testing::CountingInterrupt;

    const MEMORY_SIZE: usize = 0x10_0000;
    const TEST_QUEUE_SIZE: u16 = 64;
    const DISK_SECTORS: u64 = 64;
    const HEADER: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;

    /// A part of a chain: address, length, device-writable.
    type Part = (u64, u32, bool);

    /// A block device over a temp file, activated on a mock queue in `memory`.
    struct TestDisk<'a> {
        memory: &'a GuestMemoryMmap,
        queue: MockSplitQueue<'a, GuestMemoryMmap>,
        block: Block,
        file: TempFile,
        interrupt: Arc<CountingInterrupt>,
        next_descriptor: u16,
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)]).unwrap()
    }

    fn temp_disk(bytes: u64) -> TempFile {
        let file = TempFile::new_with_prefix(std::env::temp_dir().join("devices-blk")).unwrap();
        file.as_file().set_len(bytes).unwrap();
        file
    }

    impl<'a> TestDisk<'a> {
        fn new(memory: &'a GuestMemoryMmap, read_only: bool) -> Self {
            let file = temp_disk(DISK_SECTORS * SECTOR_SIZE);
            let backend = RawFile::open(file.as_path(), read_only).unwrap();
            Self::with_block(
                memory,
                file,
                Block::new(Box::new(backend), "zoned-disk-serial-0123"),
            )
        }

        fn with_block(memory: &'a GuestMemoryMmap, file: TempFile, block: Block) -> Self {
            Self::activated(memory, file, block, false)
        }

        /// A plain disk whose driver negotiated VIRTIO_RING_F_EVENT_IDX.
        fn with_event_idx(memory: &'a GuestMemoryMmap) -> Self {
            let file = temp_disk(DISK_SECTORS * SECTOR_SIZE);
            let backend = RawFile::open(file.as_path(), false).unwrap();
            let block = Block::new(Box::new(backend), "event-idx");
            Self::activated(memory, file, block, true)
        }

        fn activated(
            memory: &'a GuestMemoryMmap,
            file: TempFile,
            mut block: Block,
            event_idx: bool,
        ) -> Self {
            let queue = MockSplitQueue::new(memory, TEST_QUEUE_SIZE);
            let interrupt = Arc::new(CountingInterrupt::default());
            let mut device_queue = queue.create_queue::<Queue>().unwrap();
            device_queue.set_event_idx(event_idx);
            block.set_acked_features(block.avail_features());
            block
                .activate(memory.clone(), vec![device_queue], interrupt.clone())
                .unwrap();
            TestDisk {
                memory,
                queue,
                block,
                file,
                interrupt,
                next_descriptor: 0,
            }
        }

        /// Makes `parts` available as one chain and lets the device process the queue.
        /// Returns the used length reported for it.
        fn submit(&mut self, parts: &[Part]) -> u32 {
            self.add_chain(parts);
            self.block.process_queue(0).unwrap();
            self.last_used_len()
        }

        fn add_chain(&mut self, parts: &[Part]) {
            let first = self.next_descriptor;
            let descriptors: Vec<RawDescriptor> = parts
                .iter()
                .enumerate()
                .map(|(i, &(addr, len, writable))| {
                    let index = first + i as u16;
                    let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
                    if i + 1 < parts.len() {
                        flags |= VRING_DESC_F_NEXT;
                    }
                    RawDescriptor::from(Descriptor::new(addr, len, flags as u16, index + 1))
                })
                .collect();
            self.queue.add_desc_chains(&descriptors, first).unwrap();
            self.next_descriptor = first + parts.len() as u16;
        }

        fn last_used_len(&self) -> u32 {
            let used_idx = self.queue.used().idx().load();
            let element = self
                .queue
                .used()
                .ring()
                .ref_at(usize::from(used_idx - 1))
                .unwrap()
                .load();
            element.len()
        }

        fn used_count(&self) -> u16 {
            self.queue.used().idx().load()
        }

        fn header(&self, request_type: u32, sector: u64) {
            let mut bytes = [0u8; HEADER_SIZE];
            bytes[..4].copy_from_slice(&request_type.to_le_bytes());
            bytes[8..].copy_from_slice(&sector.to_le_bytes());
            self.memory
                .write_slice(&bytes, GuestAddress(HEADER))
                .unwrap();
        }

        fn status(&self, addr: u64) -> u8 {
            self.memory.read_obj(GuestAddress(addr)).unwrap()
        }

        /// Sets the status byte to a value no request produces, to see it overwritten.
        fn poison_status(&self, addr: u64) {
            self.memory.write_obj(0xaau8, GuestAddress(addr)).unwrap();
        }

        fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
            use std::os::unix::fs::FileExt;
            let mut bytes = vec![0u8; len];
            self.file
                .as_file()
                .read_exact_at(&mut bytes, offset)
                .unwrap();
            bytes
        }

        /// Runs a request with header, one data part and a 1-byte status; returns
        /// (status, used length).
        fn simple(&mut self, request_type: u32, sector: u64, data: Option<Part>) -> (u8, u32) {
            self.header(request_type, sector);
            self.poison_status(STATUS);
            let mut parts = vec![(HEADER, HEADER_SIZE as u32, false)];
            parts.extend(data);
            parts.push((STATUS, 1, true));
            let used = self.submit(&parts);
            (self.status(STATUS), used)
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn write_then_read_round_trips_through_the_file() {
        let m = memory();
        let mut disk = TestDisk::new(&m, false);
        let data = pattern(1024, 7);
        m.write_slice(&data, GuestAddress(DATA)).unwrap();
        let (status, used) = disk.simple(request_type::OUT, 3, Some((DATA, 1024, false)));
        assert_eq!((status, used), (request_status::OK, 1));
        assert_eq!(disk.file_bytes(3 * 512, 1024), data);
        assert_eq!(disk.interrupt.used.load(Ordering::SeqCst), 1);

        m.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
        let (status, used) = disk.simple(request_type::IN, 3, Some((DATA, 1024, true)));
        assert_eq!((status, used), (request_status::OK, 1025));
        let mut read = vec![0u8; 1024];
        m.read_slice(&mut read, GuestAddress(DATA)).unwrap();
        assert_eq!(read, data);

        // The last sectors of the disk are reachable; zero-length transfers are fine.
        let (status, _) = disk.simple(request_type::IN, DISK_SECTORS - 1, Some((DATA, 512, true)));
        assert_eq!(status, request_status::OK);
        let (status, _) = disk.simple(request_type::IN, DISK_SECTORS, None);
        assert_eq!(status, request_status::OK);
    }

    #[test]
    fn any_split_of_header_data_and_status_is_served() {
        let m = memory();
        let mut disk = TestDisk::new(&m, false);
        disk.file.as_file().set_len(DISK_SECTORS * 512).unwrap();
        let data = pattern(1024, 3);
        {
            use std::os::unix::fs::FileExt;
            disk.file.as_file().write_all_at(&data, 5 * 512).unwrap();
        }
        // Header in two pieces, data in three writable pieces, the status sharing the last one.
        disk.header(request_type::IN, 5);
        let used = disk.submit(&[
            (HEADER, 9, false),
            (HEADER + 9, 7, false),
            (DATA, 100, true),
            (DATA + 0x1000, 412, true),
            (DATA + 0x2000, 513, true),
        ]);
        assert_eq!(used, 1025);
        let mut read = vec![0u8; 1024];
        m.read_slice(&mut read[..100], GuestAddress(DATA)).unwrap();
        m.read_slice(&mut read[100..512], GuestAddress(DATA + 0x1000))
            .unwrap();
        m.read_slice(&mut read[512..], GuestAddress(DATA + 0x2000))
            .unwrap();
        assert_eq!(read, data);
        assert_eq!(disk.status(DATA + 0x2000 + 512), request_status::OK);

        // A write whose data shares the header's descriptor.
        let payload = pattern(512, 9);
        disk.header(request_type::OUT, 9);
        m.write_slice(&payload, GuestAddress(HEADER + 16)).unwrap();
        disk.poison_status(STATUS);
        let used = disk.submit(&[(HEADER, 16 + 512, false), (STATUS, 1, true)]);
        assert_eq!(used, 1);
        assert_eq!(disk.status(STATUS), request_status::OK);
        assert_eq!(disk.file_bytes(9 * 512, 512), payload);
    }

    #[test]
    fn flush_get_id_and_unknown_types() {
        let m = memory();
        let mut disk = TestDisk::new(&m, false);
        assert_eq!(
            disk.simple(request_type::FLUSH, 0, None),
            (request_status::OK, 1)
        );

        let (status, used) = disk.simple(request_type::GET_ID, 0, Some((DATA, 20, true)));
        assert_eq!((status, used), (request_status::OK, 21));
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"zoned-disk-serial-01");

        // A short ID buffer gets what fits.
        m.write_slice(&[0u8; 20], GuestAddress(DATA)).unwrap();
        let (status, used) = disk.simple(request_type::GET_ID, 0, Some((DATA, 8, true)));
        assert_eq!((status, used), (request_status::OK, 9));
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..9], b"zoned-di\0");

        for unknown in [2, 11, 13, 15, 16, 0xffff_ffff] {
            let (status, used) = disk.simple(unknown, 0, None);
            assert_eq!(
                (status, used),
                (request_status::UNSUPP, 1),
                "type {unknown}"
            );
        }
    }

    #[test]
    fn read_only_disk_refuses_writes_and_offers_ro() {
        let m = memory();
        let mut disk = TestDisk::new(&m, true);
        assert_ne!(disk.block.avail_features() & feature::RO, 0);
        m.write_slice(&pattern(512, 1), GuestAddress(DATA)).unwrap();
        let (status, used) = disk.simple(request_type::OUT, 0, Some((DATA, 512, false)));
        assert_eq!((status, used), (request_status::IOERR, 1));
        assert_eq!(disk.file_bytes(0, 512), vec![0u8; 512]);
        let (status, _) = disk.simple(request_type::IN, 0, Some((DATA, 512, true)));
        assert_eq!(status, request_status::OK);
        assert_eq!(
            disk.simple(request_type::FLUSH, 0, None).0,
            request_status::OK
        );
    }

    #[test]
    fn malformed_requests_complete_with_ioerr() {
        let m = memory();
        let mut disk = TestDisk::new(&m, false);
        let ioerr = (request_status::IOERR, 1);
        // Data direction against the type.
        assert_eq!(
            disk.simple(request_type::IN, 0, Some((DATA, 512, false))),
            ioerr
        );
        assert_eq!(
            disk.simple(request_type::OUT, 0, Some((DATA, 512, true))),
            ioerr
        );
        assert_eq!(
            disk.simple(request_type::GET_ID, 0, Some((DATA, 20, false))),
            ioerr
        );
        assert_eq!(
            disk.simple(request_type::FLUSH, 0, Some((DATA, 512, false))),
            ioerr
        );
        // Lengths that are not whole sectors.
        assert_eq!(
            disk.simple(request_type::IN, 0, Some((DATA, 511, true))),
            ioerr
        );
        assert_eq!(
            disk.simple(request_type::OUT, 0, Some((DATA, 513, false))),
            ioerr
        );
        // Past the end of the disk, and sector arithmetic that overflows.
        assert_eq!(
            disk.simple(request_type::IN, DISK_SECTORS, Some((DATA, 512, true))),
            ioerr
        );
        assert_eq!(
            disk.simple(
                request_type::OUT,
                DISK_SECTORS - 1,
                Some((DATA, 1024, false))
            ),
            ioerr
        );
        assert_eq!(
            disk.simple(request_type::IN, u64::MAX, Some((DATA, 512, true))),
            ioerr
        );
        assert_eq!(
            disk.simple(request_type::IN, u64::MAX / 512, Some((DATA, 512, true))),
            ioerr
        );
        // Data outside guest memory.
        let outside = MEMORY_SIZE as u64 - 256;
        assert_eq!(
            disk.simple(request_type::IN, 0, Some((outside, 512, true))),
            ioerr
        );
        assert_eq!(
            disk.simple(request_type::OUT, 0, Some((u64::MAX - 100, 512, false))),
            ioerr
        );

        // A header too short to hold a type and a sector.
        disk.poison_status(STATUS);
        let used = disk.submit(&[(HEADER, 8, false), (STATUS, 1, true)]);
        assert_eq!((disk.status(STATUS), used), ioerr);
        // A header outside guest memory.
        disk.poison_status(STATUS);
        let used = disk.submit(&[(MEMORY_SIZE as u64 - 8, 16, false), (STATUS, 1, true)]);
        assert_eq!((disk.status(STATUS), used), ioerr);
        // Device-readable after device-writable.
        disk.header(request_type::OUT, 0);
        disk.poison_status(STATUS);
        let used = disk.submit(&[
            (HEADER, 16, false),
            (DATA, 512, true),
            (DATA, 512, false),
            (STATUS, 1, true),
        ]);
        assert_eq!((disk.status(STATUS), used), ioerr);
        assert_eq!(disk.interrupt.config.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn chains_without_a_usable_status_byte_are_returned_unanswered() {
        let m = memory();
        let mut disk = TestDisk::new(&m, false);
        disk.header(request_type::IN, 0);
        // No writable descriptor at all (the "status" is device-readable).
        disk.poison_status(STATUS);
        assert_eq!(disk.submit(&[(HEADER, 16, false), (STATUS, 1, false)]), 0);
        assert_eq!(disk.status(STATUS), 0xaa);
        // The status descriptor lies outside guest memory.
        assert_eq!(
            disk.submit(&[(HEADER, 16, false), (MEMORY_SIZE as u64, 1, true)]),
            0
        );
        // Only a zero-length writable descriptor.
        assert_eq!(disk.submit(&[(HEADER, 16, false), (STATUS, 0, true)]), 0);
        assert_eq!(disk.used_count(), 3);
        // The queue keeps working afterwards.
        assert_eq!(
            disk.simple(request_type::FLUSH, 0, None),
            (request_status::OK, 1)
        );
    }

    /// With EVENT_IDX the device tells the driver where to notify next (avail_event) and
    /// interrupts only once the used index passes the driver's used_event.
    #[test]
    fn event_idx_moves_avail_event_and_suppresses_interrupts() {
        let memory = memory();
        let mut disk = TestDisk::with_event_idx(&memory);
        assert_ne!(
            disk.block.avail_features() & (1 << VIRTIO_RING_F_EVENT_IDX),
            0
        );
        let size = u64::from(TEST_QUEUE_SIZE);
        let used_event = GuestAddress(disk.queue.avail_addr().0 + 4 + 2 * size);
        let avail_event = GuestAddress(disk.queue.used_addr().0 + 4 + 8 * size);
        let flush = [(HEADER, HEADER_SIZE as u32, false), (STATUS, 1, true)];
        // The driver wants an interrupt only after used entry 3 (used_event = 2).
        memory.write_obj(2u16, used_event).unwrap();
        disk.header(request_type::FLUSH, 0);
        for expected_avail_event in 1..=2u16 {
            disk.submit(&flush);
            assert_eq!(
                memory.read_obj::<u16>(avail_event).unwrap(),
                expected_avail_event
            );
            assert_eq!(disk.interrupt.used.load(Ordering::SeqCst), 0);
        }
        disk.submit(&flush);
        assert_eq!(disk.used_count(), 3);
        assert_eq!(memory.read_obj::<u16>(avail_event).unwrap(), 3);
        assert_eq!(disk.interrupt.used.load(Ordering::SeqCst), 1);
        // The driver has consumed up to used_event = 2 of 3 completions: one is unseen until it
        // moves used_event to next_used.
        assert_eq!(disk.block.unseen_completions(), Some((0, 3, 2)));
        memory.write_obj(3u16, used_event).unwrap();
        assert_eq!(disk.block.unseen_completions(), None);
        let state = disk.block.debug_state();
        assert!(state.contains("used_event 3 avail_event 3"), "{state}");
    }

    #[test]
    fn a_chain_that_breaks_the_ring_is_a_queue_error() {
        let m = memory();
        let mut disk = TestDisk::new(&m, false);
        // A head index past the queue size.
        let avail = disk.queue.avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx))
            .unwrap()
            .store(TEST_QUEUE_SIZE + 3);
        avail.idx().store(idx + 1);
        assert!(matches!(
            disk.block.process_queue(0),
            Err(QueueError::Queue(_))
        ));

        // An available index far ahead of what the queue can hold.
        let m = memory();
        let mut disk = TestDisk::new(&m, false);
        disk.queue.avail().idx().store(TEST_QUEUE_SIZE + 1);
        assert!(matches!(
            disk.block.process_queue(0),
            Err(QueueError::Queue(_))
        ));
        assert!(matches!(
            disk.block.process_queue(1),
            Err(QueueError::UnknownQueue(1))
        ));
    }

    /// A backend whose every I/O fails, as a broken host disk would.
    struct FailingBackend;

    impl BlockBackend for FailingBackend {
        fn size(&self) -> u64 {
            DISK_SECTORS * SECTOR_SIZE
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&mut self, _offset: u64, _buf: &mut [u8]) -> io::Result<()> {
            Err(io::Error::other("broken"))
        }
        fn write_at(&mut self, _offset: u64, _buf: &[u8]) -> io::Result<()> {
            Err(io::Error::other("broken"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::other("broken"))
        }
    }

    #[test]
    fn host_io_errors_become_ioerr() {
        let m = memory();
        let block = Block::new(Box::new(FailingBackend), "x");
        let mut disk = TestDisk::with_block(&m, temp_disk(0), block);
        let ioerr = (request_status::IOERR, 1);
        assert_eq!(
            disk.simple(request_type::IN, 0, Some((DATA, 512, true))),
            ioerr
        );
        assert_eq!(
            disk.simple(request_type::OUT, 0, Some((DATA, 512, false))),
            ioerr
        );
        assert_eq!(disk.simple(request_type::FLUSH, 0, None), ioerr);
    }

    #[test]
    fn config_space_describes_the_disk() {
        let file = temp_disk(3 * 1024 * 1024 * 1024 + 300);
        let backend = RawFile::open(file.as_path(), false).unwrap();
        let block = Block::new(Box::new(backend), "serial");
        let sectors = (3u64 << 30) / 512;
        assert_eq!(block.capacity_sectors(), sectors);
        let read32 = |offset: u64| {
            let mut data = [0u8; 4];
            block.read_config(offset, &mut data);
            u32::from_le_bytes(data)
        };
        // Capacity as Linux reads it on virtio-mmio: two 32-bit reads.
        let capacity = u64::from(read32(0)) | (u64::from(read32(4)) << 32);
        assert_eq!(capacity, sectors);
        assert_eq!(read32(8), SIZE_MAX);
        assert_eq!(read32(12), SEG_MAX);
        assert_eq!(read32(20), 512);
        let mut byte = [0xffu8; 1];
        block.read_config(CONFIG_SIZE as u64, &mut byte);
        assert_eq!(byte, [0]);
        assert_eq!(read32(1000), 0);
        let features = block.avail_features();
        for bit in [
            VIRTIO_F_VERSION_1,
            feature::SIZE_MAX,
            feature::SEG_MAX,
            feature::BLK_SIZE,
            feature::FLUSH,
        ] {
            assert_ne!(features & bit, 0);
        }
        assert_eq!(features & feature::RO, 0);
        assert_eq!(block.device_type(), 2);
        assert_eq!(block.queue_max_sizes(), &[QUEUE_SIZE]);
    }

    /// A backend with the block sizes of a host device.
    struct Blocks(u32, u32);

    impl BlockBackend for Blocks {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&mut self, _: u64, _: &mut [u8]) -> io::Result<()> {
            Ok(())
        }
        fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn logical_block_size(&self) -> u32 {
            self.0
        }
        fn physical_block_size(&self) -> u32 {
            self.1
        }
    }

    #[test]
    fn config_space_has_the_backends_block_sizes() {
        let config_of = |logical, physical| {
            let block = Block::new(Box::new(Blocks(logical, physical)), "serial");
            let mut config = [0u8; CONFIG_SIZE];
            block.read_config(0, &mut config);
            let topology = block.avail_features() & feature::TOPOLOGY != 0;
            let blk_size = u32::from_le_bytes(config[20..24].try_into().unwrap());
            let min_io = u16::from_le_bytes(config[26..28].try_into().unwrap());
            (blk_size, topology, config[24], min_io)
        };
        // A file, or a 512n device: 512 and no topology.
        assert_eq!(config_of(512, 512).0, 512);
        assert!(!config_of(512, 512).1);
        // 512e: 512-byte blocks, 8 of them to a physical block.
        assert_eq!(config_of(512, 4096), (512, true, 3, 8));
        // 4Kn: 4 KiB blocks, nothing more to say about the physical ones.
        assert_eq!(config_of(4096, 4096).0, 4096);
        assert!(!config_of(4096, 4096).1);
    }

    /// Serves type 16 with a made-up status and leaves the rest to a plain disk: the executor
    /// seam, with features and config fields of its own.
    struct ExtraTypes(PlainExecutor);

    const EXTRA_TYPE: u32 = 16;

    impl Executor for ExtraTypes {
        fn features(&self) -> u64 {
            1 << 17 | self.0.features()
        }
        fn fill_config(&self, config: &mut [u8; CONFIG_SIZE]) {
            self.0.fill_config(config);
            config[config_offset::ZONED] = 0x42;
        }
        fn execute(
            &mut self,
            requests: &[Request],
            memory: &GuestMemoryMmap,
            completions: &mut Vec<Completion>,
        ) {
            for request in requests {
                if request.kind == RequestType::from_raw(EXTRA_TYPE) {
                    completions.push(Completion::with_status(3));
                } else {
                    self.0
                        .execute(std::slice::from_ref(request), memory, completions);
                }
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }

    #[test]
    fn an_executor_serves_extra_types() {
        let m = memory();
        let file = temp_disk(DISK_SECTORS * SECTOR_SIZE);
        let backend = RawFile::open(file.as_path(), false).unwrap();
        let executor = ExtraTypes(PlainExecutor::new(Box::new(backend)));
        let block = Block::with_executor(Box::new(executor), "x");
        let mut disk = TestDisk::with_block(&m, file, block);
        assert_ne!(disk.block.avail_features() & (1 << 17), 0);
        let mut byte = [0u8; 1];
        disk.block
            .read_config(config_offset::ZONED as u64, &mut byte);
        assert_eq!(byte, [0x42]);
        assert_eq!(disk.simple(EXTRA_TYPE, 0, None), (3, 1));
        assert_eq!(
            disk.simple(request_type::FLUSH, 0, None),
            (request_status::OK, 1)
        );
        assert_eq!(disk.simple(18, 0, None), (request_status::UNSUPP, 1));
    }

    #[test]
    fn reset_deactivates_and_activation_checks_queues() {
        let m = memory();
        let mut disk = TestDisk::new(&m, false);
        assert!(disk.block.is_activated());
        let interrupt: Arc<dyn InterruptSignal> = disk.interrupt.clone();
        assert!(matches!(
            disk.block
                .activate(m.clone(), Vec::new(), interrupt.clone()),
            Err(ActivateError::AlreadyActivated)
        ));
        disk.block.set_acked_features(VIRTIO_F_VERSION_1);
        disk.block.reset();
        assert!(!disk.block.is_activated());
        assert_eq!(disk.block.acked_features(), 0);
        assert!(matches!(
            disk.block.process_queue(0),
            Err(QueueError::NotActivated)
        ));
        assert!(matches!(
            disk.block.activate(m.clone(), Vec::new(), interrupt),
            Err(ActivateError::QueueCount {
                expected: 1,
                given: 0
            })
        ));
    }

    use crate::block::Random;

    #[test]
    fn random_chains_never_panic_and_used_lengths_stay_in_bounds() {
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        let addresses = [
            HEADER,
            DATA,
            STATUS,
            MEMORY_SIZE as u64 - 1,
            MEMORY_SIZE as u64 - 16,
            MEMORY_SIZE as u64,
            u64::MAX,
            u64::MAX - 15,
        ];
        let lengths = [0u32, 1, 8, 15, 16, 17, 511, 512, 528, 4096, u32::MAX];
        let types = [0u32, 1, 4, 8, 2, 16, u32::MAX];
        let sectors = [
            0u64,
            1,
            DISK_SECTORS - 1,
            DISK_SECTORS,
            u64::MAX,
            u64::MAX / 512,
        ];
        let m = memory();
        let mut served = 0;
        let mut answered = 0;
        for _round in 0..40 {
            let mut disk = TestDisk::new(&m, random.next().is_multiple_of(4));
            // The mock ring does not wrap, so each disk takes fewer chains than the queue size.
            for _ in 0..(TEST_QUEUE_SIZE / 8) {
                disk.header(random.pick(&types), random.pick(&sectors));
                let count = (random.next() % 7) as usize;
                let parts: Vec<Part> = (0..count)
                    .map(|_| {
                        (
                            random.pick(&addresses),
                            random.pick(&lengths),
                            random.next().is_multiple_of(2),
                        )
                    })
                    .collect();
                if parts.is_empty() {
                    continue;
                }
                let offered: u64 = parts
                    .iter()
                    .filter(|part| part.2)
                    .map(|part| u64::from(part.1))
                    .sum();
                disk.add_chain(&parts);
                let used_before = disk.used_count();
                if disk.block.process_queue(0).is_err() {
                    break;
                }
                assert_eq!(disk.used_count(), used_before.wrapping_add(1));
                let used_len = disk.last_used_len();
                assert!(u64::from(used_len) <= offered, "{parts:?}");
                served += 1;
                answered += usize::from(used_len > 0);
            }
        }
        // The test must exercise the device, not just break out on queue errors.
        assert!(
            served > 150 && answered > 30,
            "served {served}, answered {answered}"
        );
    }

    /// An executor that serves every request with OK and counts the idle time it is given.
    struct IdleCounter(Arc<std::sync::atomic::AtomicUsize>);

    impl Executor for IdleCounter {
        fn features(&self) -> u64 {
            0
        }
        fn fill_config(&self, _config: &mut [u8; CONFIG_SIZE]) {}
        fn execute(
            &mut self,
            requests: &[Request],
            _memory: &GuestMemoryMmap,
            completions: &mut Vec<Completion>,
        ) {
            completions.extend(requests.iter().map(|_| Completion::ok(0)));
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn idle(&mut self, _budget: std::time::Duration) -> bool {
            self.0.fetch_add(1, Ordering::SeqCst);
            false
        }
    }

    #[test]
    fn idle_time_goes_to_the_executor_only_after_quiet_calls_in_a_row() {
        let memory = memory();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let block = Block::with_executor(Box::new(IdleCounter(calls.clone())), "idle");
        let budget = std::time::Duration::from_millis(1);
        let mut inactive = Block::with_executor(Box::new(IdleCounter(calls.clone())), "off");
        for _ in 0..=QUIET_CALLS {
            inactive.idle(budget);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "not before the driver starts it"
        );
        let mut disk = TestDisk::with_block(&memory, temp_disk(4096), block);
        // Quiet calls first, then the executor's turn.
        for _ in 0..QUIET_CALLS {
            assert!(disk.block.idle(budget), "quiet, not for long enough yet");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(!disk.block.idle(budget));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A request starts the count again.
        assert_eq!(disk.simple(request_type::FLUSH, 0, None).0, 0);
        for _ in 0..=QUIET_CALLS {
            assert!(disk.block.idle(budget));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(!disk.block.idle(budget));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
