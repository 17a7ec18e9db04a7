//! Device models for vmm. Nothing here knows about KVM: devices see guest memory through
//! `vm-memory`, are driven through plain method calls, and signal the guest through small traits,
//! so each one is testable without a VM.
pub mod zoned;
