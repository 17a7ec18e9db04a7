//! The seam between the virtio-blk device and what serves its requests. The device
//! (`device::Block`) owns the queue, the config space, parsing and completion; an [`Executor`]
//! owns storage: the feature bits and config fields that describe it, and serving a batch of
//! parsed requests against it. Two implement it: `plain::PlainExecutor` over a file or host
//! block device, and `zoned::ZonedExecutor` over a zoned disk.

use std::io;
use std::time::Duration;

use super::device::CONFIG_SIZE;
use super::request::{ParseError, Request};
use super::request_status;
use crate::virtio::GuestMemoryMmap;
use crate::zoned::image::{PowerCut, PowerCutReport};

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

/// A chain the device answered itself, without the executor.
#[derive(Debug)]
pub enum Answered<'a> {
    /// A request: GET_ID, or a zoned type from a driver that refused the zoned feature.
    Request { request: &'a Request, status: u8 },
    /// A chain that is not a request: answered with IOERR, or returned unanswered when it has
    /// no usable status byte.
    Malformed {
        error: &'a ParseError,
        answered: bool,
    },
}

/// Serves the storage side of a virtio-blk device.
pub trait Executor: Send {
    /// Feature bits that depend on the storage (read-only, topology, zoned), offered on top of
    /// the device's own (version 1, segment limits, block size, flush, event index).
    fn features(&self) -> u64;

    /// The subset of `features` the driver must accept: without them the device refuses
    /// FEATURES_OK, and should it run anyway, the zoned request types get UNSUPP.
    fn required_features(&self) -> u64 {
        0
    }

    /// Fills the config fields that describe the storage: capacity, block sizes and topology,
    /// and any fields of its own (the zoned ones).
    fn fill_config(&self, config: &mut [u8; CONFIG_SIZE]);

    /// Serves requests the guest made available together, pushing one completion per request,
    /// in order, onto `completions` (which comes empty). They may run in any order or in
    /// parallel, provided each completes as if served alone in the order given. GET_ID never
    /// comes here: the device answers it.
    fn execute(
        &mut self,
        requests: &[Request],
        memory: &GuestMemoryMmap,
        completions: &mut Vec<Completion>,
    );

    /// Told of every chain the device answered without `execute` (a zoned disk's trace lists
    /// them); nothing by default.
    fn answered(&mut self, _answer: Answered<'_>) {}

    /// Makes everything written durable (called when the VMM shuts down).
    fn flush(&mut self) -> io::Result<()>;

    /// The VM lost power (`--power-cut`), with no request in flight: what a volatile write
    /// cache held may be lost (see `ZoneStorage::power_cut`); without one this is `flush`.
    fn power_cut(&mut self, _cut: PowerCut) -> io::Result<Option<PowerCutReport>> {
        self.flush().map(|()| None)
    }

    /// Called between batches when the guest has sent nothing for a while: deferred work
    /// (the zoned image's reclaim of reset zones) for about `budget`. Returns whether some is
    /// left.
    fn idle(&mut self, _budget: Duration) -> bool {
        false
    }
}
