//! vmm: a minimal KVM virtual machine monitor for zoned-storage kernel work.
//!
//! `machine::run` turns a `config::VmConfig` (what the command line asked for) into a running VM:
//!
//! - `kvm`: the KVM VM and guest memory (`kvm::vm`), the vCPU run loop (`kvm::vcpu`), the buses
//!   its exits are dispatched on (`kvm::bus`), and how the VM ends (`kvm::exit`).
//! - `arch`: x86 boot state: the memory map, vCPU registers, CPUID, MP table, ACPI tables.
//! - `boot`: the kernel (`boot::kernel`), the initrd (`boot::initrd`), either mapped from its file
//!   rather than copied (`boot::mapping`), and the boot structures (`boot::boot_info`) in guest
//!   memory; the initrd follows while the guest starts (`boot::held_back`).
//! - `device_manager`: virtio devices wired onto the MMIO bus, the legacy devices
//!   (`device_manager::legacy`), virtiofsd processes for shares (`device_manager::virtiofsd`).
//! - `host`: the host side: event loop (console, signals), terminal, seccomp filters on every
//!   thread, logging, boot timing.
//!
//! `image_tool` is `vmm image`, which needs no VM: it creates, lists and checks zoned images.

pub mod arch;
pub mod boot;
pub mod config;
pub mod device_manager;
pub mod host;
pub mod image_tool;
pub mod kvm;
pub mod machine;
