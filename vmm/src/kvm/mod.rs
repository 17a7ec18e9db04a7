//! What vmm asks of KVM, and how a running VM is driven: the VM with its guest memory and
//! in-kernel interrupt controllers (`vm`), the vCPU run loop (`vcpu`), the buses its port I/O and
//! MMIO exits are dispatched on (`bus`), and how the VM ends (`exit`).

pub mod bus;
pub mod exit;
pub mod vcpu;
pub mod vm;
