//! Assembles a VM from a `VmConfig`, runs it, and reports why it ended.

use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{acpi, layout, mptable, regs};
use crate::boot::boot_info::write_boot_info;
use crate::boot::held_back;
use crate::boot::initrd::{place_initrd, PendingInitrd};
use crate::boot::kernel::{check_kernel, KernelLoadThread};
use crate::boot::LoaderError;
use crate::config::{self, VmConfig};
use crate::device_manager::legacy::{
    AcpiPowerControl, ConsoleOutput, GuestControl, I8042Reset, SerialDevice, SerialInputDrained,
    SerialIrq, SharedConsole, GUEST_EXIT_PORT, I8042_COMMAND_PORT,
};
use crate::device_manager::{DeviceError, DeviceManager};
use crate::host::event_loop::{
    ConsoleFlusher, ConsoleInput, ExitWatcher, IdleWork, LostEventWatcher, PowerCutWatch,
    StateDumper,
};
use crate::host::seccomp::{self, Filters, SeccompError, ThreadKind};
use crate::host::terminal;
use crate::kvm::bus::{Bus, BusDevice};
use crate::kvm::exit::{ExitReason, VmExit};
use crate::kvm::vcpu::Vcpu;
use crate::kvm::vm::{HeldBackSlot, Vm, VmError};
use devices::zoned::image::{PowerCut, PowerCutReport};
use devices::zoned::PowerCutTrigger;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error("vCPU setup failed: {0}")]
    Regs(#[from] regs::RegsError),
    #[error("--cpus {0} exceeds what this KVM supports ({1})")]
    TooManyCpus(u32, usize),
    #[error("cannot set up {0}: {1}")]
    Setup(&'static str, #[source] std::io::Error),
    #[error("cannot place a device: {0}")]
    Bus(#[from] crate::kvm::bus::BusOverlap),
    #[error("cannot start vCPU thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("event loop failed: {0}")]
    EventLoop(#[source] event_manager::Error),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A vCPU thread could not install its filter (reported over a channel, hence not `Seccomp`).
    #[error(transparent)]
    VcpuSeccomp(SeccompError),
    #[error("--map-images cannot be used with --share, --rwdir or --host-root: virtiofsd maps guest memory from its file, where privately mapped images do not show")]
    MapImagesWithShares,
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

fn io_err(what: &'static str) -> impl Fn(std::io::Error) -> VmmError {
    move |e| VmmError::Setup(what, e)
}

/// Boots the configured kernel and runs the VM until it ends.
pub fn run(config: &VmConfig) -> Result<ExitReason, VmmError> {
    if config.map_images && !config.shares.is_empty() {
        return Err(VmmError::MapImagesWithShares);
    }
    let kernel = check_kernel(&config.kernel)?;
    // Opened now: no thread may open files once the seccomp filters are in place.
    let lost_events_log = crate::host::event_loop::LostEventsLog::from_env();
    // A vhost-user backend (virtiofsd) maps guest RAM itself: it must be shared.
    let memory = if config.shares.is_empty() {
        crate::kvm::vm::guest_memory(config.memory_mib << 20)?
    } else {
        crate::kvm::vm::shared_guest_memory(config.memory_mib << 20)?
    };
    // The initrd is read once the guest runs (`fill_held_back`), unless it is mapped.
    let initrd = match &config.initrd {
        Some(path) => Some(place_initrd(&memory, path, kernel.initrd_limit)?),
        None => None,
    };
    let read_later = match &initrd {
        Some(initrd) => !(config.map_images && initrd.map(&memory)?),
        None => false,
    };
    let loading = KernelLoadThread::spawn(memory.clone(), config.kernel.clone(), config.map_images)
        .map_err(io_err("the kernel loader thread"))?;
    let (vm, held_back) = Vm::with_memory(
        memory,
        true,
        initrd
            .as_ref()
            .filter(|_| read_later)
            .map(PendingInitrd::held_back),
    )?;
    // After guest memory is mapped, so that a vCPU thread's malloc arena never lands next to it,
    // where the kernel would merge the two into one mapping in /proc/PID/smaps.
    let vcpu_threads = VcpuThreads::spawn(config.cpus, config.seccomp)?;
    let supported = vm.supported_cpuid()?;
    let filling = held_back::Filling::new();
    // Joined before any device is created, so that a kernel that does not load, or an initrd
    // that does not fit beside it, fails before, say, a new disk image is made.
    let images = loading.join()?;
    let images = match &initrd {
        Some(initrd) => images.with_initrd(initrd)?,
        None => images,
    };
    // A kernel that reaches into the held-back RAM (guests with little memory) must be in the
    // VM before it starts: the initrd is read now, as it would be without holding back.
    let mut initrd_to_read = initrd.filter(|_| read_later);
    if let Some(slot) = held_back
        .as_ref()
        .filter(|slot| images.kernel_end() > slot.range().start)
    {
        if let Some(initrd) = initrd_to_read.take() {
            fill_held_back(&vm, initrd, slot, &filling, false)?;
        }
    }
    let max_vcpus = vm.kvm.get_max_vcpus();
    if config.cpus as usize > max_vcpus {
        return Err(VmmError::TooManyCpus(config.cpus, max_vcpus));
    }
    let exit = Arc::new(VmExit::new().map_err(io_err("the exit event"))?);
    let console = Arc::new(Mutex::new(
        ConsoleOutput::new(Box::new(std::io::stdout())).map_err(io_err("the console"))?,
    ));
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("the serial interrupt"))?;
    vm.fd
        .register_irqfd(&serial_irq, layout::SERIAL_IRQ)
        .map_err(|e| {
            VmmError::Setup(
                "the serial interrupt",
                std::io::Error::from_raw_os_error(e.errno()),
            )
        })?;
    let serial_irq_again = serial_irq
        .try_clone()
        .map_err(io_err("the serial interrupt"))?;
    let drained = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("the serial input"))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        vm_superio::Serial::with_events(
            SerialIrq(serial_irq),
            SerialInputDrained(drained.try_clone().map_err(io_err("the serial input"))?),
            SharedConsole(console.clone()),
        ),
        drained.try_clone().map_err(io_err("the serial input"))?,
        serial_irq_again,
    )));

    let mut io_bus = Bus::new();
    io_bus.insert(u64::from(layout::SERIAL_PORT_BASE), 8, serial.clone())?;
    let i8042: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(I8042Reset { exit: exit.clone() }));
    io_bus.insert(0x60, u64::from(I8042_COMMAND_PORT - 0x60 + 1), i8042)?;
    let control: Arc<Mutex<dyn BusDevice>> =
        Arc::new(Mutex::new(GuestControl { exit: exit.clone() }));
    io_bus.insert(u64::from(GUEST_EXIT_PORT), 2, control)?;
    let power: Arc<Mutex<dyn BusDevice>> =
        Arc::new(Mutex::new(AcpiPowerControl { exit: exit.clone() }));
    io_bus.insert(u64::from(layout::ACPI_POWER_PORT), 1, power)?;
    let io_bus = Arc::new(io_bus);

    let mut mmio_bus = Bus::new();
    if let Some(slot) = &held_back {
        let range = slot.range();
        let ram = held_back::HeldBackRam::new(
            range.start,
            vm.memory.clone(),
            filling.clone(),
            exit.clone(),
        );
        mmio_bus.insert(
            range.start,
            range.end - range.start,
            Arc::new(Mutex::new(ram)),
        )?;
    }
    let mut devices = DeviceManager::new();
    let power_cut = match &config.power_cut {
        Some(spec) => {
            let seed = match spec.seed {
                Some(seed) => seed,
                None => {
                    devices::zoned::image::random_seed().map_err(io_err("the power-cut seed"))?
                }
            };
            let exit = exit.clone();
            let at_flush = match spec.when {
                config::PowerCutWhen::Flush(n) => Some(n),
                _ => None,
            };
            let trigger = Arc::new(PowerCutTrigger::new(
                at_flush,
                Box::new(move || exit.request(ExitReason::PowerCut)),
            ));
            devices.set_power_cut(trigger.clone());
            Some((spec, seed, trigger))
        }
        None => None,
    };
    devices.add_disks(&vm.fd, &vm.memory, &mut mmio_bus, &config.disks)?;
    let share_params = add_shares(&mut devices, &vm, &mut mmio_bus, config, &exit)?;
    let mmio_bus = Arc::new(mmio_bus);
    let mut device_params: Vec<String> = if config.discovery.uses_cmdline() {
        devices
            .slots()
            .iter()
            .map(|slot| slot.cmdline_entry())
            .collect()
    } else {
        Vec::new()
    };
    device_params.extend(share_params);
    let cmdline = config::build_cmdline(&config.cmdline, &device_params);
    // The MP table is always there: a kernel without ACPI (or booted with acpi=off) reads it.
    mptable::setup_mptable(&vm.memory, config.cpus, devices.slots())?;
    let rsdp = if config.discovery.uses_acpi() {
        Some(acpi::setup_acpi(&vm.memory, config.cpus, devices.slots())?)
    } else {
        None
    };
    let boot = write_boot_info(&vm.memory, &images, &cmdline, rsdp)?;

    let mut vcpus = Vec::with_capacity(config.cpus as usize);
    for index in 0..config.cpus {
        let fd = vm.create_vcpu(&supported, index, config.cpus)?;
        if index == 0 {
            regs::setup_boot_vcpu(&fd, &vm.memory, &boot)?;
        }
        vcpus.push(Vcpu {
            fd,
            index,
            io_bus: io_bus.clone(),
            mmio_bus: mmio_bus.clone(),
            exit: exit.clone(),
        });
    }

    let signal_event = terminal::install_signal_handlers().map_err(io_err("signal handling"))?;
    let mut events: EventManager<Subscriber> = EventManager::new().map_err(VmmError::EventLoop)?;
    events.add_subscriber(Arc::new(Mutex::new(
        ExitWatcher::new(exit.clone(), signal_event).map_err(io_err("the exit event"))?,
    )));
    events.add_subscriber(Arc::new(Mutex::new(
        ConsoleFlusher::new(console.clone()).map_err(io_err("the console"))?,
    )));
    let lost_events = Arc::new(Mutex::new(
        LostEventWatcher::new(serial.clone(), devices.transports())
            .map_err(io_err("the lost-event timer"))?,
    ));
    events.add_subscriber(lost_events.clone());
    events.add_subscriber(Arc::new(Mutex::new(
        IdleWork::new(devices.transports()).map_err(io_err("the idle-work timer"))?,
    )));
    events.add_subscriber(Arc::new(Mutex::new(StateDumper::new(
        terminal::install_dump_handler().map_err(io_err("signal handling"))?,
        serial.clone(),
        devices.transports(),
    ))));
    events.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
        serial,
        drained,
        exit.clone(),
    ))));
    if let Some((spec, _, trigger)) = &power_cut {
        let watch = match spec.when {
            config::PowerCutWhen::After(after) => Some(
                PowerCutWatch::after(
                    after.saturating_sub(crate::host::timing::elapsed()),
                    trigger.clone(),
                )
                .map_err(io_err("the power-cut timer"))?,
            ),
            config::PowerCutWhen::Signal => Some(PowerCutWatch::on_event(
                terminal::install_power_cut_handler().map_err(io_err("signal handling"))?,
                trigger.clone(),
            )),
            config::PowerCutWhen::Flush(_) => None,
        };
        if let Some(watch) = watch {
            events.add_subscriber(Arc::new(Mutex::new(watch)));
        }
    }
    // Queue notifications arrive on ioeventfds: without these subscribers no request is served.
    for notifier in devices.take_subscribers() {
        events.add_subscriber(notifier);
    }

    if crate::kvm::vm::kvm_is_pvm() {
        eprintln!(
            "vmm: warning: /dev/kvm is PVM (kvm_pvm), which cannot boot a stock Linux kernel; \
             run vmm inside resources/lab/run-in-lab"
        );
    }
    devices.set_running();
    terminal::enter_raw_mode();
    let result = vcpu_threads.start(vcpus).and_then(|threads| {
        if let (Some(initrd), Some(slot)) = (initrd_to_read, &held_back) {
            fill_held_back(&vm, initrd, slot, &filling, config.test_hooks.late_initrd)?;
        }
        let result = loop {
            if let Some(reason) = exit.reason() {
                break Ok(reason);
            }
            if let Err(e) = events.run() {
                break Err(VmmError::EventLoop(e));
            }
        };
        // vCPU threads still inside KVM_RUN end with the process; the VM has no state to save.
        drop(threads);
        result
    });
    match (&result, &power_cut) {
        (Ok(ExitReason::PowerCut), Some((spec, seed, _))) => {
            let cut = PowerCut {
                loss: spec.loss,
                seed: *seed,
            };
            crate::kvm::bus::lock(&console).flush_now();
            for (name, report) in devices.power_cut(cut) {
                eprintln!("vmm: power cut: {name} {}", describe_cut(&report));
            }
            eprintln!(
                "vmm: power cut ({}), seed {seed}: the same --power-cut with seed={seed} loses the \
                 same writes of the same run",
                spec_text(spec)
            );
        }
        _ => devices.shutdown(),
    }
    crate::kvm::bus::lock(&console).flush_now();
    terminal::restore();
    // Printed whatever the log level: with level-triggered virtio interrupts, a recovery means
    // a bug, and the lab tests fail on this line.
    let counts = crate::kvm::bus::lock(&lost_events).counts();
    if let Some(summary) = counts.summary() {
        eprintln!("{summary}");
    }
    if let Some(log) = lost_events_log {
        log.append(&counts);
    }
    result
}

