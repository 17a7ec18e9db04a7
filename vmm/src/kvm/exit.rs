//! How a VM ends: the first reason reported wins, and the event loop is woken to act on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use crate::kvm::bus::lock;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reported its command's exit status through the exit port.
    GuestStatus(u8),
    /// The guest asked for a reset (keyboard controller, KVM system event).
    Reset,
    /// The guest powered off or triple-faulted.
    Shutdown,
    /// A vCPU stopped with no interrupt controller to wake it (only tiny test guests do this).
    Halted,
    /// KVM could not run a vCPU.
    VcpuError(String),
    /// A device's backend failed while the VM ran (e.g. virtiofsd exited).
    DeviceFailed(String),
    /// The VMM received this signal.
    Signal(i32),
    /// The user pressed the console escape (Ctrl-A x).
    UserQuit,
    /// `--power-cut` cut the power.
    PowerCut,
}

impl ExitReason {
    /// The VMM's process exit status for this reason (see README, "Exit status").
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestStatus(status) => i32::from(*status),
            ExitReason::Reset
            | ExitReason::Shutdown
            | ExitReason::Halted
            | ExitReason::UserQuit => 0,
            ExitReason::VcpuError(_) | ExitReason::DeviceFailed(_) => 1,
            ExitReason::Signal(signo) => 128 + signo,
            ExitReason::PowerCut => i32::from(crate::config::POWER_CUT_STATUS),
        }
    }

    /// The exit status, where in run mode (a command was given) only the command's own status
    /// counts as an answer: a reset, power-off or triple fault without one is a failure.
    pub fn exit_code_for(&self, run_mode: bool) -> i32 {
        if run_mode && self.lacks_guest_status() {
            RUN_MODE_NO_STATUS
        } else {
            self.exit_code()
        }
    }

    /// The guest stopped on its own without reporting a command's status.
    pub fn lacks_guest_status(&self) -> bool {
        matches!(
            self,
            ExitReason::Reset | ExitReason::Shutdown | ExitReason::Halted
        )
    }
}

/// Exit status in run mode when the guest stopped without reporting the command's status (a
/// panicking kernel reboots): a failure, so that `git bisect run` does not call it good.
pub const RUN_MODE_NO_STATUS: i32 = 1;

/// Shared between the vCPUs, the devices and the event loop.
pub struct VmExit {
    reason: Mutex<Option<ExitReason>>,
    stopping: AtomicBool,
    event: EventFd,
}

impl VmExit {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            stopping: AtomicBool::new(false),
            event: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless another one came first, and wakes the event loop.
    pub fn request(&self, reason: ExitReason) {
        let mut current = lock(&self.reason);
        if current.is_none() {
            *current = Some(reason);
            self.stopping.store(true, Ordering::Release);
            // The event loop also checks `reason()` after every wake-up, so a failed write
            // (counter overflow, impossible here) would only delay the exit.
            let _ = self.event.write(1);
        }
    }

    pub fn reason(&self) -> Option<ExitReason> {
        lock(&self.reason).clone()
    }

    /// Cheap check for the vCPU hot path.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let exit = VmExit::new().unwrap();
        assert_eq!(exit.reason(), None);
        exit.request(ExitReason::GuestStatus(7));
        exit.request(ExitReason::Reset);
        assert_eq!(exit.reason(), Some(ExitReason::GuestStatus(7)));
        assert_eq!(exit.event().read().unwrap(), 1);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitReason::GuestStatus(0).exit_code(), 0);
        assert_eq!(ExitReason::GuestStatus(255).exit_code(), 255);
        assert_eq!(ExitReason::Shutdown.exit_code(), 0);
        assert_eq!(ExitReason::Signal(15).exit_code(), 143);
        assert_eq!(ExitReason::VcpuError(String::new()).exit_code(), 1);
    }

    #[test]
    fn run_mode_needs_the_command_status() {
        assert_eq!(ExitReason::Reset.exit_code_for(true), RUN_MODE_NO_STATUS);
        assert_eq!(ExitReason::Shutdown.exit_code_for(true), RUN_MODE_NO_STATUS);
        assert!(ExitReason::Halted.lacks_guest_status());
        // A command that fails with status 1 did report it.
        assert!(!ExitReason::GuestStatus(1).lacks_guest_status());
        assert_eq!(ExitReason::GuestStatus(1).exit_code_for(true), 1);
        assert_eq!(ExitReason::Reset.exit_code_for(false), 0);
        assert_eq!(ExitReason::PowerCut.exit_code_for(true), 99);
        assert_eq!(ExitReason::GuestStatus(0).exit_code_for(true), 0);
        assert_eq!(ExitReason::GuestStatus(9).exit_code_for(true), 9);
        assert_eq!(ExitReason::UserQuit.exit_code_for(true), 0);
    }
}
