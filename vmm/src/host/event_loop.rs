//! The main thread's event loop (event-manager over epoll): host stdin into the serial port,
//! batched console output, signals, and the VM's exit event. Nothing here polls.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::device_manager::legacy::{ConsoleOutput, SerialDevice};
use crate::host::terminal;
use crate::kvm::bus::lock;
use crate::kvm::exit::{ExitReason, VmExit};
use devices::virtio::MmioTransport;

/// Ctrl-A: the console escape. Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A.
const ESCAPE: u8 = 0x01;
/// How long a partial console line may wait before it is written out.
const CONSOLE_FLUSH_DELAY: Duration = Duration::from_millis(2);

/// Host stdin to the guest's serial input FIFO, which holds only 64 bytes: the rest waits here
/// until the guest drains the FIFO.
pub struct ConsoleInput {
    serial: Arc<Mutex<SerialDevice>>,
    drained: EventFd,
    pending: VecDeque<u8>,
    after_escape: bool,
    exit: Arc<VmExit>,
}

impl ConsoleInput {
    pub fn new(serial: Arc<Mutex<SerialDevice>>, drained: EventFd, exit: Arc<VmExit>) -> Self {
        Self {
            serial,
            drained,
            pending: VecDeque::new(),
            after_escape: false,
            exit,
        }
    }

    fn accept(&mut self, input: &[u8]) {
        for &byte in input {
            if self.after_escape {
                self.after_escape = false;
                match byte {
                    b'x' | b'X' => self.exit.request(ExitReason::UserQuit),
                    _ => self.pending.push_back(byte),
                }
            } else if byte == ESCAPE && terminal::stdin_is_tty() {
                self.after_escape = true;
            } else {
                self.pending.push_back(byte);
            }
        }
    }

    fn feed_guest(&mut self) {
        let mut device = lock(&self.serial);
        if !device.accepts_input() {
            return;
        }
        let room = device.serial.fifo_capacity().min(self.pending.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.drain(..room).collect();
        // A failed interrupt trigger leaves the bytes in the FIFO; the guest still reads them.
        let _ = device.serial.enqueue_raw_bytes(&chunk);
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        // stdin may be closed, a regular file (epoll refuses those) or /dev/null: then the guest
        // simply gets no input.
        let _ = ops.add(Events::new_raw(libc::STDIN_FILENO, EventSet::IN));
        let _ = ops.add(Events::new(&self.drained, EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.drained.as_raw_fd() {
            let _ = self.drained.read();
        } else {
            let mut buf = [0u8; 256];
            // SAFETY: reading into a local buffer of the given length.
            let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
            let transient = || {
                matches!(
                    std::io::Error::last_os_error().raw_os_error(),
                    Some(libc::EAGAIN) | Some(libc::EINTR)
                )
            };
            if n > 0 {
                self.accept(&buf[..n as usize]);
            } else if n == 0 || !transient() {
                // End of input: the guest keeps running without a console input.
                let _ = ops.remove(Events::new_raw(libc::STDIN_FILENO, EventSet::IN));
            }
        }
        self.feed_guest();
    }
}

/// Writes out a partial console line shortly after it started, so prompts appear.
pub struct ConsoleFlusher {
    console: Arc<Mutex<ConsoleOutput>>,
    pending: EventFd,
    timer: TimerFd,
}

impl ConsoleFlusher {
    pub fn new(console: Arc<Mutex<ConsoleOutput>>) -> std::io::Result<Self> {
        let pending = lock(&console).pending_event().try_clone()?;
        Ok(Self {
            console,
            pending,
            timer: TimerFd::new()?,
        })
    }
}

impl MutEventSubscriber for ConsoleFlusher {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.pending, EventSet::IN));
        let _ = ops.add(Events::new(&self.timer, EventSet::IN));
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.pending.as_raw_fd() {
            let _ = self.pending.read();
            if self.timer.reset(CONSOLE_FLUSH_DELAY, None).is_err() {
                lock(&self.console).flush_now();
            }
        } else {
            let _ = self.timer.wait();
            lock(&self.console).flush_now();
        }
    }
}

/// Turns the VM exit event and host signals into the loop's stop condition.
pub struct ExitWatcher {
    exit: Arc<VmExit>,
    exit_event: EventFd,
    signal_event: EventFd,
}

impl ExitWatcher {
    pub fn new(exit: Arc<VmExit>, signal_event: EventFd) -> std::io::Result<Self> {
        let exit_event = exit.event().try_clone()?;
        Ok(Self {
            exit,
            exit_event,
            signal_event,
        })
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.exit_event, EventSet::IN));
        let _ = ops.add(Events::new(&self.signal_event, EventSet::IN));
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.signal_event.as_raw_fd() {
            let _ = self.signal_event.read();
            self.exit.request(ExitReason::Signal(
                terminal::last_signal().unwrap_or(libc::SIGTERM),
            ));
        } else {
            let _ = self.exit_event.read();
        }
    }
}

