//! virtio-blk: the device (`device`: features, config space, queue processing, completion),
//! the request parser (`request`: one request from a descriptor chain, its type decoded once),
//! the seam to what serves requests (`executor`: the `Executor` trait; the zoned disk is the
//! other implementation, in `crate::zoned`), the plain disk (`plain`: `PlainExecutor` over a
//! `BlockBackend`), storage (`backend`: the `BlockBackend` trait and `RawFile`), data movement
//! between guest memory and storage (`data`), and quick guest memory access (`guest`).

pub mod backend;
pub mod data;
pub mod device;
pub mod executor;
pub mod guest;
pub mod plain;
pub mod request;

use virtio_bindings::virtio_blk;

pub use backend::{BackendError, BlockBackend, RawFile};
pub use device::Block;
pub use executor::{Answered, Completion, Executor};
pub use plain::PlainExecutor;

pub use request::{Malformed, ParseError, Request, RequestType, Segment};

/// virtio-blk addresses storage in 512-byte sectors, whatever the block size.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the one request queue. A request needs at most `QUEUE_SIZE` descriptors.
pub const QUEUE_SIZE: u16 = 256;
/// Largest number of data segments a request may carry: the queue minus header and status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data segment the driver may use (offered through SIZE_MAX).
pub const SIZE_MAX: u32 = 256 << 10;
/// Largest data payload one request may carry. A driver honouring SEG_MAX and SIZE_MAX stays
/// below it (254 * 256 KiB); it stops absurd requests from tying up the device.
pub const MAX_REQUEST_DATA_BYTES: u64 = 64 << 20;

const _: () = assert!(SEG_MAX as u64 * SIZE_MAX as u64 <= MAX_REQUEST_DATA_BYTES);
/// Length of the GET_ID reply (the serial number), in bytes.
pub const SERIAL_BYTES: usize = virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

/// Request types (virtio 1.x §5.2.6).
pub mod request_type {
    use virtio_bindings::virtio_blk;

    /// Read sectors into device-writable buffers.
    pub const IN: u32 = virtio_blk::VIRTIO_BLK_T_IN;
    /// Write sectors from device-readable buffers.
    pub const OUT: u32 = virtio_blk::VIRTIO_BLK_T_OUT;
    /// Make previous writes durable.
    pub const FLUSH: u32 = virtio_blk::VIRTIO_BLK_T_FLUSH;
    /// Return the device serial number.
    pub const GET_ID: u32 = virtio_blk::VIRTIO_BLK_T_GET_ID;
    /// The zoned extension (VIRTIO_BLK_F_ZONED): append, report, and zone management.
    pub const ZONE_APPEND: u32 = virtio_blk::VIRTIO_BLK_T_ZONE_APPEND;
    pub const ZONE_REPORT: u32 = virtio_blk::VIRTIO_BLK_T_ZONE_REPORT;
    pub const ZONE_OPEN: u32 = virtio_blk::VIRTIO_BLK_T_ZONE_OPEN;
    pub const ZONE_CLOSE: u32 = virtio_blk::VIRTIO_BLK_T_ZONE_CLOSE;
    pub const ZONE_FINISH: u32 = virtio_blk::VIRTIO_BLK_T_ZONE_FINISH;
    pub const ZONE_RESET: u32 = virtio_blk::VIRTIO_BLK_T_ZONE_RESET;
    pub const ZONE_RESET_ALL: u32 = virtio_blk::VIRTIO_BLK_T_ZONE_RESET_ALL;
}

/// Request status codes (virtio 1.x §5.2.6), written to the status byte.
pub mod request_status {
    use virtio_bindings::virtio_blk;

    /// Success.
    pub const OK: u8 = virtio_blk::VIRTIO_BLK_S_OK as u8;
    /// The request was malformed or the I/O failed.
    pub const IOERR: u8 = virtio_blk::VIRTIO_BLK_S_IOERR as u8;
    /// The request type is not supported.
    pub const UNSUPP: u8 = virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;
}

/// virtio-blk feature bits, as 64-bit masks.
pub mod feature {
    use virtio_bindings::virtio_blk;

    /// `size_max` in config space is valid.
    pub const SIZE_MAX: u64 = 1 << virtio_blk::VIRTIO_BLK_F_SIZE_MAX;
    /// `seg_max` in config space is valid.
    pub const SEG_MAX: u64 = 1 << virtio_blk::VIRTIO_BLK_F_SEG_MAX;
    /// `blk_size` in config space is valid.
    pub const BLK_SIZE: u64 = 1 << virtio_blk::VIRTIO_BLK_F_BLK_SIZE;
    /// The device is read-only.
    pub const RO: u64 = 1 << virtio_blk::VIRTIO_BLK_F_RO;
    /// The device accepts FLUSH requests.
    pub const FLUSH: u64 = 1 << virtio_blk::VIRTIO_BLK_F_FLUSH;
    /// The topology fields (physical block size, I/O sizes) in config space are valid.
    pub const TOPOLOGY: u64 = 1 << virtio_blk::VIRTIO_BLK_F_TOPOLOGY;
}

/// xorshift64: deterministic pseudo-random numbers for the block tests' random requests.
#[cfg(test)]
pub(crate) struct Random(pub u64);

#[cfg(test)]
impl Random {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[(self.next() % choices.len() as u64) as usize]
    }
}
