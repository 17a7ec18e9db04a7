//! virtio-mmio transport, version 2 (virtio 1.x §4.2.2). It owns the register file, the device
//! status state machine, feature pages, queue configuration and the interrupt status register,
//! and drives a `VirtioDevice`. Every access the guest makes is untrusted: wrong sizes, unaligned
//! offsets and out-of-range selectors are ignored (reads return zero), never a panic.
//!
//! How the VMM wires it: put the transport on the MMIO bus at some base (window
//! `MMIO_WINDOW_SIZE`), forward accesses to `read`/`write` with the offset from the base, and
//! either let `QueueNotify` writes reach `write` or register one ioeventfd per entry of
//! `queue_notify_ioevents` and call `notify_queue` when it fires. The interrupt is raised through
//! an `IrqTrigger` (an irqfd `EventFd`).
//!
//! InterruptStatus has level semantics: the line is asserted while a bit is set. The VMM makes
//! the irqfd a resample irqfd on a level-triggered pin: an `IrqTrigger` write asserts the pin,
//! KVM lowers it again at the guest's EOI and signals the resample eventfd, and the VMM then
//! calls `MmioInterrupt::resample`, which asserts it again while a bit is still set (an
//! interrupt the device raised after the driver read InterruptStatus). InterruptACK needs
//! nothing more: the pin was lowered at the EOI.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use log::warn;
use virtio_bindings::virtio_mmio as regs;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    status, GuestMemoryMmap, InterruptSignal, QueueError, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// "virt" in little endian.
const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (virtio 1.x) register layout.
const MMIO_VERSION: u32 = 2;
/// Reported in VendorID; the driver does not interpret it.
const VENDOR_ID: u32 = 0;
/// Config space starts here inside the MMIO window.
pub const CONFIG_SPACE_OFFSET: u64 = regs::VIRTIO_MMIO_CONFIG as u64;
/// Offset of the QueueNotify register, where an ioeventfd can catch notifications.
pub const QUEUE_NOTIFY_OFFSET: u64 = regs::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Size of the MMIO window one transport occupies.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Raises the device's interrupt line in the guest. The VMM implements it with an irqfd: on a
/// level-triggered pin (a resample irqfd) it asserts the pin until the guest's EOI; on an edge
/// pin it is one edge.
pub trait IrqTrigger: Send + Sync {
    /// Asserts the line (or sends one edge). Asserting a line that is asserted does nothing.
    fn trigger(&self) -> io::Result<()>;
}

impl IrqTrigger for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// The InterruptStatus register plus the line it raises. Devices see it as an
/// `InterruptSignal`; the transport reads and acknowledges it.
pub struct MmioInterrupt {
    status: AtomicU32,
    /// InterruptACK writes so far: tells a pending interrupt the guest is working on from one
    /// it never saw.
    acks: AtomicU64,
    trigger: Box<dyn IrqTrigger>,
}

impl MmioInterrupt {
    fn new(trigger: Box<dyn IrqTrigger>) -> Self {
        MmioInterrupt {
            status: AtomicU32::new(0),
            acks: AtomicU64::new(0),
            trigger,
        }
    }

    /// Current InterruptStatus bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The guest's EOI lowered a level-triggered line (KVM signalled the resample eventfd):
    /// asserts it again if a bit is still set, as a level-triggered line stays up until
    /// InterruptACK clears the last bit. Returns whether it did.
    pub fn resample(&self) -> io::Result<bool> {
        if self.status() == 0 {
            return Ok(false);
        }
        self.trigger.trigger().map(|()| true)
    }

    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.trigger.trigger()
    }

    fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
        self.acks.fetch_add(1, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

impl InterruptSignal for MmioInterrupt {
    fn signal_used_queue(&self, _queue_index: u16) -> io::Result<()> {
        self.raise(regs::VIRTIO_MMIO_INT_VRING)
    }

    fn signal_config_change(&self) -> io::Result<()> {
        self.raise(regs::VIRTIO_MMIO_INT_CONFIG)
    }
}

/// Errors building a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// A device declared a queue size virtio-queue cannot use (0, not a power of two, too big).
    #[error("queue {index} has an invalid maximum size {max_size}")]
    InvalidQueueMaxSize {
        index: usize,
        max_size: u16,
        #[source]
        source: virtio_queue::Error,
    },
}

/// A virtio-mmio version 2 transport driving one device. It is `Send`; the VMM shares it between
/// vCPU threads (MMIO exits) and its event loop (ioeventfds) behind an `Arc<Mutex<_>>`. Queue
/// processing runs under that lock, so a vCPU touching this device's registers waits for it.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    interrupt: Arc<MmioInterrupt>,
    /// Queue configuration as the driver writes it; copies go to the device at DRIVER_OK.
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    device_status: u32,
    config_generation: u32,
    bad_access_logged: bool,
    /// What `check_lost_events` saw last time.
    watch: LostEventWatch,
}

/// The state `MmioTransport::check_lost_events` compares across calls.
#[derive(Debug, Default)]
struct LostEventWatch {
    /// The acknowledgement count when an interrupt was last seen pending.
    pending_at_acks: Option<u64>,
    /// A queue with requests the device had not taken, and its next_avail then.
    unserved: Option<(u16, u16)>,
    /// A queue with completions the driver had not consumed (queue, next_used, used_event).
    unseen: Option<(u16, u16, u16)>,
}