/// On SIGUSR1, prints one line per device with the state that decides whether the guest makes
/// progress (serial interrupt registers, virtio status and ring indexes): for a guest that seems
/// hung, `kill -USR1 PID` shows whether it waits for an interrupt the VMM never raised.
pub struct StateDumper {
    event: EventFd,
    serial: Arc<Mutex<SerialDevice>>,
    transports: Vec<(String, Arc<Mutex<MmioTransport>>)>,
}

impl StateDumper {
    pub fn new(
        event: EventFd,
        serial: Arc<Mutex<SerialDevice>>,
        transports: Vec<(String, Arc<Mutex<MmioTransport>>)>,
    ) -> Self {
        Self {
            event,
            serial,
            transports,
        }
    }

    /// The lines of one dump. A device whose lock is held (by a vCPU or a request being
    /// served) says so instead of waiting: a lock that stays held is itself the answer.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![match self.serial.try_lock() {
            Ok(serial) => format!("vmm: state: serial {}", serial.debug_state()),
            Err(_) => "vmm: state: serial busy (locked)".into(),
        }];
        for (name, transport) in &self.transports {
            lines.push(match transport.try_lock() {
                Ok(transport) => format!("vmm: state: {name} {}", transport.debug_state()),
                Err(_) => format!("vmm: state: {name} busy (locked)"),
            });
        }
        lines
    }
}

impl MutEventSubscriber for StateDumper {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.event, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.event.read();
        for line in self.lines() {
            eprintln!("{line}");
        }
    }
}

/// How often devices are offered time for deferred work, and how much at most each time: a
/// device takes it only when the guest sent it nothing for a whole period, and a request that
/// arrives meanwhile waits at most the budget.
const IDLE_PERIOD: Duration = Duration::from_millis(100);
const IDLE_BUDGET: Duration = Duration::from_millis(5);

/// Offers each device time for deferred work while the guest leaves it alone (the zoned
/// image gives reset zones' blocks back then, not in the reset).
pub struct IdleWork {
    timer: TimerFd,
    transports: Vec<(String, Arc<Mutex<MmioTransport>>)>,
}

impl IdleWork {
    pub fn new(transports: Vec<(String, Arc<Mutex<MmioTransport>>)>) -> std::io::Result<Self> {
        let mut timer = TimerFd::new()?;
        timer.reset(IDLE_PERIOD, Some(IDLE_PERIOD))?;
        Ok(Self { timer, transports })
    }
}

impl MutEventSubscriber for IdleWork {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.timer, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
        for (_, transport) in &self.transports {
            // A device busy with a request (on a vCPU thread) is not idle.
            if let Ok(mut transport) = transport.try_lock() {
                transport.idle(IDLE_BUDGET);
            }
        }
    }
}

/// Cuts the power (`--power-cut after=` or `signal`) when its timer expires or SIGUSR2 comes.
pub struct PowerCutWatch {
    fd: Box<dyn AsRawFd + Send>,
    trigger: Arc<devices::zoned::PowerCutTrigger>,
}

impl PowerCutWatch {
    /// At `after` from now.
    pub fn after(
        after: Duration,
        trigger: Arc<devices::zoned::PowerCutTrigger>,
    ) -> std::io::Result<Self> {
        let mut timer = TimerFd::new()?;
        // A zero timer would never fire.
        timer.reset(after.max(Duration::from_nanos(1)), None)?;
        Ok(Self {
            fd: Box::new(timer),
            trigger,
        })
    }

    /// When `event` (woken by the SIGUSR2 handler) fires.
    pub fn on_event(event: EventFd, trigger: Arc<devices::zoned::PowerCutTrigger>) -> Self {
        Self {
            fd: Box::new(event),
            trigger,
        }
    }
}

impl MutEventSubscriber for PowerCutWatch {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::with_data_raw(self.fd.as_raw_fd(), 0, EventSet::IN));
    }

    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        let _ = ops.remove(Events::with_data_raw(self.fd.as_raw_fd(), 0, EventSet::IN));
        self.trigger.cut_now();
    }
}

/// How often lost interrupts and notifications are looked for.
const LOST_EVENT_PERIOD: Duration = Duration::from_millis(250);

/// How the line vmm prints at exit when the lost-event watcher recovered anything starts; the
/// lab tests (tests/src/lib.rs) fail on it.
pub const LOST_EVENT_SUMMARY: &str = "vmm: lost-event watcher recovered";

