//! The devices of a VM and how they are wired in. This module puts the virtio devices (models
//! from the `devices` crate) on the guest's MMIO bus: one 4 KiB window and one IRQ each, queue
//! notifications through ioeventfds, interrupts through resample irqfds on level-triggered
//! IOAPIC pins, and a `virtio_mmio.device=` entry for the kernel command line (the ACPI
//! description and the MP table's interrupt entries come from the same list). Beside it: the
//! legacy port-I/O devices (`legacy`) and the virtiofsd processes behind virtio-fs shares
//! (`virtiofsd`).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub mod legacy;
pub mod virtiofsd;

use devices::block::{Block, RawFile};
use devices::fs::{FsBackend, VirtioFs};
use devices::virtio::{MmioInterrupt, MmioTransport, VirtioDevice};
use devices::zoned::image::{PowerCut, PowerCutReport};
use devices::zoned::{
    self, HostZonedDevice, PowerCutTrigger, ZoneStorage, ZonedDisk, ZonedDiskOptions,
    ZonedExecutor, ZonedImage,
};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout;
use crate::device_manager::virtiofsd::{
    ShareSpec, SocketDir, Virtiofsd, VirtiofsdBinary, VirtiofsdError,
};
use crate::kvm::bus::{lock, Bus, BusDevice, BusOverlap};

/// The virtio-fs tag of the host's root file system (`--host-root`).
pub const HOST_ROOT_TAG: &str = "vmm-root";

/// `--zoned-disk tmp,...` asks for a throwaway image (use `./tmp` for a file named tmp).
pub const THROWAWAY_IMAGE: &str = "tmp";

/// A disk as given on the command line, in command-line order.
#[derive(Debug, Clone)]
pub enum DiskSpec {
    Plain(DiskConfig),
    /// Boxed: the zoned options are several times the plain ones.
    Zoned(Box<ZonedDiskOptions>),
}

/// A `--disk` option: `PATH[,ro][,serial=ID]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    pub serial: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskOptionError {
    #[error("--disk needs a path")]
    MissingPath,
    #[error("--disk option '{0}' is unknown: expected ro or serial=ID")]
    UnknownOption(String),
    #[error("--disk serial '{0}' is longer than 20 bytes")]
    SerialTooLong(String),
}