/// What `MmioTransport::check_lost_events` had to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// A pending interrupt was raised again.
    pub interrupt: bool,
    /// Requests queued without a notification reaching the device were served.
    pub requests: bool,
    /// Completions the driver waited for without an interrupt were signalled.
    pub completions: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("device_status", &self.device_status)
            .field("driver_features", &self.driver_features)
            .field("interrupt_status", &self.interrupt.status())
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Creates a transport for `device`, which will access `memory` and interrupt the guest
    /// through `irq`.
    pub fn new(
        memory: GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
        irq: Box<dyn IrqTrigger>,
    ) -> Result<Self, MmioError> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(index, &max_size)| {
                Queue::new(max_size).map_err(|source| MmioError::InvalidQueueMaxSize {
                    index,
                    max_size,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            memory,
            interrupt: Arc::new(MmioInterrupt::new(irq)),
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            device_status: 0,
            config_generation: 0,
            bad_access_logged: false,
            watch: LostEventWatch::default(),
        })
    }

    /// The interrupt status register and line, for the VMM's resample handler: it needs no
    /// transport lock (queue processing holds that one for a while).
    pub fn interrupt(&self) -> Arc<MmioInterrupt> {
        self.interrupt.clone()
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device behind the transport, mutably (e.g. to flush it at shutdown).
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Current device status register.
    pub fn device_status(&self) -> u32 {
        self.device_status
    }

    /// One line for a state dump: device status, pending interrupt bits, and the device's own
    /// view of its queues.
    pub fn debug_state(&self) -> String {
        format!(
            "status {:#x} interrupt-status {:#x} {}",
            self.device_status,
            self.interrupt.status(),
            self.device.debug_state()
        )
    }

    /// One `(offset, datamatch)` pair per queue: an ioeventfd at `base + offset` matching a
    /// 4-byte write of `datamatch` stands for "queue `datamatch` was notified"; when it fires,
    /// call `notify_queue(datamatch)`.
    pub fn queue_notify_ioevents(&self) -> Vec<(u64, u32)> {
        (0..self.queues.len())
            .filter_map(|index| u32::try_from(index).ok())
            .map(|index| (QUEUE_NOTIFY_OFFSET, index))
            .collect()
    }

    /// The guest notified queue `queue_index`: let the device process it. Ignored before
    /// DRIVER_OK, after a fatal error, or for a queue that does not exist. A queue the device
    /// finds broken sets DEVICE_NEEDS_RESET and raises a config-change interrupt.
    pub fn notify_queue(&mut self, queue_index: u32) {
        if !self.device.is_activated() || self.device_status & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        let Some(index) = u16::try_from(queue_index)
            .ok()
            .filter(|&index| usize::from(index) < self.queues.len())
        else {
            self.log_bad_access(format_args!("notify of unknown queue {queue_index}"));
            return;
        };
        if let Err(error) = self.device.process_queue(index) {
            self.fail(&error);
        }
    }

    /// Called periodically by the VMM (every few hundred ms) as a diagnostic: with a
    /// level-triggered line (see the module comment) and ioeventfds nothing should ever be
    /// lost, and whatever this finds is a bug somewhere that the VMM counts and reports. An
    /// interrupt still pending and unacknowledged since the last call is raised again (which
    /// only helps an edge-triggered line: a level-triggered one is still asserted), a queue
    /// whose requests the device has not taken since the last call is served, and completions
    /// the driver has not consumed since the last call (with no interrupt pending) are
    /// signalled again.
    pub fn check_lost_events(&mut self) -> Recovered {
        let mut recovered = Recovered::default();
        let acks = self.interrupt.acks.load(Ordering::SeqCst);
        let pending = self.interrupt.status() != 0;
        if pending && self.watch.pending_at_acks == Some(acks) {
            recovered.interrupt = self.interrupt.trigger.trigger().is_ok();
        }
        self.watch.pending_at_acks = pending.then_some(acks);
        let active =
            self.device.is_activated() && self.device_status & status::DEVICE_NEEDS_RESET == 0;
        let unserved = if active { self.device.unserved() } else { None };
        if let Some((queue, _)) = unserved.filter(|&now| self.watch.unserved == Some(now)) {
            if let Err(error) = self.device.process_queue(queue) {
                self.fail(&error);
            }
            recovered.requests = true;
            self.watch.unserved = None;
        } else {
            self.watch.unserved = unserved;
        }
        // Completions the driver has not consumed, unchanged since the last call, with no
        // interrupt pending: the driver waits for an interrupt it did not get.
        let unseen = if active {
            self.device.unseen_completions()
        } else {
            None
        };
        if let Some((queue, ..)) = unseen.filter(|&now| {
            self.watch.unseen == Some(now) && !pending && self.interrupt.status() == 0
        }) {
            recovered.completions = self.interrupt.signal_used_queue(queue).is_ok();
            self.watch.unseen = None;
        } else {
            self.watch.unseen = unseen;
        }
        recovered
    }

    /// Called periodically by the VMM: lets a device that was left alone since the last call
    /// do deferred work for about `budget` (see `VirtioDevice::idle`). Returns whether some is
    /// left.
    pub fn idle(&mut self, budget: std::time::Duration) -> bool {
        self.device.idle(budget)
    }

    /// A guest read of `data.len()` bytes at `offset` inside the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            } else {
                data.fill(0);
                self.log_bad_access(format_args!("config read of {} bytes", data.len()));
            }
            return;
        }
        data.fill(0);
        if data.len() != 4 || offset & 3 != 0 {
            self.log_bad_access(format_args!(
                "register read of {} bytes at {offset:#x}",
                data.len()
            ));
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write of `data` at `offset` inside the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
            } else {
                self.log_bad_access(format_args!("config write of {} bytes", data.len()));
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.log_bad_access(format_args!(
                "register write of {} bytes at {offset:#x}",
                data.len()
            ));
            return;
        };
        if offset & 3 != 0 {
            self.log_bad_access(format_args!("unaligned register write at {offset:#x}"));
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }

    fn read_register(&self, offset: u64) -> u32 {
        let Ok(offset) = u32::try_from(offset) else {
            return 0;
        };
        match offset {
            regs::VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            regs::VIRTIO_MMIO_VERSION => MMIO_VERSION,
            regs::VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            regs::VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            regs::VIRTIO_MMIO_DEVICE_FEATURES => {
                feature_page(self.device.avail_features(), self.device_features_select)
            }
            regs::VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| u32::from(q.max_size()))
            }
            regs::VIRTIO_MMIO_QUEUE_READY => {
                self.selected_queue().map_or(0, |q| u32::from(q.ready()))
            }
            regs::VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            regs::VIRTIO_MMIO_STATUS => self.device_status,
            regs::VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // No shared memory regions: the spec says their length reads as all ones.
            regs::VIRTIO_MMIO_SHM_LEN_LOW | regs::VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let Ok(offset) = u32::try_from(offset) else {
            return;
        };
        match offset {
            regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            regs::VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            regs::VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            regs::VIRTIO_MMIO_QUEUE_NUM => match u16::try_from(value) {
                Ok(size) => self.configure_queue(|q| q.set_size(size)),
                Err(_) => self.log_bad_access(format_args!("queue size {value}")),
            },
            regs::VIRTIO_MMIO_QUEUE_READY => {
                if self.device_status & status::DRIVER_OK == 0 {
                    if let Some(queue) = self.selected_queue_mut() {
                        queue.set_ready(value == 1);
                    }
                }
            }
            regs::VIRTIO_MMIO_QUEUE_DESC_LOW => {
                self.configure_queue(|q| q.set_desc_table_address(Some(value), None))
            }
            regs::VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                self.configure_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            regs::VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                self.configure_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            regs::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                self.configure_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            regs::VIRTIO_MMIO_QUEUE_USED_LOW => {
                self.configure_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            regs::VIRTIO_MMIO_QUEUE_USED_HIGH => {
                self.configure_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            regs::VIRTIO_MMIO_QUEUE_NOTIFY => self.notify_queue(value),
            regs::VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            regs::VIRTIO_MMIO_STATUS => self.write_status(value),
            _ => self.log_bad_access(format_args!("write to register {offset:#x}")),
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(usize::try_from(self.queue_select).ok()?)
    }

    fn selected_queue_mut(&mut self) -> Option<&mut Queue> {
        self.queues
            .get_mut(usize::try_from(self.queue_select).ok()?)
    }

    /// Applies a queue setup write, allowed only before DRIVER_OK and while the queue is not
    /// ready (virtio 1.x §4.2.2.3).
    fn configure_queue(&mut self, change: impl FnOnce(&mut Queue)) {
        if self.device_status & status::DRIVER_OK != 0 {
            self.log_bad_access(format_args!("queue setup after DRIVER_OK"));
            return;
        }
        match self.selected_queue_mut() {
            Some(queue) if !queue.ready() => change(queue),
            _ => self.log_bad_access(format_args!("setup of a ready or unknown queue")),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.device_status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
            self.log_bad_access(format_args!("driver features written outside negotiation"));
            return;
        }
        let value = u64::from(value);
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
            // Pages past 1 hold no features we offer; a set bit there would be refused later,
            // so it is simply dropped.
            _ => {}
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.device_status;
        // DEVICE_NEEDS_RESET belongs to the device: the driver can neither set nor clear it.
        let requested = (value & !status::DEVICE_NEEDS_RESET) | (old & status::DEVICE_NEEDS_RESET);
        if requested & old != old {
            self.log_bad_access(format_args!(
                "status {value:#x} clears bits of {old:#x} without a reset"
            ));
            return;
        }
        let added = requested & !old;
        let mut new = requested;
        if added & status::FEATURES_OK != 0 {
            if self.features_acceptable() {
                self.device.set_acked_features(self.driver_features);
            } else {
                warn!(
                    "virtio-mmio: refusing driver features {:#x} (offered {:#x})",
                    self.driver_features,
                    self.device.avail_features()
                );
                new &= !status::FEATURES_OK;
            }
        }
        if added & status::DRIVER_OK != 0 {
            if new & status::FEATURES_OK == 0 {
                self.log_bad_access(format_args!("DRIVER_OK before FEATURES_OK"));
                new &= !status::DRIVER_OK;
            } else if !self.activate() {
                new |= status::DEVICE_NEEDS_RESET;
                if let Err(error) = self.interrupt.signal_config_change() {
                    warn!("virtio-mmio: config change interrupt failed: {error}");
                }
            }
        }
        self.device_status = new;
    }

    /// FEATURES_OK is accepted only for a subset of the offered features that includes
    /// VERSION_1 (virtio-mmio version 2 is a modern-only interface) and that the device can
    /// work with.
    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device.avail_features() == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
            && self.device.accepts_features(self.driver_features)
    }

    /// Validates every queue and hands copies to the device. Returns false if the device could
    /// not be started.
    fn activate(&mut self) -> bool {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, queue) in self.queues.iter().enumerate() {
            if !queue.is_valid(&self.memory) {
                warn!("virtio-mmio: queue {index} is not ready or not inside guest memory");
                return false;
            }
            let mut state = queue.state();
            state.event_idx_enabled = event_idx;
            match Queue::try_from(state) {
                Ok(copy) => queues.push(copy),
                Err(error) => {
                    warn!("virtio-mmio: queue {index} is invalid: {error}");
                    return false;
                }
            }
        }
        let interrupt: Arc<dyn InterruptSignal> = self.interrupt.clone();
        match self.device.activate(self.memory.clone(), queues, interrupt) {
            Ok(()) => true,
            Err(error) => {
                warn!("virtio-mmio: device activation failed: {error}");
                false
            }
        }
    }

    /// Device and transport back to their power-on state (Status written with 0).
    fn reset(&mut self) {
        self.device.reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.device_status = 0;
        self.interrupt.clear();
    }

    /// A fatal device error: the driver must reset the device.
    fn fail(&mut self, error: &QueueError) {
        warn!("virtio-mmio: device needs reset: {error}");
        self.device_status |= status::DEVICE_NEEDS_RESET;
        if let Err(error) = self.interrupt.signal_config_change() {
            warn!("virtio-mmio: config change interrupt failed: {error}");
        }
    }

    /// Guest misbehaviour is logged once per transport so a looping guest cannot flood the log.
    fn log_bad_access(&mut self, what: std::fmt::Arguments) {
        if !self.bad_access_logged {
            self.bad_access_logged = true;
            warn!("virtio-mmio: ignoring invalid access: {what} (further ones are not logged)");
        }
    }
}

