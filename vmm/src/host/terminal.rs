//! The host terminal: raw mode while the guest owns the console, restored exactly on exit; and
//! SIGINT/SIGTERM/SIGHUP (and SIGUSR1, the state dump) turned into events the event loop waits on.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

use vmm_sys_util::eventfd::EventFd;

static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);
/// The same settings for a signal handler, which cannot take a lock.
static TERMIOS_FOR_SIGNAL_HANDLER: OnceLock<libc::termios> = OnceLock::new();
static SIGNAL_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);
static DUMP_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
/// The eventfd SIGUSR2 (`--power-cut signal`) wakes, or -1.
static POWER_CUT_EVENT_FD: AtomicI32 = AtomicI32::new(-1);

pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Puts stdin in raw mode (guest gets every key, including Ctrl-C) if it is a terminal.
pub fn enter_raw_mode() {
    if !stdin_is_tty() {
        return;
    }
    // SAFETY: termios is plain data, and tcgetattr fills it completely on success.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and pointer to a termios.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut termios) } != 0 {
        return;
    }
    *SAVED_TERMIOS.lock().unwrap_or_else(|p| p.into_inner()) = Some(termios);
    let _ = TERMIOS_FOR_SIGNAL_HANDLER.set(termios);
    let mut raw = termios;
    // SAFETY: cfmakeraw only edits the struct it is given.
    unsafe { libc::cfmakeraw(&mut raw) };
    // Keep output post-processing so that host-side messages still start at column 0.
    raw.c_oflag |= libc::OPOST | libc::ONLCR;
    // SAFETY: valid descriptor and termios.
    unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) };
}

/// Restores the terminal as it was before `enter_raw_mode`. Safe to call more than once.
pub fn restore() {
    if let Some(termios) = SAVED_TERMIOS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        // SAFETY: valid descriptor and the termios saved earlier.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &termios) };
    }
}

/// `restore` for a signal handler that is about to end the process: no lock, one tcsetattr
/// (an ioctl, async-signal-safe).
pub fn restore_in_signal_handler() {
    if let Some(termios) = TERMIOS_FOR_SIGNAL_HANDLER.get() {
        // SAFETY: valid descriptor and the termios saved by `enter_raw_mode`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, termios) };
    }
}

/// Wakes the event loop through the eventfd whose descriptor `fd` holds, if any.
fn wake(fd: &AtomicI32) {
    let fd = fd.load(Ordering::Relaxed);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; fd is an eventfd that lives until exit.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

extern "C" fn on_signal(signo: libc::c_int) {
    LAST_SIGNAL.store(signo, Ordering::Relaxed);
    wake(&SIGNAL_EVENT_FD);
}

extern "C" fn on_dump_signal(_signo: libc::c_int) {
    wake(&DUMP_EVENT_FD);
}

extern "C" fn on_power_cut_signal(_signo: libc::c_int) {
    wake(&POWER_CUT_EVENT_FD);
}

/// Installs `handler` for `signals` and returns the eventfd it wakes (stored in `fd`).
fn route_signals(
    signals: &[libc::c_int],
    handler: extern "C" fn(libc::c_int),
    fd: &AtomicI32,
) -> std::io::Result<EventFd> {
    let event = EventFd::new(libc::EFD_NONBLOCK)?;
    let raw: RawFd = std::os::fd::AsRawFd::as_raw_fd(&event);
    fd.store(raw, Ordering::Relaxed);
    for &signo in signals {
        // SAFETY: sigaction is plain data; the handlers only touch atomics and call write(2).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signo, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(event)
}

/// Routes SIGINT, SIGTERM and SIGHUP to the returned eventfd.
pub fn install_signal_handlers() -> std::io::Result<EventFd> {
    route_signals(
        &[libc::SIGINT, libc::SIGTERM, libc::SIGHUP],
        on_signal,
        &SIGNAL_EVENT_FD,
    )
}

/// Routes SIGUSR1 (a request to print the device state, for a guest that seems hung) to the
/// returned eventfd.
pub fn install_dump_handler() -> std::io::Result<EventFd> {
    route_signals(&[libc::SIGUSR1], on_dump_signal, &DUMP_EVENT_FD)
}

/// Routes SIGUSR2 (`--power-cut signal`) to the returned eventfd.
pub fn install_power_cut_handler() -> std::io::Result<EventFd> {
    route_signals(&[libc::SIGUSR2], on_power_cut_signal, &POWER_CUT_EVENT_FD)
}

/// The last signal received, if any.
pub fn last_signal() -> Option<i32> {
    match LAST_SIGNAL.load(Ordering::Relaxed) {
        0 => None,
        signo => Some(signo),
    }
}
