//! x86_64 specifics: the memory map, initial vCPU state, CPUID, the MP table that describes
//! the vCPUs and interrupt routing to a guest without ACPI, and the ACPI tables that describe
//! them and the devices to a guest with ACPI.

pub mod acpi;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
