//! x86_64 specifics: the memory map, initial vCPU state, CPUID, and the MP table that describes
//! the vCPUs and interrupt routing to a guest without ACPI.

pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