impl std::str::FromStr for DiskConfig {
    type Err = DiskOptionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(DiskOptionError::MissingPath)?;
        let mut disk = DiskConfig {
            path: PathBuf::from(path),
            read_only: false,
            serial: None,
        };
        for option in parts {
            match option.split_once('=') {
                None if option == "ro" => disk.read_only = true,
                Some(("serial", id)) if id.len() <= devices::block::SERIAL_BYTES => {
                    disk.serial = Some(id.to_string())
                }
                Some(("serial", id)) => return Err(DiskOptionError::SerialTooLong(id.to_string())),
                _ => return Err(DiskOptionError::UnknownOption(option.to_string())),
            }
        }
        Ok(disk)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("disk {0}: {1}")]
    Disk(PathBuf, #[source] devices::block::BackendError),
    /// A `--zoned-disk` naming a host block device that cannot be passed through.
    #[error(transparent)]
    HostZonedDisk(#[from] zoned::HostError),
    /// A `--zoned-disk` image that cannot be opened or created.
    #[error(transparent)]
    ZonedImage(#[from] zoned::ImageError),
    /// A `--zoned-disk ...,trace=FILE` that cannot be created.
    #[error(transparent)]
    ZoneTrace(#[from] zoned::TraceError),
    /// Fault injection options that do not fit the disk (the devices crate words the message).
    #[error("{0}")]
    FaultInjection(String),
    /// No virtiofsd to run, or one that did not start.
    #[error(transparent)]
    Virtiofsd(#[from] VirtiofsdError),
    #[error("share {0}: {1}")]
    Share(String, #[source] devices::fs::FsError),
    #[error("too many devices: IRQs {first}..={last} are all taken", first = layout::VIRTIO_IRQ_BASE, last = layout::IRQ_MAX)]
    OutOfIrqs,
    #[error("cannot create the virtio-mmio transport: {0}")]
    Transport(#[source] devices::virtio::MmioError),
    #[error("cannot set up {0}: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error(transparent)]
    Bus(#[from] BusOverlap),
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data)
    }
}

/// How a device's interrupt pin is triggered, as the MP table and ACPI tell the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerMode {
    /// Active-high edge: one irqfd write is one edge (the fallback without resample irqfds).
    Edge,
    /// Active-high level: a resample irqfd holds the pin up until the guest's EOI, and vmm
    /// raises it again while the device's InterruptStatus is non-zero.
    Level,
}

/// One virtio-mmio device as the guest finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
    pub trigger: TriggerMode,
}

impl MmioSlot {
    /// The kernel command-line entry that makes virtio_mmio probe this window.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.size >> 10,
            self.base,
            self.irq
        )
    }
}

/// Wakes a transport when the guest notifies one of its queues.
struct QueueNotifier {
    transport: Arc<Mutex<MmioTransport>>,
    queues: Vec<(EventFd, u32)>,
}

impl MutEventSubscriber for QueueNotifier {
    fn init(&mut self, ops: &mut EventOps) {
        for (event, _) in &self.queues {
            // Registration only fails for an invalid fd, which an EventFd is not.
            let _ = ops.add(Events::new(event, EventSet::IN));
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if let Some((event, queue)) = self
            .queues
            .iter()
            .find(|(e, _)| e.as_raw_fd() == events.fd())
        {
            let _ = event.read();
            log::trace!("queue {queue} notified");
            lock(&self.transport).notify_queue(*queue);
        }
    }
}

/// Serves a resample irqfd: after the guest's EOI of a level-triggered interrupt KVM lowers the
/// pin and signals `resample`; the pin goes up again while the device still has a status bit
/// set (`MmioInterrupt::resample`).
pub struct InterruptResampler {
    interrupt: Arc<MmioInterrupt>,
    resample: EventFd,
}

impl InterruptResampler {
    /// Serves `resample`, the resample eventfd of the irqfd that asserts `interrupt`'s line.
    pub fn new(interrupt: Arc<MmioInterrupt>, resample: EventFd) -> Self {
        Self {
            interrupt,
            resample,
        }
    }
}

impl MutEventSubscriber for InterruptResampler {
    fn init(&mut self, ops: &mut EventOps) {
        // Registration only fails for an invalid fd, which an EventFd is not.
        let _ = ops.add(Events::new(&self.resample, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.resample.read();
        if let Err(error) = self.interrupt.resample() {
            log::warn!("cannot raise a virtio interrupt again after its EOI: {error}");
        }
    }
}

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The virtio devices of one VM.
#[derive(Default)]
pub struct DeviceManager {
    slots: Vec<MmioSlot>,
    notifiers: Vec<Subscriber>,
    /// Each device's transport with the name the guest knows it by (vda, ..., virtio-fs0, ...).
    transports: Vec<(String, Arc<Mutex<MmioTransport>>)>,
    /// virtio-fs devices added so far.
    shares: usize,
    /// The virtiofsd processes serving them, stopped when the manager is dropped.
    virtiofsds: Vec<Virtiofsd>,
    /// Where their sockets are (created with the first share).
    socket_dir: Option<SocketDir>,
    /// Given to every zoned disk with a volatile cache (`--power-cut`).
    power_cut: Option<Arc<PowerCutTrigger>>,
}

impl DeviceManager {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn slots(&self) -> &[MmioSlot] {
        &self.slots
    }

    /// Each device's transport, named as the guest sees it (vda, vdb, ...), for state dumps.
    pub fn transports(&self) -> Vec<(String, Arc<Mutex<MmioTransport>>)> {
        self.transports.clone()
    }

    /// Event-loop subscribers for the queue notifications and the interrupt resample events;
    /// hand each to the event manager.
    pub fn take_subscribers(&mut self) -> Vec<Subscriber> {
        std::mem::take(&mut self.notifiers)
    }

    /// Opens a `--disk` and attaches it as the next virtio-blk device.
    pub fn add_disk(
        &mut self,
        vm: &VmFd,
        memory: &GuestMemoryMmap,
        bus: &mut Bus,
        disk: &DiskConfig,
    ) -> Result<MmioSlot, DeviceError> {
        let backend = RawFile::open(&disk.path, disk.read_only)
            .map_err(|e| DeviceError::Disk(disk.path.clone(), e))?;
        let serial = disk
            .serial
            .clone()
            .unwrap_or_else(|| format!("vmm-disk{}", self.slots.len()));
        self.add_virtio(
            vm,
            memory,
            bus,
            Box::new(Block::new(Box::new(backend), &serial)),
        )
    }

    /// Opens a `--zoned-disk`, a host-managed zoned block device of the host or an image
    /// (created if it does not exist), and attaches it as the next virtio-blk device,
    /// host-managed zoned.
    pub fn add_zoned_disk(
        &mut self,
        vm: &VmFd,
        memory: &GuestMemoryMmap,
        bus: &mut Bus,
        options: &ZonedDiskOptions,
    ) -> Result<MmioSlot, DeviceError> {
        // A block device is passed through (it must be host-managed zoned); anything else is
        // an image file.
        let serial = format!("vmm-zoned{}", self.slots.len());
        // The trace file first: one that cannot be created stops vmm before the disk is touched.
        let trace = options
            .trace
            .as_deref()
            .map(zoned::ZoneTrace::create)
            .transpose()?;
        // A block device is passed through (it must be host-managed zoned); anything else is
        // an image file.
        let block = if zoned::host::is_block_device(&options.path) {
            let disk = HostZonedDevice::open(options)?;
            zoned_block(disk, options, trace, &serial, None)?
        } else {
            // `tmp`: a fresh image in the temporary directory that has no name, so nothing
            // planted there is opened and nothing is left behind, even after a SIGKILL.
            let mut image = if options.path.as_os_str() == THROWAWAY_IMAGE {
                ZonedImage::create_throwaway(&std::env::temp_dir(), options)
            } else {
                ZonedImage::open_or_create(options)
            }?;
            if options.volatile_cache {
                image.set_volatile_cache();
            }
            zoned_block(image, options, trace, &serial, self.power_cut.clone())?
        };
        self.add_virtio(vm, memory, bus, Box::new(block))
    }

    /// Attaches the disks in the order given.
    pub fn add_disks(
        &mut self,
        vm: &VmFd,
        memory: &GuestMemoryMmap,
        bus: &mut Bus,
        disks: &[DiskSpec],
    ) -> Result<(), DeviceError> {
        for disk in disks {
            match disk {
                DiskSpec::Plain(config) => self.add_disk(vm, memory, bus, config)?,
                DiskSpec::Zoned(options) => self.add_zoned_disk(vm, memory, bus, options)?,
            };
        }
        Ok(())
    }

    /// Starts a virtiofsd for `share` and attaches it as the next virtio-fs device, whose tag
    /// is returned. `memory` must be shared (`vm::shared_guest_memory`). `filter` is the seccomp
    /// filter of the device's thread; `on_failure` stops the VM when virtiofsd goes away.
    pub fn add_share(
        &mut self,
        vm: &VmFd,
        memory: &GuestMemoryMmap,
        bus: &mut Bus,
        share: &ShareSpec,
        filter: Option<Arc<seccompiler::BpfProgram>>,
        on_failure: Box<dyn Fn(String) + Send>,
    ) -> Result<String, DeviceError> {
        let binary = VirtiofsdBinary::find()?;
        if self.socket_dir.is_none() {
            self.socket_dir = Some(SocketDir::new()?);
        }
        let dir = self.socket_dir.as_ref().expect("created above");
        let tag = if share.host == Path::new("/") && share.read_only {
            HOST_ROOT_TAG.to_string()
        } else {
            format!("vmm-share{}", self.shares)
        };
        let (daemon, stream) = Virtiofsd::start(&binary, share, dir, &tag)?;
        self.virtiofsds.push(daemon);
        let host = share.host.display().to_string();
        let backend = FsBackend::handshake(stream, memory)
            .map_err(|e| DeviceError::Share(host.clone(), e))?;
        let thread_start: Box<dyn FnOnce() -> Result<(), String> + Send> = match filter {
            Some(filter) => Box::new(move || {
                crate::host::seccomp::apply(&filter, crate::host::seccomp::ThreadKind::Virtiofs)
                    .map_err(|e| e.to_string())
            }),
            None => Box::new(|| Ok(())),
        };
        let device = VirtioFs::new(&tag, backend, memory.clone(), thread_start, on_failure)
            .map_err(|e| DeviceError::Share(host, e))?;
        self.add_virtio(vm, memory, bus, Box::new(device))?;
        self.shares += 1;
        Ok(tag)
    }

    /// The VM is about to run: the virtiofsd processes are left to end by themselves.
    pub fn set_running(&mut self) {
        for daemon in &mut self.virtiofsds {
            daemon.set_serving();
        }
        // Removed now, while vmm's seccomp filters are not installed yet.
        self.socket_dir = None;
    }

    /// The zoned disks with `cache=volatile` added from now on lose power when `trigger` says.
    pub fn set_power_cut(&mut self, trigger: Arc<PowerCutTrigger>) {
        self.power_cut = Some(trigger);
    }

    /// The power was cut and the VM has stopped: each disk with a volatile cache loses what
    /// `cut` says; every other device is shut down as usual. Returns what each lost, by name.
    pub fn power_cut(&self, cut: PowerCut) -> Vec<(String, PowerCutReport)> {
        let mut reports = Vec::new();
        for (name, transport) in &self.transports {
            let mut transport = lock(transport);
            match transport.device_mut().power_cut(cut) {
                Ok(Some(report)) => reports.push((name.clone(), report)),
                Ok(None) => {}
                Err(error) => log::error!("{name}: the power cut failed: {error}"),
            }
        }
        reports
    }

    /// Makes every device's state durable; called once the VM has stopped.
    pub fn shutdown(&self) {
        for (_, transport) in &self.transports {
            let mut transport = lock(transport);
            if let Err(error) = transport.device_mut().shutdown() {
                log::error!("device shutdown failed: {error}");
            }
        }
    }

    /// Places `device` in the next MMIO window with the next IRQ.
    pub fn add_virtio(
        &mut self,
        vm: &VmFd,
        memory: &GuestMemoryMmap,
        bus: &mut Bus,
        device: Box<dyn VirtioDevice>,
    ) -> Result<MmioSlot, DeviceError> {
        let index = self.slots.len() as u32;
        let irq = layout::VIRTIO_IRQ_BASE + index;
        if irq > layout::IRQ_MAX {
            return Err(DeviceError::OutOfIrqs);
        }
        let irq_event = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        let resample = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        let trigger = register_interrupt(vm, &irq_event, &resample, irq)?;
        let slot = MmioSlot {
            base: layout::VIRTIO_MMIO_START + u64::from(index) * layout::VIRTIO_MMIO_WINDOW_SIZE,
            size: layout::VIRTIO_MMIO_WINDOW_SIZE,
            irq,
            trigger,
        };
        let transport = MmioTransport::new(memory.clone(), device, Box::new(irq_event))
            .map_err(DeviceError::Transport)?;
        if trigger == TriggerMode::Level {
            self.notifiers
                .push(Arc::new(Mutex::new(InterruptResampler::new(
                    transport.interrupt(),
                    resample,
                ))));
        }
        let mut queues = Vec::new();
        for (offset, queue) in transport.queue_notify_ioevents() {
            let address = IoEventAddress::Mmio(slot.base + offset);
            // A device served outside vmm (vhost-user) takes its notifications directly.
            let direct = u16::try_from(queue)
                .ok()
                .and_then(|q| transport.device().kick_event(q));
            if let Some(event) = direct {
                vm.register_ioevent(&event, &address, queue)
                    .map_err(|e| DeviceError::Kvm("an ioeventfd", e))?;
                continue;
            }
            let event = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
            vm.register_ioevent(&event, &address, queue)
                .map_err(|e| DeviceError::Kvm("an ioeventfd", e))?;
            queues.push((event, queue));
        }
        let name = match transport.device().device_type() {
            devices::fs::VIRTIO_ID_FS => format!("virtio-fs{}", self.shares),
            _ => disk_name(self.transports.len() - self.shares),
        };
        let transport = Arc::new(Mutex::new(transport));
        bus.insert(slot.base, slot.size, transport.clone())?;
        self.transports.push((name, transport.clone()));
        self.notifiers
            .push(Arc::new(Mutex::new(QueueNotifier { transport, queues })));
        self.slots.push(slot);
        Ok(slot)
    }
}

/// Makes `irq_event` assert `irq`: as a resample irqfd (level-triggered) where KVM takes one,
/// else as a plain irqfd (edge-triggered), with a note on stderr.
pub fn register_interrupt(
    vm: &VmFd,
    irq_event: &EventFd,
    resample: &EventFd,
    irq: u32,
) -> Result<TriggerMode, DeviceError> {
    match vm.register_irqfd_with_resample(irq_event, resample, irq) {
        Ok(()) => Ok(TriggerMode::Level),
        Err(error) => {
            log::warn!(
                "IRQ {irq}: KVM refuses a resample irqfd ({error}); the virtio interrupt is \
                 edge-triggered, and only the lost-event watcher retries a lost edge"
            );
            vm.register_irqfd(irq_event, irq)
                .map_err(|e| DeviceError::Kvm("an irqfd", e))?;
            Ok(TriggerMode::Edge)
        }
    }
}

/// A virtio-blk device serving `disk` as a host-managed zoned disk, with the faults the options
/// ask to inject, the trace, if one is kept, and a volatile cache losing power when `power_cut`
/// says.
fn zoned_block<S: ZoneStorage + Send + 'static>(
    disk: ZonedDisk<S>,
    options: &ZonedDiskOptions,
    trace: Option<zoned::ZoneTrace>,
    serial: &str,
    power_cut: Option<Arc<PowerCutTrigger>>,
) -> Result<Block, DeviceError> {
    let mut executor =
        ZonedExecutor::with_faults(disk, &options.faults).map_err(DeviceError::FaultInjection)?;
    if let Some(trigger) = power_cut.filter(|_| options.volatile_cache) {
        executor.set_power_cut(trigger);
    }
    if let Some(trace) = trace {
        executor = executor.with_trace(trace);
    }
    Ok(Block::with_executor(Box::new(executor), serial))
}

/// An error and its sources on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_options() {
        assert_eq!(
            "a.img".parse(),
            Ok(DiskConfig {
                path: "a.img".into(),
                read_only: false,
                serial: None
            })
        );
        assert_eq!(
            "/x/b.img,ro,serial=abc".parse(),
            Ok(DiskConfig {
                path: "/x/b.img".into(),
                read_only: true,
                serial: Some("abc".into())
            })
        );
        assert_eq!("".parse::<DiskConfig>(), Err(DiskOptionError::MissingPath));
        assert_eq!(
            ",ro".parse::<DiskConfig>(),
            Err(DiskOptionError::MissingPath)
        );
        assert_eq!(
            "a,rw".parse::<DiskConfig>(),
            Err(DiskOptionError::UnknownOption("rw".into()))
        );
        assert!(matches!(
            "a,serial=123456789012345678901".parse::<DiskConfig>(),
            Err(DiskOptionError::SerialTooLong(_))
        ));
    }

    #[test]
    fn cmdline_entry_format() {
        let slot = MmioSlot {
            base: 0xd000_0000,
            size: 0x1000,
            irq: 5,
            trigger: TriggerMode::Level,
        };
        assert_eq!(slot.cmdline_entry(), "virtio_mmio.device=4K@0xd0000000:5");
    }
}

/// The guest's name of the `index`th virtio-blk disk: vda, ..., vdz, vdaa, ...
fn disk_name(index: usize) -> String {
    let mut suffix = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        suffix.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    suffix.reverse();
    format!("vd{}", String::from_utf8_lossy(&suffix))
}

#[cfg(test)]
mod disk_name_tests {
    #[test]
    fn names_follow_the_guest_kernel() {
        let names: Vec<String> = [0, 1, 25, 26, 27, 701].map(super::disk_name).into();
        assert_eq!(names, ["vda", "vdb", "vdz", "vdaa", "vdab", "vdzz"]);
    }
}