/// Attaches a virtio-fs device, served by its own virtiofsd, for each share, and returns the
/// kernel parameters that tell the guest's /init what to mount where (docs/guest-interface.md):
/// `vmm.root=TAG` for the host's root, `vmm.shares64=` for the others.
fn add_shares(
    devices: &mut DeviceManager,
    vm: &Vm,
    bus: &mut Bus,
    config: &VmConfig,
    exit: &Arc<VmExit>,
) -> Result<Vec<String>, VmmError> {
    if config.shares.is_empty() {
        return Ok(Vec::new());
    }
    let filter = match config.seccomp {
        config::Seccomp::On => Some(Arc::new(seccomp::compile(ThreadKind::Virtiofs)?)),
        config::Seccomp::Off => None,
    };
    let mut params = Vec::new();
    let mut lines = String::new();
    for share in &config.shares {
        let exit = exit.clone();
        let on_failure = Box::new(move |message: String| {
            exit.request(ExitReason::DeviceFailed(message));
        });
        let tag = devices.add_share(&vm.fd, &vm.memory, bus, share, filter.clone(), on_failure)?;
        if tag == crate::device_manager::HOST_ROOT_TAG {
            params.push(format!("vmm.root={tag}"));
        } else {
            let mode = if share.read_only { "ro" } else { "rw" };
            lines.push_str(&format!("{tag} {mode} {}\n", share.guest.display()));
        }
    }
    if !lines.is_empty() {
        params.push(format!(
            "vmm.shares64={}",
            config::base64_encode(lines.as_bytes())
        ));
    }
    Ok(params)
}

