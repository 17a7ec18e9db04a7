//! The plain disk: an [`Executor`] that serves IN, OUT and FLUSH from a [`BlockBackend`] (a
//! file or a host block device), byte N of the disk being byte N of the storage.

use std::io;

use log::warn;

use super::backend::BlockBackend;
use super::device::{config_offset, fill_block_sizes, put, CONFIG_SIZE};
use super::executor::{Completion, Executor};
use super::request::{Request, RequestType};
use super::{feature, request_status, SECTOR_SIZE};
use crate::virtio::GuestMemoryMmap;

/// Serves a plain virtio-blk disk from a backend.
pub struct PlainExecutor {
    backend: Box<dyn BlockBackend>,
    /// Usable size: whole sectors only.
    capacity_bytes: u64,
}

impl PlainExecutor {
    pub fn new(backend: Box<dyn BlockBackend>) -> Self {
        let capacity_bytes = backend.size() / SECTOR_SIZE * SECTOR_SIZE;
        PlainExecutor {
            backend,
            capacity_bytes,
        }
    }

    fn execute_one(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        if !matches!(
            request.kind,
            RequestType::In | RequestType::Out | RequestType::Flush
        ) {
            return Completion::with_status(request_status::UNSUPP);
        }
        if !request.data_fits_type() {
            return Completion::with_status(request_status::IOERR);
        }
        match request.kind {
            RequestType::In => self.read(memory, request),
            RequestType::Out => self.write(memory, request),
            _ => self.flush_request(),
        }
    }

    /// IN: whole sectors, inside the disk.
    fn read(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        let len = request.writable_len();
        let Some(offset) = request.data_offset(len, self.capacity_bytes) else {
            return Completion::with_status(request_status::IOERR);
        };
        match self
            .backend
            .read_segments(memory, &request.writable, offset)
        {
            // `len` <= MAX_REQUEST_DATA_BYTES, which fits in u32.
            Ok(()) => Completion::ok(u32::try_from(len).unwrap_or(u32::MAX)),
            Err(error) => {
                warn!("virtio-blk: read of {len} bytes at {offset} failed: {error}");
                Completion::with_status(request_status::IOERR)
            }
        }
    }

    /// OUT: whole sectors, inside the disk, disk writable.
    fn write(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        let len = request.readable_len();
        let Some(offset) = request.data_offset(len, self.capacity_bytes) else {
            return Completion::with_status(request_status::IOERR);
        };
        if self.backend.read_only() {
            return Completion::with_status(request_status::IOERR);
        }
        match self
            .backend
            .write_segments(memory, &request.readable, offset)
        {
            Ok(()) => Completion::ok(0),
            Err(error) => {
                warn!("virtio-blk: write of {len} bytes at {offset} failed: {error}");
                Completion::with_status(request_status::IOERR)
            }
        }
    }

    fn flush_request(&mut self) -> Completion {
        match self.backend.flush() {
            Ok(()) => Completion::ok(0),
            Err(error) => {
                warn!("virtio-blk: flush failed: {error}");
                Completion::with_status(request_status::IOERR)
            }
        }
    }
}

impl Executor for PlainExecutor {
    fn features(&self) -> u64 {
        let mut features = 0;
        if self.backend.read_only() {
            features |= feature::RO;
        }
        if self.backend.physical_block_size() > self.backend.logical_block_size() {
            features |= feature::TOPOLOGY;
        }
        features
    }

    fn fill_config(&self, config: &mut [u8; CONFIG_SIZE]) {
        let sectors = self.capacity_bytes / SECTOR_SIZE;
        put(config, config_offset::CAPACITY, &sectors.to_le_bytes());
        fill_block_sizes(
            config,
            self.backend.logical_block_size(),
            self.backend.physical_block_size(),
        );
    }

    fn execute(
        &mut self,
        requests: &[Request],
        memory: &GuestMemoryMmap,
        completions: &mut Vec<Completion>,
    ) {
        for request in requests {
            let completion = self.execute_one(memory, request);
            completions.push(completion);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.backend.flush()
    }
}
