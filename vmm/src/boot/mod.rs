//! Getting the guest's software into its memory: the kernel, initrd, command line and boot
//! structures (`loader`), and the guest RAM held out of the VM while the initrd is still being
//! read as the guest starts (`held_back`). The x86 structures they point at live in `arch`.

pub mod held_back;
pub mod loader;
