//! Getting the guest's software into its memory, one job per module: the kernel image, checked
//! and loaded (`kernel`); the initrd, placed and then read or mapped (`initrd`); a file's pages
//! mapped over guest RAM instead of copied, for either of them (`mapping`); the command line and
//! the boot structures the kernel's entry protocol reads (`boot_info`); and the guest RAM held out
//! of the VM while the initrd is still being read as the guest starts (`held_back`). This module
//! owns what they share: the error type, and how the boot vCPU enters the kernel. The x86
//! structures they point at live in `arch`.

pub mod boot_info;
pub mod held_back;
pub mod initrd;
pub mod kernel;
mod mapping;

use std::path::PathBuf;

/// Errors while getting the kernel, initrd and boot structures into guest memory. Each message
/// names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot open kernel {0}: {1}")]
    OpenKernel(PathBuf, #[source] std::io::Error),
    #[error("cannot read kernel {0}: {1}")]
    ReadKernel(PathBuf, #[source] std::io::Error),
    #[error("kernel {0} is not a Linux kernel: neither a bzImage nor an ELF vmlinux")]
    NotAKernel(PathBuf),
    #[error("kernel {0} is an ELF file but not a kernel: a vmlinux is a static ELF executable")]
    ElfNotKernel(PathBuf),
    #[error("kernel {0} uses boot protocol {1}.{2}; vmm needs 2.12 or newer")]
    OldBootProtocol(PathBuf, u16, u16),
    #[error("kernel {0} is not a 64-bit x86 kernel")]
    Not64Bit(PathBuf),
    #[error("kernel {0} could not be loaded ({1})")]
    Load(PathBuf, #[source] linux_loader::loader::Error),
    #[error("kernel {0} does not fit in guest memory")]
    KernelTooLarge(PathBuf),
    #[error("cannot open initrd {0}: {1}")]
    OpenInitrd(PathBuf, #[source] std::io::Error),
    #[error("initrd {0} ({1} MiB) does not fit in guest memory below {2} MiB; give the guest more --memory")]
    InitrdTooLarge(PathBuf, u64, u64),
    #[error("guest memory under the initrd was lost while mapping it: {0}")]
    GuestMemoryLost(#[source] std::io::Error),
    #[error("cannot read initrd {0}: {1}")]
    ReadInitrd(PathBuf, #[source] vm_memory::GuestMemoryError),
    #[error("the kernel loader thread panicked")]
    LoaderPanicked,
    #[error("kernel command line is too long ({0} bytes, at most {1})")]
    CmdlineTooLong(usize, usize),
    #[error("kernel command line is invalid: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write boot structures into guest memory")]
    BootStructures,
}

type Result<T> = std::result::Result<T, LoaderError>;

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// 64-bit Linux boot protocol: long mode, RSI = boot_params.
    Linux64 { entry: u64 },
    /// PVH: 32-bit protected mode without paging, EBX = hvm_start_info.
    Pvh { entry: u64 },
}

/// Where the boot vCPU starts and what it is handed.
#[derive(Debug, Clone, Copy)]
pub struct BootSetup {
    pub entry: BootEntry,
    /// Address of boot_params (Linux64) or hvm_start_info (PVH).
    pub boot_info: u64,
}

/// Helpers for the boot modules' tests.
#[cfg(test)]
mod testing {
    use std::io::Write;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::tempfile::TempFile;

    pub(super) fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    /// A file of `len` bytes, none of them zero, so a zero in guest memory is never file data.
    pub(super) fn patterned_file(len: usize) -> TempFile {
        let file = TempFile::new().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        file.as_file().write_all(&data).unwrap();
        file
    }

    pub(super) fn guest_bytes(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
        buf
    }
}