/// 32-bit page `select` of a 64-bit feature set; pages past 1 are empty.
fn feature_page(features: u64, select: u32) -> u32 {
    match select {
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use vm_memory::GuestAddress;

    use super::*;
    use crate::virtio::ActivateError;

    const QUEUE_MAX: u16 = 16;
    const FEATURE_X: u64 = 1 << 5;
    const CONFIG: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    /// What the fake device saw, shared with the test.
    #[derive(Default)]
    struct Observed {
        acked: u64,
        activations: usize,
        resets: usize,
        processed: Vec<u16>,
        queue_sizes: Vec<u16>,
        fail_processing: bool,
        unserved: Option<(u16, u16)>,
        unseen: Option<(u16, u16, u16)>,
        /// Features the fake refuses to work without.
        required: u64,
    }

    struct FakeDevice {
        observed: Arc<Mutex<Observed>>,
        active: bool,
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[QUEUE_MAX]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | FEATURE_X
        }
        fn acked_features(&self) -> u64 {
            self.observed.lock().unwrap().acked
        }
        fn set_acked_features(&mut self, features: u64) {
            self.observed.lock().unwrap().acked = features;
        }
        fn accepts_features(&self, features: u64) -> bool {
            let required = self.observed.lock().unwrap().required;
            features & required == required
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::virtio::read_config_bytes(&CONFIG, offset, data);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _memory: GuestMemoryMmap,
            queues: Vec<Queue>,
            _interrupt: Arc<dyn InterruptSignal>,
        ) -> Result<(), ActivateError> {
            let mut observed = self.observed.lock().unwrap();
            observed.activations += 1;
            observed.queue_sizes = queues.iter().map(|q| q.size()).collect();
            self.active = true;
            Ok(())
        }
        fn is_activated(&self) -> bool {
            self.active
        }
        fn reset(&mut self) {
            self.observed.lock().unwrap().resets += 1;
            self.active = false;
        }
        fn unserved(&self) -> Option<(u16, u16)> {
            self.observed.lock().unwrap().unserved
        }
        fn unseen_completions(&self) -> Option<(u16, u16, u16)> {
            self.observed.lock().unwrap().unseen
        }
        fn process_queue(&mut self, queue_index: u16) -> Result<(), QueueError> {
            let mut observed = self.observed.lock().unwrap();
            observed.processed.push(queue_index);
            if observed.fail_processing {
                return Err(QueueError::Queue(
                    virtio_queue::Error::InvalidAvailRingIndex,
                ));
            }
            Ok(())
        }
    }

    #[derive(Default)]
    struct CountingIrq(Arc<AtomicUsize>);

    impl IrqTrigger for CountingIrq {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    struct Harness {
        transport: MmioTransport,
        observed: Arc<Mutex<Observed>>,
        irqs: Arc<AtomicUsize>,
    }

    fn harness() -> Harness {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let observed = Arc::new(Mutex::new(Observed::default()));
        let irqs = Arc::new(AtomicUsize::new(0));
        let device = FakeDevice {
            observed: observed.clone(),
            active: false,
        };
        let transport = MmioTransport::new(
            memory,
            Box::new(device),
            Box::new(CountingIrq(irqs.clone())),
        )
        .unwrap();
        Harness {
            transport,
            observed,
            irqs,
        }
    }

    fn read32(t: &mut MmioTransport, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        t.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(t: &mut MmioTransport, offset: u32, value: u32) {
        t.write(u64::from(offset), &value.to_le_bytes());
    }

    /// Linux virtio_mmio probe up to FEATURES_OK; returns the status read back.
    fn negotiate(t: &mut MmioTransport, driver_features: u64) -> u32 {
        assert_eq!(read32(t, regs::VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_VERSION), 2);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_DEVICE_ID), 2);
        read32(t, regs::VIRTIO_MMIO_VENDOR_ID);
        write32(t, regs::VIRTIO_MMIO_STATUS, 0);
        write32(t, regs::VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE);
        write32(
            t,
            regs::VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER,
        );
        write32(t, regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let high = read32(t, regs::VIRTIO_MMIO_DEVICE_FEATURES);
        write32(t, regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let low = read32(t, regs::VIRTIO_MMIO_DEVICE_FEATURES);
        assert_eq!(
            (u64::from(high) << 32) | u64::from(low),
            VIRTIO_F_VERSION_1 | FEATURE_X
        );
        write32(t, regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write32(
            t,
            regs::VIRTIO_MMIO_DRIVER_FEATURES,
            (driver_features >> 32) as u32,
        );
        write32(t, regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        write32(t, regs::VIRTIO_MMIO_DRIVER_FEATURES, driver_features as u32);
        write32(
            t,
            regs::VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        read32(t, regs::VIRTIO_MMIO_STATUS)
    }

    /// Linux setup_vq for queue 0 with rings at the given addresses.
    fn setup_queue(t: &mut MmioTransport, desc: u64, avail: u64, used: u64) {
        write32(t, regs::VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(
            read32(t, regs::VIRTIO_MMIO_QUEUE_NUM_MAX),
            u32::from(QUEUE_MAX)
        );
        write32(t, regs::VIRTIO_MMIO_QUEUE_NUM, 8);
        write32(t, regs::VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
        write32(t, regs::VIRTIO_MMIO_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        write32(t, regs::VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail as u32);
        write32(t, regs::VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
        write32(t, regs::VIRTIO_MMIO_QUEUE_USED_LOW, used as u32);
        write32(t, regs::VIRTIO_MMIO_QUEUE_USED_HIGH, (used >> 32) as u32);
        write32(t, regs::VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_QUEUE_READY), 1);
    }

    const RUNNING: u32 =
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    /// The whole Linux probe sequence up to DRIVER_OK.
    fn start(t: &mut MmioTransport) {
        negotiate(t, VIRTIO_F_VERSION_1);
        setup_queue(t, 0x1000, 0x2000, 0x3000);
        write32(t, regs::VIRTIO_MMIO_STATUS, RUNNING);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_STATUS), RUNNING);
    }

    #[test]
    fn linux_probe_sequence_activates_the_device() {
        let Harness {
            mut transport,
            observed,
            irqs,
        } = harness();
        let t = &mut transport;
        let features = VIRTIO_F_VERSION_1 | FEATURE_X;
        assert_eq!(
            negotiate(t, features),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
        );
        assert_eq!(observed.lock().unwrap().acked, features);
        setup_queue(t, 0x1000, 0x2000, 0x3000);
        write32(t, regs::VIRTIO_MMIO_STATUS, RUNNING);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_STATUS), RUNNING);
        assert_eq!(observed.lock().unwrap().activations, 1);
        assert_eq!(observed.lock().unwrap().queue_sizes, vec![8]);

        // Config: dword, word and byte reads, and a 64-bit field as two dword reads.
        assert_eq!(read32(t, 0x100), 0x0403_0201);
        assert_eq!(read32(t, 0x104), 0x0807_0605);
        let mut word = [0u8; 2];
        t.read(0x102, &mut word);
        assert_eq!(word, [3, 4]);
        let mut byte = [0u8; 1];
        t.read(0x10b, &mut byte);
        assert_eq!(byte, [12]);
        assert_eq!(read32(t, 0x10c), 0, "past the config space reads zero");
        assert_eq!(read32(t, 0xffc), 0);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_CONFIG_GENERATION), 0);

        // Notifications through the register and through the ioeventfd path.
        write32(t, regs::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(t.queue_notify_ioevents(), vec![(0x50, 0)]);
        t.notify_queue(0);
        t.notify_queue(7);
        assert_eq!(observed.lock().unwrap().processed, vec![0, 0]);

        // Queue setup is frozen after DRIVER_OK.
        write32(t, regs::VIRTIO_MMIO_QUEUE_NUM, 4);
        assert_eq!(t.queues[0].size(), 8);
        assert_eq!(irqs.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn lost_interrupts_and_notifications_are_recovered() {
        let Harness {
            mut transport,
            observed,
            irqs,
        } = harness();
        let t = &mut transport;
        start(t);
        let none = Recovered::default();
        let raised = Recovered {
            interrupt: true,
            ..Recovered::default()
        };
        let irq_count = || irqs.load(Ordering::SeqCst);
        assert_eq!(t.check_lost_events(), none);

        // Acknowledged before the next check: not raised again.
        t.interrupt.signal_used_queue(0).unwrap();
        assert_eq!(t.check_lost_events(), none);
        write32(t, regs::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(t.check_lost_events(), none);
        assert_eq!(irq_count(), 1);

        // Pending and unacknowledged across two checks: raised again at each check until acked.
        t.interrupt.signal_used_queue(0).unwrap();
        assert_eq!(t.check_lost_events(), none);
        assert_eq!(t.check_lost_events(), raised);
        assert_eq!(t.check_lost_events(), raised);
        assert_eq!(irq_count(), 4);
        write32(t, regs::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(t.check_lost_events(), none);

        // Pending again, but the guest acknowledged something in between: it is at work.
        t.interrupt.signal_used_queue(0).unwrap();
        assert_eq!(t.check_lost_events(), none);
        write32(t, regs::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        t.interrupt.signal_used_queue(0).unwrap();
        assert_eq!(t.check_lost_events(), none);
        write32(t, regs::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(irq_count(), 6);

        // Requests left untaken across two checks are served; progress in between is not a loss.
        let processed = || observed.lock().unwrap().processed.len();
        observed.lock().unwrap().unserved = Some((0, 5));
        assert_eq!(t.check_lost_events(), none);
        observed.lock().unwrap().unserved = Some((0, 6));
        assert_eq!(t.check_lost_events(), none);
        assert_eq!(processed(), 0);
        assert_eq!(
            t.check_lost_events(),
            Recovered {
                requests: true,
                ..Recovered::default()
            }
        );
        assert_eq!(observed.lock().unwrap().processed, vec![0]);
        observed.lock().unwrap().unserved = None;

        // Completions the driver has not consumed: signalled once they stay unconsumed for a
        // whole period; consumption in between, or a pending interrupt, is not a loss.
        let signalled = Recovered {
            completions: true,
            ..Recovered::default()
        };
        observed.lock().unwrap().unseen = Some((0, 9, 7));
        assert_eq!(t.check_lost_events(), none);
        observed.lock().unwrap().unseen = Some((0, 9, 8));
        assert_eq!(t.check_lost_events(), none);
        assert_eq!(irq_count(), 6);
        assert_eq!(t.check_lost_events(), signalled);
        assert_eq!(irq_count(), 7);
        assert_eq!(t.interrupt.status(), regs::VIRTIO_MMIO_INT_VRING);
        // Now pending: the pending-interrupt rule takes over, not this one.
        assert_eq!(t.check_lost_events(), none);
        write32(t, regs::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        observed.lock().unwrap().unseen = None;
        assert_eq!(t.check_lost_events(), none);
        assert_eq!(t.check_lost_events(), none);
        assert_eq!(irq_count(), 7);

        // A device that needs a reset is left alone.
        write32(t, regs::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(t.check_lost_events(), none);
        assert_eq!(t.check_lost_events(), none);
        assert_eq!(processed(), 1);
    }

    #[test]
    fn features_ok_is_refused_for_unoffered_features_or_missing_version_1() {
        let mut h = harness();
        let status = negotiate(&mut h.transport, VIRTIO_F_VERSION_1 | (1 << 7));
        assert_eq!(status, status::ACKNOWLEDGE | status::DRIVER);
        assert_eq!(h.observed.lock().unwrap().acked, 0);

        let mut h = harness();
        let status = negotiate(&mut h.transport, FEATURE_X);
        assert_eq!(status & status::FEATURES_OK, 0);

        // DRIVER_OK without FEATURES_OK is not latched and activates nothing.
        write32(
            &mut h.transport,
            regs::VIRTIO_MMIO_STATUS,
            RUNNING & !status::FEATURES_OK,
        );
        assert_eq!(
            read32(&mut h.transport, regs::VIRTIO_MMIO_STATUS) & status::DRIVER_OK,
            0
        );
        assert_eq!(h.observed.lock().unwrap().activations, 0);
    }

    #[test]
    fn features_ok_is_refused_when_the_device_vetoes_the_features() {
        // The fake device needs FEATURE_X, as a host-managed zoned disk needs
        // VIRTIO_BLK_F_ZONED (virtio 1.3, 5.2.5).
        let mut h = harness();
        h.observed.lock().unwrap().required = FEATURE_X;
        let status = negotiate(&mut h.transport, VIRTIO_F_VERSION_1);
        assert_eq!(status & status::FEATURES_OK, 0);
        assert_eq!(h.observed.lock().unwrap().acked, 0);
        write32(&mut h.transport, regs::VIRTIO_MMIO_STATUS, RUNNING);
        assert_eq!(h.observed.lock().unwrap().activations, 0);

        let mut h = harness();
        h.observed.lock().unwrap().required = FEATURE_X;
        let status = negotiate(&mut h.transport, VIRTIO_F_VERSION_1 | FEATURE_X);
        assert_ne!(status & status::FEATURES_OK, 0);
    }

    #[test]
    fn writing_zero_to_status_resets_device_and_transport() {
        let mut h = harness();
        let t = &mut h.transport;
        start(t);
        t.interrupt.signal_used_queue(0).unwrap();
        assert_eq!(read32(t, regs::VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        write32(t, regs::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        t.interrupt.signal_used_queue(0).unwrap();

        write32(t, regs::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_STATUS), 0);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(
            read32(t, regs::VIRTIO_MMIO_QUEUE_NUM_MAX),
            u32::from(QUEUE_MAX)
        );
        assert_eq!(t.queues[0].size(), QUEUE_MAX);
        assert!(h.observed.lock().unwrap().resets >= 1);
        assert!(!t.device().is_activated());
        t.notify_queue(0);
        assert!(h.observed.lock().unwrap().processed.is_empty());

        // The device can be brought up again after a reset.
        start(t);
        assert_eq!(h.observed.lock().unwrap().activations, 2);
    }

    #[test]
    fn queue_outside_memory_sets_needs_reset_instead_of_activating() {
        let mut h = harness();
        let t = &mut h.transport;
        negotiate(t, VIRTIO_F_VERSION_1);
        setup_queue(t, 0x1_0000_0000, 0x2000, 0x3000);
        write32(t, regs::VIRTIO_MMIO_STATUS, RUNNING);
        assert_eq!(
            read32(t, regs::VIRTIO_MMIO_STATUS),
            RUNNING | status::DEVICE_NEEDS_RESET
        );
        assert_eq!(h.observed.lock().unwrap().activations, 0);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert_eq!(h.irqs.load(Ordering::SeqCst), 1);
        write32(t, regs::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(h.observed.lock().unwrap().processed.is_empty());
    }

    #[test]
    fn queue_not_ready_at_driver_ok_is_not_activated() {
        let mut h = harness();
        let t = &mut h.transport;
        negotiate(t, VIRTIO_F_VERSION_1);
        write32(t, regs::VIRTIO_MMIO_STATUS, RUNNING);
        assert_ne!(
            read32(t, regs::VIRTIO_MMIO_STATUS) & status::DEVICE_NEEDS_RESET,
            0
        );
        assert_eq!(h.observed.lock().unwrap().activations, 0);
    }

    #[test]
    fn a_broken_queue_sets_needs_reset_with_a_config_interrupt() {
        let mut h = harness();
        let t = &mut h.transport;
        start(t);
        h.observed.lock().unwrap().fail_processing = true;
        write32(t, regs::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_ne!(
            read32(t, regs::VIRTIO_MMIO_STATUS) & status::DEVICE_NEEDS_RESET,
            0
        );
        assert_eq!(read32(t, regs::VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        // The driver cannot clear it except by resetting.
        write32(t, regs::VIRTIO_MMIO_STATUS, RUNNING);
        assert_ne!(
            read32(t, regs::VIRTIO_MMIO_STATUS) & status::DEVICE_NEEDS_RESET,
            0
        );
        write32(t, regs::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(h.observed.lock().unwrap().processed, vec![0]);
        write32(t, regs::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_STATUS), 0);
    }

    #[test]
    fn bad_accesses_are_ignored_and_read_zero() {
        let mut h = harness();
        let t = &mut h.transport;
        let mut wide = [0xffu8; 8];
        t.read(0, &mut wide);
        assert_eq!(wide, [0; 8]);
        let mut short = [0xffu8; 2];
        t.read(0, &mut short);
        assert_eq!(short, [0; 2]);
        let mut unaligned = [0xffu8; 4];
        t.read(1, &mut unaligned);
        assert_eq!(unaligned, [0; 4]);
        let mut odd = [0xffu8; 3];
        t.read(0x100, &mut odd);
        assert_eq!(odd, [0; 3]);
        let mut empty = [0u8; 0];
        t.read(0x100, &mut empty);
        t.read(u64::MAX, &mut unaligned);
        assert_eq!(unaligned, [0; 4]);

        t.write(regs::VIRTIO_MMIO_STATUS.into(), &[1, 0]);
        t.write(u64::from(regs::VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);
        t.write(u64::MAX, &[1, 0, 0, 0]);
        t.write(0x100, &[]);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_STATUS), 0);

        // Selectors out of range read as zero; driver features written before DRIVER are dropped.
        write32(t, regs::VIRTIO_MMIO_QUEUE_SEL, 5);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        write32(t, regs::VIRTIO_MMIO_QUEUE_NUM, 8);
        write32(t, regs::VIRTIO_MMIO_QUEUE_READY, 1);
        write32(t, regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 9);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_DEVICE_FEATURES), 0);
        write32(t, regs::VIRTIO_MMIO_DRIVER_FEATURES, 0xffff_ffff);
        assert_eq!(t.driver_features, 0);
        write32(t, regs::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(h.observed.lock().unwrap().processed.is_empty());
    }

    #[test]
    fn status_bits_cannot_be_cleared_without_reset() {
        let mut h = harness();
        let t = &mut h.transport;
        negotiate(t, VIRTIO_F_VERSION_1);
        write32(t, regs::VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE);
        assert_eq!(
            read32(t, regs::VIRTIO_MMIO_STATUS),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
        );
        write32(
            t,
            regs::VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::FAILED,
        );
        assert_ne!(read32(t, regs::VIRTIO_MMIO_STATUS) & status::FAILED, 0);
    }

    #[test]
    fn block_device_serves_io_after_the_linux_probe_sequence() {
        use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
        use virtio_queue::desc::{split::Descriptor, RawDescriptor};
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::Bytes;
        use vmm_sys_util::tempfile::TempFile;

        use crate::block::{feature, request_status, request_type, Block, RawFile};

        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let file = TempFile::new_with_prefix(std::env::temp_dir().join("devices-mmio")).unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let backend = RawFile::open(file.as_path(), false).unwrap();
        let irqs = Arc::new(AtomicUsize::new(0));
        let mut transport = MmioTransport::new(
            memory.clone(),
            Box::new(Block::new(Box::new(backend), "e2e")),
            Box::new(CountingIrq(irqs.clone())),
        )
        .unwrap();
        let t = &mut transport;

        // Probe: reset, ACK, DRIVER, features, FEATURES_OK.
        write32(t, regs::VIRTIO_MMIO_STATUS, 0);
        write32(t, regs::VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE);
        write32(
            t,
            regs::VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER,
        );
        write32(t, regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let high = read32(t, regs::VIRTIO_MMIO_DEVICE_FEATURES);
        write32(t, regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let low = read32(t, regs::VIRTIO_MMIO_DEVICE_FEATURES);
        let offered = (u64::from(high) << 32) | u64::from(low);
        assert_ne!(offered & VIRTIO_F_VERSION_1, 0);
        let accepted = VIRTIO_F_VERSION_1 | feature::SEG_MAX | feature::BLK_SIZE | feature::FLUSH;
        assert_eq!(offered & accepted, accepted);
        write32(t, regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write32(
            t,
            regs::VIRTIO_MMIO_DRIVER_FEATURES,
            (accepted >> 32) as u32,
        );
        write32(t, regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        write32(t, regs::VIRTIO_MMIO_DRIVER_FEATURES, accepted as u32);
        write32(
            t,
            regs::VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_ne!(read32(t, regs::VIRTIO_MMIO_STATUS) & status::FEATURES_OK, 0);
        assert_eq!(t.device().acked_features(), accepted);

        // Config: capacity as two 32-bit reads, then blk_size and seg_max.
        let capacity = u64::from(read32(t, 0x100)) | (u64::from(read32(t, 0x104)) << 32);
        assert_eq!(capacity, 2048);
        assert_eq!(read32(t, 0x114), 512);
        assert_eq!(read32(t, 0x10c), 254);

        // Queue 0 where the mock ring lives.
        let ring = MockSplitQueue::new(&memory, 16);
        write32(t, regs::VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        write32(t, regs::VIRTIO_MMIO_QUEUE_NUM, 16);
        let addresses = [
            (regs::VIRTIO_MMIO_QUEUE_DESC_LOW, ring.desc_table_addr().0),
            (regs::VIRTIO_MMIO_QUEUE_AVAIL_LOW, ring.avail_addr().0),
            (regs::VIRTIO_MMIO_QUEUE_USED_LOW, ring.used_addr().0),
        ];
        for (low, address) in addresses {
            write32(t, low, address as u32);
            write32(t, low + 4, (address >> 32) as u32);
        }
        write32(t, regs::VIRTIO_MMIO_QUEUE_READY, 1);
        write32(
            t,
            regs::VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert!(t.device().is_activated());

        // One write request: header, 512 bytes of data, status; notified by register write.
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&request_type::OUT.to_le_bytes());
        header[8..].copy_from_slice(&2u64.to_le_bytes());
        memory.write_slice(&header, GuestAddress(0x1_0000)).unwrap();
        memory
            .write_slice(&[0x5a; 512], GuestAddress(0x2_0000))
            .unwrap();
        let next = VRING_DESC_F_NEXT as u16;
        let chain = [
            Descriptor::new(0x1_0000, 16, next, 1),
            Descriptor::new(0x2_0000, 512, next, 2),
            Descriptor::new(0x3_0000, 1, VRING_DESC_F_WRITE as u16, 0),
        ]
        .map(RawDescriptor::from);
        ring.add_desc_chains(&chain, 0).unwrap();
        write32(t, regs::VIRTIO_MMIO_QUEUE_NOTIFY, 0);

        assert_eq!(ring.used().idx().load(), 1);
        let status_byte: u8 = memory.read_obj(GuestAddress(0x3_0000)).unwrap();
        assert_eq!(status_byte, request_status::OK);
        assert_eq!(irqs.load(Ordering::SeqCst), 1);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        write32(t, regs::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(read32(t, regs::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        let mut on_disk = [0u8; 512];
        std::os::unix::fs::FileExt::read_exact_at(file.as_file(), &mut on_disk, 1024).unwrap();
        assert_eq!(on_disk, [0x5a; 512]);
    }

    #[test]
    fn after_eoi_the_line_is_asserted_again_while_a_status_bit_is_set() {
        let mut h = harness();
        let t = &mut h.transport;
        start(t);
        let interrupt = t.interrupt();
        let irq_count = || h.irqs.load(Ordering::SeqCst);
        // Nothing pending: the EOI leaves the line low.
        assert!(!interrupt.resample().unwrap());
        assert_eq!(irq_count(), 0);

        // The driver's handler read the status and acknowledged it; the EOI that follows needs
        // no new assertion.
        interrupt.signal_used_queue(0).unwrap();
        assert_eq!(irq_count(), 1);
        let seen = read32(t, regs::VIRTIO_MMIO_INTERRUPT_STATUS);
        write32(t, regs::VIRTIO_MMIO_INTERRUPT_ACK, seen);
        assert!(!interrupt.resample().unwrap());
        assert_eq!(irq_count(), 1);

        // A completion after the driver read the status: its assertion met a line that was
        // still up, so the EOI must bring the line up again, until InterruptACK.
        interrupt.signal_used_queue(0).unwrap();
        let seen = read32(t, regs::VIRTIO_MMIO_INTERRUPT_STATUS);
        interrupt.signal_config_change().unwrap();
        write32(t, regs::VIRTIO_MMIO_INTERRUPT_ACK, seen);
        assert_eq!(
            read32(t, regs::VIRTIO_MMIO_INTERRUPT_STATUS),
            regs::VIRTIO_MMIO_INT_CONFIG
        );
        assert_eq!(irq_count(), 3);
        assert!(interrupt.resample().unwrap());
        assert_eq!(irq_count(), 4);
        // Handled this time without being acknowledged (a driver bug): still asserted.
        assert!(interrupt.resample().unwrap());
        assert_eq!(irq_count(), 5);
        write32(
            t,
            regs::VIRTIO_MMIO_INTERRUPT_ACK,
            regs::VIRTIO_MMIO_INT_CONFIG,
        );
        assert!(!interrupt.resample().unwrap());

        // A reset clears the status: nothing to assert after it.
        interrupt.signal_used_queue(0).unwrap();
        write32(t, regs::VIRTIO_MMIO_STATUS, 0);
        assert!(!interrupt.resample().unwrap());
        assert_eq!(irq_count(), 6);
    }

    #[test]
    fn an_eventfd_is_an_irq_trigger_and_the_transport_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<MmioTransport>();
        let eventfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = MmioInterrupt::new(Box::new(eventfd.try_clone().unwrap()));
        interrupt.signal_used_queue(0).unwrap();
        interrupt.signal_config_change().unwrap();
        assert_eq!(interrupt.status(), 3);
        assert_eq!(eventfd.read().unwrap(), 2);
    }

    #[test]
    fn random_register_traffic_never_panics() {
        let mut h = harness();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let offset = match next() % 4 {
                0 => next() % 0x200,
                1 => (next() % 0x40) * 4,
                2 => u64::from(regs::VIRTIO_MMIO_STATUS),
                _ => next(),
            };
            let len = [0usize, 1, 2, 3, 4, 8, 16][(next() % 7) as usize];
            let mut data = vec![0u8; len];
            if next().is_multiple_of(2) {
                h.transport.read(offset, &mut data);
            } else {
                let value = match next() % 3 {
                    0 => next() % 16,
                    1 => next() % 256,
                    _ => next(),
                };
                for (i, byte) in data.iter_mut().enumerate() {
                    *byte = (value >> (8 * (i % 8))) as u8;
                }
                h.transport.write(offset, &data);
            }
        }
    }
}
