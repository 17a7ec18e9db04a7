//! The virtio-blk device: its feature bits and config space, and serving its one request queue.
//! It is transport-independent (it implements `VirtioDevice`) and storage-independent (it
//! talks to a `BlockBackend`). Request types it does not know can be served by a
//! `RequestHandler`, which is how a zoned layer adds ZONE_* requests.

use std::sync::Arc;

use log::{debug, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::backend::BlockBackend;
use super::data::{backend_to_guest, bytes_to_guest, guest_to_backend};
use super::request::{Malformed, Request};
use super::{
    feature, request_status, request_type, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX, SERIAL_BYTES,
};
use crate::virtio::{
    read_config_bytes, ActivateError, GuestMemoryMmap, InterruptSignal, QueueError, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// Size of `struct virtio_blk_config` including the zoned fields (virtio 1.3).
pub const CONFIG_SIZE: usize = 96;

/// Byte offsets of the config fields this device fills (little endian).
pub mod config_offset {
    /// le64: disk size in 512-byte sectors.
    pub const CAPACITY: usize = 0;
    /// le32: largest number of data segments in one request.
    pub const SEG_MAX: usize = 12;
    /// le32: logical block size in bytes.
    pub const BLK_SIZE: usize = 20;
    /// le16: number of request queues.
    pub const NUM_QUEUES: usize = 34;
    /// Start of the zoned fields (`zone_sectors` onwards), filled by a zoned handler.
    pub const ZONED: usize = 72;
}

/// The outcome of one request: its status code and how many data bytes were written into
/// device-writable buffers (the status byte is counted separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub status: u8,
    pub data_bytes_written: u32,
}

impl Completion {
    /// Success after writing `data_bytes_written` bytes into the guest's buffers.
    pub fn ok(data_bytes_written: u32) -> Self {
        Completion {
            status: request_status::OK,
            data_bytes_written,
        }
    }

    /// A completion that wrote no data.
    pub fn with_status(status: u8) -> Self {
        Completion {
            status,
            data_bytes_written: 0,
        }
    }
}

/// Extra request types layered on the plain block device (e.g. zoned block commands).
pub trait RequestHandler: Send {
    /// Feature bits offered on top of the plain block features.
    fn features(&self) -> u64 {
        0
    }

    /// Fills the config fields the handler owns (e.g. from `config_offset::ZONED` on).
    fn fill_config(&self, _config: &mut [u8; CONFIG_SIZE]) {}

    /// Serves `request` if the handler owns its type, including plain types it must intercept
    /// (a zoned disk checks writes against write pointers). `None` leaves it to the plain
    /// block device.
    fn handle(
        &mut self,
        request: &Request,
        memory: &GuestMemoryMmap,
        backend: &mut dyn BlockBackend,
    ) -> Option<Completion>;
}

/// Executes parsed requests against the backend; the part of the device the queue feeds.
struct RequestServer {
    backend: Box<dyn BlockBackend>,
    handler: Option<Box<dyn RequestHandler>>,
    serial: [u8; SERIAL_BYTES],
    /// Usable size: whole sectors only.
    capacity_bytes: u64,
}

impl RequestServer {
    /// Serves one chain and returns the used length to report: data bytes written plus the
    /// status byte, or 0 for a chain with no status byte to answer in.
    fn serve(
        &mut self,
        memory: &GuestMemoryMmap,
        descriptors: impl IntoIterator<Item = Descriptor>,
    ) -> u32 {
        let (status_address, completion) = match Request::parse(memory, descriptors) {
            Ok(request) => {
                let completion = self.execute(memory, &request);
                (request.status, completion)
            }
            Err(Malformed {
                error,
                status: Some(address),
            }) => {
                debug!("virtio-blk: malformed request: {error}");
                (address, Completion::with_status(request_status::IOERR))
            }
            Err(Malformed {
                error,
                status: None,
            }) => {
                debug!("virtio-blk: dropping request: {error}");
                return 0;
            }
        };
        match memory.write_obj(completion.status, status_address) {
            Ok(()) => completion.data_bytes_written.saturating_add(1),
            Err(error) => {
                debug!("virtio-blk: cannot write the request status: {error}");
                0
            }
        }
    }

    fn execute(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        if let Some(handler) = self.handler.as_mut() {
            if let Some(completion) = handler.handle(request, memory, self.backend.as_mut()) {
                return completion;
            }
        }
        match request.request_type {
            request_type::IN => self.read(memory, request),
            request_type::OUT => self.write(memory, request),
            request_type::FLUSH => self.flush(request),
            request_type::GET_ID => self.get_id(memory, request),
            _ => Completion::with_status(request_status::UNSUPP),
        }
    }

    /// IN: device-writable data only, whole sectors, inside the disk.
    fn read(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        let len = request.writable_len();
        let Some(offset) = self.checked_offset(request, len) else {
            return Completion::with_status(request_status::IOERR);
        };
        if !request.readable.is_empty() {
            return Completion::with_status(request_status::IOERR);
        }
        match backend_to_guest(memory, &request.writable, self.backend.as_mut(), offset) {
            // `len` <= MAX_REQUEST_DATA_BYTES, which fits in u32.
            Ok(()) => Completion::ok(u32::try_from(len).unwrap_or(u32::MAX)),
            Err(error) => {
                warn!("virtio-blk: read of {len} bytes at {offset} failed: {error}");
                Completion::with_status(request_status::IOERR)
            }
        }
    }

    /// OUT: device-readable data only, whole sectors, inside the disk, disk writable.
    fn write(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        let len = request.readable_len();
        let Some(offset) = self.checked_offset(request, len) else {
            return Completion::with_status(request_status::IOERR);
        };
        if !request.writable.is_empty() || self.backend.read_only() {
            return Completion::with_status(request_status::IOERR);
        }
        match guest_to_backend(memory, &request.readable, self.backend.as_mut(), offset) {
            Ok(()) => Completion::ok(0),
            Err(error) => {
                warn!("virtio-blk: write of {len} bytes at {offset} failed: {error}");
                Completion::with_status(request_status::IOERR)
            }
        }
    }

    fn flush(&mut self, request: &Request) -> Completion {
        if !request.readable.is_empty() || !request.writable.is_empty() {
            return Completion::with_status(request_status::IOERR);
        }
        match self.backend.flush() {
            Ok(()) => Completion::ok(0),
            Err(error) => {
                warn!("virtio-blk: flush failed: {error}");
                Completion::with_status(request_status::IOERR)
            }
        }
    }

    /// GET_ID: the serial, truncated to the buffer the driver gave.
    fn get_id(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        if !request.readable.is_empty() {
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

    /// The byte offset of a data transfer of `len` bytes at the request's sector, if it is
    /// whole sectors and lies inside the disk.
    fn checked_offset(&self, request: &Request, len: u64) -> Option<u64> {
        if len % SECTOR_SIZE != 0 {
            return None;
        }
        let offset = request.sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        (end <= self.capacity_bytes).then_some(offset)
    }
}

/// What the device holds between DRIVER_OK and reset.
struct Active {
    memory: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<dyn InterruptSignal>,
}

/// A virtio-blk device with one request queue of `QUEUE_SIZE` entries.
pub struct Block {
    server: RequestServer,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_SIZE],
    queue_max_sizes: [u16; 1],
    active: Option<Active>,
}

impl Block {
    /// A plain block device over `backend`. `serial` is what GET_ID returns (truncated to 20
    /// bytes). Read-only backends get the RO feature.
    pub fn new(backend: Box<dyn BlockBackend>, serial: &str) -> Self {
        Self::build(backend, serial, None)
    }

    /// A block device whose `handler` gets the first look at every request and adds its
    /// features and config fields.
    pub fn with_handler(
        backend: Box<dyn BlockBackend>,
        serial: &str,
        handler: Box<dyn RequestHandler>,
    ) -> Self {
        Self::build(backend, serial, Some(handler))
    }

    fn build(
        backend: Box<dyn BlockBackend>,
        serial: &str,
        handler: Option<Box<dyn RequestHandler>>,
    ) -> Self {
        let capacity_sectors = backend.size() / SECTOR_SIZE;
        let mut avail_features =
            VIRTIO_F_VERSION_1 | feature::SEG_MAX | feature::BLK_SIZE | feature::FLUSH;
        if backend.read_only() {
            avail_features |= feature::RO;
        }
        let mut config = [0u8; CONFIG_SIZE];
        put(
            &mut config,
            config_offset::CAPACITY,
            &capacity_sectors.to_le_bytes(),
        );
        put(&mut config, config_offset::SEG_MAX, &SEG_MAX.to_le_bytes());
        // SECTOR_SIZE is 512, which fits in u32.
        put(
            &mut config,
            config_offset::BLK_SIZE,
            &(SECTOR_SIZE as u32).to_le_bytes(),
        );
        put(&mut config, config_offset::NUM_QUEUES, &1u16.to_le_bytes());
        if let Some(handler) = handler.as_ref() {
            avail_features |= handler.features();
            handler.fill_config(&mut config);
        }
        let mut serial_bytes = [0u8; SERIAL_BYTES];
        let serial = serial.as_bytes();
        let count = serial.len().min(SERIAL_BYTES);
        serial_bytes[..count].copy_from_slice(&serial[..count]);
        Block {
            server: RequestServer {
                backend,
                handler,
                serial: serial_bytes,
                capacity_bytes: capacity_sectors * SECTOR_SIZE,
            },
            avail_features,
            acked_features: 0,
            config,
            queue_max_sizes: [QUEUE_SIZE],
            active: None,
        }
    }

    /// Disk size in 512-byte sectors, as the guest sees it.
    pub fn capacity_sectors(&self) -> u64 {
        self.server.capacity_bytes / SECTOR_SIZE
    }

    /// Flushes the backend (e.g. before the VMM exits).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.server.backend.flush()
    }
}

/// The next available chain; the iterator (and its borrow of the queue) ends here.
fn next_chain<'m>(
    queue: &mut Queue,
    memory: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, QueueError> {
    Ok(queue.iter(memory).map_err(QueueError::Queue)?.next())
}

/// Copies `bytes` into `config` at `offset`; offsets are constants inside `CONFIG_SIZE`.
fn put(config: &mut [u8; CONFIG_SIZE], offset: usize, bytes: &[u8]) {
    if let Some(field) = config.get_mut(offset..offset + bytes.len()) {
        field.copy_from_slice(bytes);
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
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
    }

    fn process_queue(&mut self, queue_index: u16) -> Result<(), QueueError> {
        if queue_index != 0 {
            return Err(QueueError::UnknownQueue(queue_index));
        }
        let Some(active) = self.active.as_mut() else {
            return Err(QueueError::NotActivated);
        };
        let mut completed = false;
        while let Some(chain) = next_chain(&mut active.queue, &active.memory)? {
            let head = chain.head_index();
            let used_len = self.server.serve(&active.memory, chain);
            active
                .queue
                .add_used(&active.memory, head, used_len)
                .map_err(QueueError::Queue)?;
            completed = true;
        }
        if completed
            && active
                .queue
                .needs_notification(&active.memory)
                .map_err(QueueError::Queue)?
        {
            active
                .interrupt
                .signal_used_queue(queue_index)
                .map_err(QueueError::Interrupt)?;
        }
        Ok(())
    }
}
