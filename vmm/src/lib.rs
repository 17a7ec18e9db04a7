//! vmm: a minimal KVM virtual machine monitor for zoned-storage kernel work.
//!
//! `machine::run` turns a `config::VmConfig` into a running VM: `vm` owns KVM and guest memory,
//! `loader` puts the kernel in it (the initrd follows while the guest starts, `held_back`), `arch` sets up x86 boot state, `vcpu` runs the vCPUs and sends
//! their exits to the `bus`, where the `legacy` devices live, and `event_loop` serves the host
//! side (console, signals) until `exit` says the VM is over, every thread under a `seccomp` filter.

pub mod arch;
pub mod bus;
pub mod config;
pub mod device_manager;
pub mod event_loop;
pub mod exit;
pub mod held_back;
pub mod legacy;
pub mod loader;
pub mod logger;
pub mod machine;
pub mod seccomp;
pub mod terminal;
pub mod timing;
pub mod vcpu;
pub mod virtiofsd;
pub mod vm;