/// The environment variable naming a file to which each vmm run appends one line,
/// `lost-events=N`, with N the number of events its watcher recovered (0 included): the lab
/// tests count over every run, also where a script hides vmm's stderr.
pub const LOST_EVENTS_LOG: &str = "VMM_LOST_EVENTS_LOG";

/// The file named by `LOST_EVENTS_LOG`, opened before the seccomp filters forbid opening files.
pub struct LostEventsLog {
    path: std::path::PathBuf,
    file: std::io::Result<std::fs::File>,
}

impl LostEventsLog {
    /// The log `LOST_EVENTS_LOG` names, if it names one.
    pub fn from_env() -> Option<Self> {
        let path = std::path::PathBuf::from(std::env::var_os(LOST_EVENTS_LOG)?);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        Some(Self { path, file })
    }

    /// Appends this run's `lost-events=N` line; a file that cannot be written gets a warning,
    /// not a changed exit status.
    pub fn append(self, counts: &LostEventCounts) {
        use std::io::Write;
        let total = counts.total();
        let written = self
            .file
            .and_then(|mut file| writeln!(file, "lost-events={total}"));
        if let Err(e) = written {
            eprintln!(
                "vmm: warning: cannot append to {LOST_EVENTS_LOG}={}: {e}",
                self.path.display()
            );
        }
    }
}

/// What the lost-event watcher had to recover, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LostEventCounts {
    /// Virtio interrupts left pending and unacknowledged for a whole period, raised again.
    pub interrupts: u64,
    /// Virtio completions the driver waited for with no interrupt pending, signalled.
    pub completions: u64,
    /// Virtio requests queued without the notification reaching vmm, served.
    pub requests: u64,
    /// Serial interrupts left pending for a whole period, raised again.
    pub serial: u64,
}

impl LostEventCounts {
    pub fn total(&self) -> u64 {
        self.interrupts + self.completions + self.requests + self.serial
    }

    /// The line for stderr at exit, if anything was recovered: each recovery is a bug somewhere
    /// (a lost interrupt or notification) that cost the guest up to `LOST_EVENT_PERIOD`.
    pub fn summary(&self) -> Option<String> {
        let total = self.total();
        (total > 0).then(|| {
            format!(
                "{LOST_EVENT_SUMMARY} {total} events: {} virtio interrupts raised again, {} \
                 completions signalled, {} requests served, {} serial interrupts raised again",
                self.interrupts, self.completions, self.requests, self.serial
            )
        })
    }
}

/// A diagnostic: every `LOST_EVENT_PERIOD`, raises again an interrupt the guest left pending and
/// serves requests the guest queued without the notification reaching the device (see
/// `MmioTransport::check_lost_events` and `SerialDevice::check_lost_interrupt`). With
/// level-triggered virtio interrupts none of this should ever happen: each recovery is counted
/// (`counts`, printed at exit), and the first one per device is also a warning.
pub struct LostEventWatcher {
    timer: TimerFd,
    serial: Arc<Mutex<SerialDevice>>,
    transports: Vec<(String, Arc<Mutex<MmioTransport>>)>,
    warned: Vec<bool>,
    counts: LostEventCounts,
}

impl LostEventWatcher {
    pub fn new(
        serial: Arc<Mutex<SerialDevice>>,
        transports: Vec<(String, Arc<Mutex<MmioTransport>>)>,
    ) -> std::io::Result<Self> {
        let mut timer = TimerFd::new()?;
        timer.reset(LOST_EVENT_PERIOD, Some(LOST_EVENT_PERIOD))?;
        let warned = vec![false; transports.len() + 1];
        Ok(Self {
            timer,
            serial,
            transports,
            warned,
            counts: LostEventCounts::default(),
        })
    }

    /// What was recovered so far.
    pub fn counts(&self) -> LostEventCounts {
        self.counts
    }

    fn report(&mut self, index: usize, name: &str, what: &str) {
        if std::mem::replace(&mut self.warned[index], true) {
            log::debug!("{name}: {what} again");
        } else {
            log::warn!(
                "{name}: {what} (nothing happened for {} ms): an interrupt or notification was \
                 lost; further recoveries are logged at debug level",
                LOST_EVENT_PERIOD.as_millis()
            );
        }
    }