/// Reads the initrd into guest memory while the guest already runs, then maps that range into
/// the VM (`held_back`), and tells `filling` how that went, which wakes any vCPU waiting there.
/// With `late` (`TestHooks::late_initrd`) it first waits for the guest to reach the range (for at most a
/// minute), so that the guest's wait is what gets exercised.
fn fill_held_back(
    vm: &Vm,
    initrd: PendingInitrd,
    slot: &HeldBackSlot,
    filling: &held_back::Filling,
    late: bool,
) -> Result<(), VmmError> {
    if late && !filling.wait_until_touched(std::time::Duration::from_secs(60)) {
        log::warn!(
            "VMM_TEST_LATE_INITRD: the guest did not reach its initrd in 60 s; reading it now"
        );
    }
    let filled = initrd
        .load(&vm.memory)
        .map_err(VmmError::from)
        .and_then(|()| slot.map(vm).map_err(VmmError::from));
    filling.finish(filled.is_ok());
    filled
}

/// The vCPU threads, started early in the VM's setup so that their start and their seccomp
/// filters cost nothing on the way to the first KVM_RUN: each installs its filter at once, then
/// waits for its vCPU. With seccomp on, the main thread installs its own filter once every vCPU
/// thread has, and only then hands out the vCPUs: the guest never runs while a thread of vmm is
/// unfiltered. The vCPU threads exist before the main thread's filter goes on, so that each gets
/// the vCPU filter rather than inheriting the main thread's (threads started later, the zoned
/// lanes, inherit it). Dropped without `start` (setup failed), the threads end.
struct VcpuThreads {
    threads: Vec<JoinHandle<()>>,
    vcpu_senders: Vec<mpsc::Sender<Vcpu>>,
    reports: mpsc::Receiver<Result<(), SeccompError>>,
    main_filter: Option<seccompiler::BpfProgram>,
}

