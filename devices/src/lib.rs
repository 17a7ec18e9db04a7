//! Device models for vmm. Nothing here knows about KVM: devices see guest memory through
//! `vm-memory`, are driven through plain method calls, and signal the guest through small traits,
//! so each one is testable without a VM.
//!
//! - `virtio`: the `VirtioDevice` trait and the virtio-mmio transport.
//! - `block`: the virtio-blk device, its request parser, the `Executor` seam, the plain disk and
//!   its storage backends.
//! - `zoned`: the zone state machine, the zoned wire formats, the zoned executor, and the
//!   backends (file-emulated zoned image, host zoned device).
//! - `file_io`: I/O between guest memory and a file, shared by plain and zoned storage.
//! - `file_lock`: advisory locks that keep two VMMs off one disk file.
//! - `fs`: virtio-fs, its queues served by a vhost-user backend (virtiofsd).
//! - `size`: the one grammar of sizes on the command line (`--memory`, a zoned disk's `size=`).
//! - `testing` (tests, and the `test-support` or `testing` feature only): the driver side of a
//!   virtqueue (`testing::driver`, for the bench crate), helpers, and (`testing` feature) the
//!   fuzz target bodies.
//!
//! # Wiring a disk into a VM
//!
//! ```no_run
//! use std::path::Path;
//! use std::sync::{Arc, Mutex};
//!
//! use devices::block::{Block, RawFile};
//! use devices::virtio::{GuestMemoryMmap, MmioTransport};
//! use vmm_sys_util::eventfd::EventFd;
//!
//! # fn wire(memory: GuestMemoryMmap) -> Result<(), Box<dyn std::error::Error>> {
//! let backend = RawFile::open(Path::new("disk.img"), false)?;
//! let block = Block::new(Box::new(backend), "disk0");
//! // The VMM registers this eventfd as a resample irqfd for the device's GSI (level-triggered).
//! let irqfd = EventFd::new(libc::EFD_NONBLOCK)?;
//! let transport = MmioTransport::new(memory, Box::new(block), Box::new(irqfd.try_clone()?))?;
//! let transport = Arc::new(Mutex::new(transport));
//! let ioevents = transport.lock().unwrap().queue_notify_ioevents();
//! for (offset, queue_index) in ioevents {
//!     // Register an ioeventfd at MMIO address base + offset, 4-byte datamatch queue_index.
//! #   let _ = (offset, queue_index);
//! }
//! // Event loop: when the ioeventfd of queue 0 fires, drain it, then:
//! transport.lock().unwrap().notify_queue(0);
//! // When the resample eventfd fires (the guest's EOI lowered the line), drain it, then:
//! transport.lock().unwrap().interrupt().resample()?;
//! // On an MMIO exit at base + offset (window size `devices::virtio::mmio::MMIO_WINDOW_SIZE`):
//! let mut data = [0u8; 4];
//! transport.lock().unwrap().read(0, &mut data);
//! # Ok(())
//! # }
//! ```

pub mod block;
pub mod file_io;
pub mod file_lock;
pub mod fs;
pub mod size;
#[cfg(any(test, feature = "testing", feature = "test-support"))]
pub mod testing;
pub mod virtio;
pub mod zoned;