    /// One look at every device (what the timer does each period).
    pub fn check(&mut self) {
        if lock(&self.serial).check_lost_interrupt() {
            self.counts.serial += 1;
            self.report(0, "serial", "raised a pending interrupt again");
        }
        for index in 0..self.transports.len() {
            let recovered = lock(&self.transports[index].1).check_lost_events();
            let name = self.transports[index].0.clone();
            if recovered.interrupt {
                self.counts.interrupts += 1;
                self.report(index + 1, &name, "raised a pending interrupt again");
            }
            if recovered.completions {
                self.counts.completions += 1;
                self.report(
                    index + 1,
                    &name,
                    "signalled completions the guest had not seen",
                );
            }
            if recovered.requests {
                self.counts.requests += 1;
                self.report(
                    index + 1,
                    &name,
                    "served requests queued without a notification",
                );
            }
        }
    }
}

impl MutEventSubscriber for LostEventWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.timer, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
        self.check();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_manager::legacy::{SerialInputDrained, SerialIrq, SharedConsole};
    use devices::block::{Block, RawFile};
    use devices::virtio::InterruptSignal;
    use vmm_sys_util::tempfile::TempFile;

    const UART_IER: u64 = 1;
    const UART_IIR: u64 = 2;
    const UART_IER_THRI: u8 = 0x02;

    fn serial() -> Arc<Mutex<SerialDevice>> {
        let console = Arc::new(Mutex::new(
            ConsoleOutput::new(Box::new(std::io::sink())).unwrap(),
        ));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let port = vm_superio::Serial::with_events(
            SerialIrq(irq.try_clone().unwrap()),
            SerialInputDrained(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            SharedConsole(console),
        );
        let ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Arc::new(Mutex::new(SerialDevice::new(port, ready, irq)))
    }

    fn disk(file: &TempFile) -> Arc<Mutex<MmioTransport>> {
        file.as_file().set_len(1 << 20).unwrap();
        let memory =
            vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x10000)])
                .unwrap();
        let backend = RawFile::open(file.as_path(), false).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Arc::new(Mutex::new(
            MmioTransport::new(
                memory,
                Box::new(Block::new(Box::new(backend), "watched")),
                Box::new(irq),
            )
            .unwrap(),
        ))
    }

    #[test]
    fn each_run_appends_its_count_to_the_lost_events_log() {
        let dir = std::env::temp_dir().join(format!("vmm-lost-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let log = |path: &std::path::Path| LostEventsLog {
            path: path.to_path_buf(),
            file: std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path),
        };
        log(&path).append(&LostEventCounts::default());
        let counts = LostEventCounts {
            interrupts: 2,
            serial: 1,
            ..LostEventCounts::default()
        };
        log(&path).append(&counts);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "lost-events=0\nlost-events=3\n");
        // An unwritable log is a warning only.
        log(&dir.join("no/such/dir/log")).append(&counts);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_watcher_counts_each_recovery_and_sums_them_up_for_the_exit_line() {
        use crate::kvm::bus::BusDevice;
        let file = TempFile::new_with_prefix(std::env::temp_dir().join("vmm-watch")).unwrap();
        let (serial, disk) = (serial(), disk(&file));
        let mut watcher =
            LostEventWatcher::new(serial.clone(), vec![("vda".into(), disk.clone())]).unwrap();
        watcher.check();
        watcher.check();
        assert_eq!(watcher.counts(), LostEventCounts::default());
        assert_eq!(watcher.counts().summary(), None, "nothing to say at exit");

        // A virtio interrupt nobody acknowledges for a whole period, twice over.
        let interrupt = lock(&disk).interrupt();
        interrupt.signal_used_queue(0).unwrap();
        watcher.check();
        watcher.check();
        watcher.check();
        assert_eq!(watcher.counts().interrupts, 2);
        lock(&disk).write(0x64, &1u32.to_le_bytes());
        watcher.check();
        watcher.check();
        assert_eq!(watcher.counts().interrupts, 2);

        // A serial interrupt pending with no IIR read for a whole period.
        lock(&serial).write(UART_IER, &[UART_IER_THRI]);
        watcher.check();
        watcher.check();
        let mut iir = [0u8];
        lock(&serial).read(UART_IIR, &mut iir);
        watcher.check();
        let counts = watcher.counts();
        assert_eq!(
            counts,
            LostEventCounts {
                interrupts: 2,
                serial: 1,
                ..LostEventCounts::default()
            }
        );
        assert_eq!(counts.total(), 3);
        assert_eq!(
            counts.summary().unwrap(),
            "vmm: lost-event watcher recovered 3 events: 2 virtio interrupts raised again, 0 \
             completions signalled, 0 requests served, 1 serial interrupts raised again"
        );
        assert!(counts.summary().unwrap().starts_with(LOST_EVENT_SUMMARY));
    }

    #[test]
    fn the_lab_tests_look_for_the_line_vmm_prints() {
        let helper = include_str!("../../../tests/src/lib.rs");
        assert!(helper.contains(&format!("= \"{LOST_EVENT_SUMMARY}\";")));
    }
}