impl VcpuThreads {
    fn spawn(count: u32, mode: config::Seccomp) -> Result<Self, VmmError> {
        let filters = match mode {
            config::Seccomp::On => {
                seccomp::install_violation_handler()?;
                Some(Filters::compile()?)
            }
            config::Seccomp::Off => None,
        };
        let (main_filter, vcpu_filter) = match filters {
            Some(Filters { main, vcpu }) => (Some(main), Some(Arc::new(vcpu))),
            None => (None, None),
        };
        let (installed, reports) = mpsc::channel();
        let mut threads = Vec::with_capacity(count as usize);
        let mut vcpu_senders = Vec::with_capacity(count as usize);
        for index in 0..count {
            let (filter, installed) = (vcpu_filter.clone(), installed.clone());
            let (vcpu_sender, vcpu_receiver) = mpsc::channel::<Vcpu>();
            let thread = thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    if let Some(filter) = filter {
                        seccomp::apply_and_report(&filter, &installed);
                    }
                    drop(installed);
                    // No vCPU arrives when setup fails: the thread just ends.
                    if let Ok(vcpu) = vcpu_receiver.recv() {
                        vcpu.run();
                    }
                })
                .map_err(VmmError::Thread)?;
            threads.push(thread);
            vcpu_senders.push(vcpu_sender);
        }
        Ok(Self {
            threads,
            vcpu_senders,
            reports,
            main_filter,
        })
    }

    /// Installs the main thread's filter once every vCPU thread has its own, then lets each
    /// thread run its vCPU. On an error no vCPU runs.
    fn start(self, vcpus: Vec<Vcpu>) -> Result<Vec<JoinHandle<()>>, VmmError> {
        if let Some(main_filter) = &self.main_filter {
            for report in self.reports.iter().take(self.threads.len()) {
                report.map_err(VmmError::VcpuSeccomp)?;
            }
            seccomp::apply(main_filter, ThreadKind::Main)?;
            log::info!(
                "seccomp filters installed on the main thread and {} vCPU threads",
                self.threads.len()
            );
        }
        for (sender, vcpu) in self.vcpu_senders.iter().zip(vcpus) {
            // A thread that is gone has ended with a panic, which aborts vmm: nothing to do here.
            let _ = sender.send(vcpu);
        }
        Ok(self.threads)
    }
}

