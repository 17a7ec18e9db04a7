//! Virtio plumbing shared by every device: the `VirtioDevice` trait a transport drives, the
//! `InterruptSignal` trait a device uses to wake the guest, the spec's named constants, and the
//! virtio-mmio transport (`mmio`). Nothing here knows what a block request is.

pub mod mmio;

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_config;
use virtio_queue::Queue;

pub use mmio::{IrqTrigger, MmioError, MmioInterrupt, MmioTransport};

/// Guest memory as devices see it. Cloning it is cheap (regions are reference counted).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Feature bit: the device follows virtio 1.x. virtio-mmio version 2 requires it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_config::VIRTIO_F_VERSION_1;

/// Device status bits (virtio 1.x §2.1), as written by the driver to the Status register.
pub mod status {
    use virtio_bindings::virtio_config;

    /// The guest has noticed the device.
    pub const ACKNOWLEDGE: u32 = virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE;
    /// The guest knows how to drive the device.
    pub const DRIVER: u32 = virtio_config::VIRTIO_CONFIG_S_DRIVER;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = virtio_config::VIRTIO_CONFIG_S_FEATURES_OK;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
    /// The guest gave up on the device.
    pub const FAILED: u32 = virtio_config::VIRTIO_CONFIG_S_FAILED;
}

/// How a device tells the guest that something happened. The transport implements it (it owns
/// the interrupt status register); tests use a fake that counts calls.
pub trait InterruptSignal: Send + Sync {
    /// Used buffers were added to queue `queue_index`.
    fn signal_used_queue(&self, queue_index: u16) -> io::Result<()>;
    /// The configuration space (or the device status) changed.
    fn signal_config_change(&self) -> io::Result<()>;
}

/// Why a device refused to start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device has.
    #[error("the device expects {expected} queues, the transport gave {given}")]
    QueueCount { expected: usize, given: usize },
    /// The device was already running.
    #[error("the device is already activated")]
    AlreadyActivated,
}

/// Why processing a queue failed in a way that breaks the queue itself (the transport then sets
/// DEVICE_NEEDS_RESET). Malformed requests are not errors: they complete with a status code.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The guest notified a queue the device does not have.
    #[error("queue {0} does not exist")]
    UnknownQueue(u16),
    /// The device was notified before it was activated.
    #[error("the device is not activated")]
    NotActivated,
    /// The ring itself is corrupt (bad indices, unreachable ring memory, ...).
    #[error("the virtio queue is broken")]
    Queue(#[source] virtio_queue::Error),
    /// The guest could not be interrupted.
    #[error("the guest interrupt could not be raised")]
    Interrupt(#[source] io::Error),
}

/// A virtio device model as a transport drives it. The transport owns the registers, feature
/// pages and queue configuration; the device owns feature bits, config space and requests.
pub trait VirtioDevice: Send {
    /// Virtio device ID (virtio 1.x §5), e.g. 2 for a block device.
    fn device_type(&self) -> u32;
    /// One line on the device's queues for a state dump (`kill -USR1`), e.g. ring indexes.
    fn debug_state(&self) -> String {
        String::new()
    }
    /// A queue holding requests the device has not taken, as (queue index, next_avail).
    fn unserved(&self) -> Option<(u16, u16)> {
        None
    }
    /// A queue with completions the driver has not consumed, as far as the device can tell
    /// (with EVENT_IDX: the driver's used_event lags next_used), as (queue index, next_used,
    /// used_event). The driver waits for an interrupt for these; `None` if nothing lags or the
    /// device cannot tell.
    fn unseen_completions(&self) -> Option<(u16, u16, u16)> {
        None
    }
    /// Maximum size of each queue; the slice length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn avail_features(&self) -> u64;
    /// Feature bits the driver accepted (a subset of `avail_features`).
    fn acked_features(&self) -> u64;
    /// Records the features the driver accepted. The transport only calls this with a subset of
    /// `avail_features`.
    fn set_acked_features(&mut self, features: u64);
    /// Whether the device can work with `features`, a subset of `avail_features` the driver
    /// wants to accept. `false` makes the transport refuse FEATURES_OK, as a device must when
    /// the driver left out a feature it cannot do without (a host-managed zoned block device
    /// without VIRTIO_BLK_F_ZONED, virtio 1.3 5.2.5).
    fn accepts_features(&self, _features: u64) -> bool {
        true
    }
    /// Reads `data.len()` bytes of config space at `offset`. Bytes past the end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes config space. Read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with validated, ready queues (one per `queue_max_sizes` entry).
    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn InterruptSignal>,
    ) -> Result<(), ActivateError>;
    /// Whether `activate` succeeded and no reset happened since.
    fn is_activated(&self) -> bool;
    /// Stops the device and forgets the queues and acked features.
    fn reset(&mut self);
    /// An eventfd that should receive queue `queue_index`'s notifications directly (the VMM
    /// registers it as the ioeventfd), for a device served outside vmm (vhost-user); `None`
    /// (the default) sends them through `process_queue`.
    fn kick_event(&self, _queue_index: u16) -> Option<vmm_sys_util::eventfd::EventFd> {
        None
    }
    /// The guest notified queue `queue_index`: process every available request on it.
    fn process_queue(&mut self, queue_index: u16) -> Result<(), QueueError>;
    /// The VMM is about to exit: make whatever the device holds durable.
    fn shutdown(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// The VM lost power (`--power-cut`) and has stopped: a device with a volatile write cache
    /// loses what `cut` says and reports it; any other is shut down as usual.
    fn power_cut(
        &mut self,
        _cut: crate::zoned::image::PowerCut,
    ) -> std::io::Result<Option<crate::zoned::image::PowerCutReport>> {
        self.shutdown().map(|()| None)
    }
    /// Called periodically (see `MmioTransport::idle`): if the guest sent nothing since the
    /// last call, the device may do deferred work for about `budget`. Returns whether some is
    /// left.
    fn idle(&mut self, _budget: std::time::Duration) -> bool {
        false
    }
}

/// Copies `config[offset..offset + data.len()]` into `data`; what lies past the end of `config`
/// (or an offset that overflows) reads as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(source) = config.get(start..) {
        let count = source.len().min(data.len());
        data[..count].copy_from_slice(&source[..count]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
