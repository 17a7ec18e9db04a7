//! The main thread's event loop (event-manager over epoll): host stdin into the serial port,
//! batched console output, signals, and the VM's exit event. Nothing here polls.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::bus::lock;
use crate::exit::{ExitReason, VmExit};
use crate::legacy::{ConsoleOutput, SerialDevice};
use crate::terminal;

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