/// What a power cut lost of one disk, for its line on stderr.
fn describe_cut(report: &PowerCutReport) -> String {
    let flushed = if report.flushed_sectors_lost > 0 {
        format!(
            ", and {} FLUSHED sectors (lose=flushed)",
            report.flushed_sectors_lost
        )
    } else {
        String::new()
    };
    format!(
        "lost {} unflushed sectors of {} sequential zones (kept {}), {} of {} unflushed \
         conventional blocks{flushed}",
        report.sectors_lost,
        report.zones_rolled_back,
        report.sectors_kept,
        report.blocks_lost,
        report.blocks_lost + report.blocks_kept,
    )
}

fn spec_text(spec: &config::PowerCutSpec) -> String {
    let when = match spec.when {
        config::PowerCutWhen::After(after) => format!("after {:.3} s", after.as_secs_f64()),
        config::PowerCutWhen::Flush(n) => format!("at flush {n}"),
        config::PowerCutWhen::Signal => "on SIGUSR2".to_string(),
    };
    let loss = match spec.loss {
        devices::zoned::image::Loss::All => "lose=all",
        devices::zoned::image::Loss::Random => "lose=random",
        devices::zoned::image::Loss::Flushed => "lose=flushed, a broken device",
    };
    format!("{when}, {loss}")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Waits for `threads` to end, failing after a few seconds rather than hanging.
    fn assert_all_end(threads: Vec<JoinHandle<()>>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !threads.iter().all(|t| t.is_finished()) {
            assert!(Instant::now() < deadline, "a vCPU thread did not end");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn vcpu_threads_end_when_setup_fails_before_they_get_their_vcpus() {
        let VcpuThreads {
            threads,
            vcpu_senders,
            ..
        } = VcpuThreads::spawn(2, config::Seccomp::Off).unwrap();
        assert_eq!(threads.len(), 2);
        drop(vcpu_senders);
        assert_all_end(threads);
    }

    #[test]
    fn vcpu_threads_install_their_filter_first_and_end_cleanly_under_it() {
        // An exit under the vCPU filter that the filter forbade would stop this test process
        // with the violation status.
        let VcpuThreads {
            threads,
            vcpu_senders,
            reports,
            main_filter,
        } = VcpuThreads::spawn(1, config::Seccomp::On).unwrap();
        assert!(main_filter.is_some());
        assert!(matches!(reports.recv().unwrap(), Ok(())));
        drop(vcpu_senders);
        assert_all_end(threads);
    }
}
