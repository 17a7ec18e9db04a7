//! vmm: a minimal KVM virtual machine monitor.
