//! vmm's side of the host, beside the VM: the main thread's event loop (`event_loop`), the
//! terminal and signals (`terminal`), the seccomp filters on every thread (`seccomp`), logging
//! (`logger`) and boot-time milestones (`timing`).

pub mod event_loop;
pub mod logger;
pub mod seccomp;
pub mod terminal;
pub mod timing;
