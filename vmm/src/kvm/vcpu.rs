//! The vCPU run loop: KVM_RUN, then hand each exit to the I/O or MMIO bus, or end the VM.

use std::sync::Arc;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::host::timing;
use crate::kvm::bus::Bus;
use crate::kvm::exit::{ExitReason, VmExit};

/// What the run loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    Stop(ExitReason),
}

/// Handles one VM exit. Accesses no device claims are ignored: reads see all-ones, as on a bus
/// with nothing behind it, and writes are dropped.
pub fn dispatch(exit: VcpuExit<'_>, io_bus: &Bus, mmio_bus: &Bus) -> Next {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !io_bus.read(u64::from(port), data) {
                data.fill(0xff);
            }
            Next::Continue
        }
        VcpuExit::IoOut(port, data) => {
            io_bus.write(u64::from(port), data);
            Next::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio_bus.read(addr, data) {
                data.fill(0xff);
            }
            log::trace!("mmio read {addr:#x} -> {data:02x?}");
            Next::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            log::trace!("mmio write {addr:#x} <- {data:02x?}");
            mmio_bus.write(addr, data);
            Next::Continue
        }
        VcpuExit::Hlt => Next::Stop(ExitReason::Halted),
        VcpuExit::Shutdown => Next::Stop(ExitReason::Shutdown),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(ExitReason::Shutdown),
            KVM_SYSTEM_EVENT_RESET => Next::Stop(ExitReason::Reset),
            KVM_SYSTEM_EVENT_CRASH => {
                Next::Stop(ExitReason::VcpuError("the guest reported a crash".into()))
            }
            other => Next::Stop(ExitReason::VcpuError(format!(
                "unexpected KVM system event {other}"
            ))),
        },
        VcpuExit::FailEntry(reason, cpu) => Next::Stop(ExitReason::VcpuError(format!(
            "KVM could not enter the guest (hardware entry failure reason {reason:#x} on CPU {cpu})"
        ))),
        VcpuExit::InternalError => Next::Stop(ExitReason::VcpuError(
            "KVM internal error (often an instruction KVM cannot emulate)".into(),
        )),
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => Next::Continue,
        other => Next::Stop(ExitReason::VcpuError(format!(
            "unhandled KVM exit {other:?}"
        ))),
    }
}

pub struct Vcpu {
    pub fd: VcpuFd,
    pub index: u32,
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub exit: Arc<VmExit>,
}

impl Vcpu {
    /// Runs until the VM ends; reports why to `exit`.
    pub fn run(mut self) {
        if self.index == 0 {
            timing::record_first_run();
        }
        loop {
            let next = match self.fd.run() {
                Ok(exit) => dispatch(exit, &self.io_bus, &self.mmio_bus),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Continue,
                Err(e) => Next::Stop(ExitReason::VcpuError(format!("KVM_RUN failed: {e}"))),
            };
            if let Next::Stop(reason) = next {
                let reason = match reason {
                    ExitReason::VcpuError(message) => {
                        ExitReason::VcpuError(format!("vCPU {}: {message}", self.index))
                    }
                    other => other,
                };
                self.exit.request(reason);
                return;
            }
            if self.exit.is_stopping() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unclaimed_reads_see_all_ones_and_writes_are_dropped() {
        let (io, mmio) = (Bus::new(), Bus::new());
        let mut data = [0u8; 4];
        assert_eq!(
            dispatch(VcpuExit::IoIn(0x80, &mut data), &io, &mmio),
            Next::Continue
        );
        assert_eq!(data, [0xff; 4]);
        let mut data = [0u8; 8];
        assert_eq!(
            dispatch(VcpuExit::MmioRead(0xd000_0000, &mut data), &io, &mmio),
            Next::Continue
        );
        assert_eq!(data, [0xff; 8]);
        assert_eq!(
            dispatch(VcpuExit::MmioWrite(0xd000_0000, &[1]), &io, &mmio),
            Next::Continue
        );
    }

    #[test]
    fn shutdown_reset_and_failures_end_the_vm() {
        let (io, mmio) = (Bus::new(), Bus::new());
        assert_eq!(
            dispatch(VcpuExit::Shutdown, &io, &mmio),
            Next::Stop(ExitReason::Shutdown)
        );
        assert_eq!(
            dispatch(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]),
                &io,
                &mmio
            ),
            Next::Stop(ExitReason::Reset)
        );
        assert_eq!(
            dispatch(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &io,
                &mmio
            ),
            Next::Stop(ExitReason::Shutdown)
        );
        assert!(matches!(
            dispatch(VcpuExit::InternalError, &io, &mmio),
            Next::Stop(ExitReason::VcpuError(_))
        ));
        assert!(matches!(
            dispatch(VcpuExit::FailEntry(0x80, 0), &io, &mmio),
            Next::Stop(ExitReason::VcpuError(_))
        ));
        assert_eq!(dispatch(VcpuExit::Intr, &io, &mmio), Next::Continue);
    }
}
