//! The kernel image: what kind it is and whether vmm can boot it (a 64-bit bzImage of boot
//! protocol 2.12+, or an ELF vmlinux), read from its first bytes before anything else is set up
//! (`check_kernel`); then loading it into guest memory (`load_kernel`, on a thread of its own:
//! `KernelLoadThread`), which decides how the vCPU enters it. `LoadedImages` carries the result,
//! with the initrd once placed, to `boot_info`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::initrd::PendingInitrd;
use super::mapping::mapped_from_file;
use super::{BootEntry, LoaderError, Result};
use crate::arch::layout;

/// "HdrS": the boot protocol header signature at offset 0x202 of a bzImage (`boot_info` writes it
/// into the minimal header it makes for an ELF vmlinux).
pub(super) const BZIMAGE_MAGIC: u32 = 0x5372_6448;
/// Where the setup header starts in a bzImage.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Oldest boot protocol this VMM boots: 2.12 added the 64-bit entry flags in xloadflags.
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// xloadflags bit: the kernel has a 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// loadflags bit: the protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 1 << 0;
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ELFCLASS64: u8 = 2;
/// ELF e_type of a statically linked executable, which a vmlinux is (programs are ET_DYN).
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;

/// What kind of image a kernel file is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelFormat {
    BzImage,
    Elf,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Identifies and validates a kernel image from its first 1 KiB.
fn probe_kernel(path: &Path, head: &[u8]) -> Result<KernelFormat> {
    if head.len() >= 20 && head[..4] == ELF_MAGIC {
        if head[4] != ELFCLASS64 || le16(head, 18) != EM_X86_64 {
            return Err(LoaderError::Not64Bit(path.to_path_buf()));
        }
        if le16(head, 16) != ET_EXEC {
            return Err(LoaderError::ElfNotKernel(path.to_path_buf()));
        }
        return Ok(KernelFormat::Elf);
    }
    if head.len() >= 0x238 && le32(head, 0x202) == BZIMAGE_MAGIC {
        let version = le16(head, 0x206);
        if version < MIN_BOOT_PROTOCOL {
            return Err(LoaderError::OldBootProtocol(
                path.to_path_buf(),
                version >> 8,
                version & 0xff,
            ));
        }
        let loadflags = head[0x211];
        let xloadflags = le16(head, 0x236);
        if xloadflags & XLF_KERNEL_64 == 0 || loadflags & LOADED_HIGH == 0 {
            return Err(LoaderError::Not64Bit(path.to_path_buf()));
        }
        return Ok(KernelFormat::BzImage);
    }
    Err(LoaderError::NotAKernel(path.to_path_buf()))
}

/// What `check_kernel` learns from a kernel's first bytes.
#[derive(Debug, Clone, Copy)]
pub struct KernelInfo {
    /// Where an initrd must end: 1 past the highest address the kernel takes it at.
    pub initrd_limit: u64,
}

/// Checks that `path` is a kernel vmm can boot, without loading it: done before any device is
/// created, so that a wrong --kernel fails before, say, a new disk image is made.
pub fn check_kernel(path: &Path) -> Result<KernelInfo> {
    let mut kernel = File::open(path).map_err(|e| LoaderError::OpenKernel(path.into(), e))?;
    let mut head = vec![0u8; 1024];
    let n =
        read_up_to(&mut kernel, &mut head).map_err(|e| LoaderError::ReadKernel(path.into(), e))?;
    head.truncate(n);
    let below_4g = u64::from(u32::MAX) + 1;
    let initrd_limit = match probe_kernel(path, &head)? {
        // setup_header.initrd_addr_max (0 in headers from before the field).
        KernelFormat::BzImage => match le32(&head, 0x22c) {
            0 => below_4g,
            max => u64::from(max) + 1,
        },
        KernelFormat::Elf => below_4g,
    };
    Ok(KernelInfo { initrd_limit })
}

/// A kernel placed in guest memory (and later its initrd, `with_initrd`), before the boot
/// structures are written; `boot_info` reads its fields to write them.
#[derive(Debug, Clone, Copy)]
pub struct LoadedImages {
    pub(super) entry: BootEntry,
    /// The bzImage's setup header, handed to the kernel in boot_params.
    pub(super) setup_header: Option<setup_header>,
    /// The end of the kernel: an initrd must start at or above it.
    pub(super) kernel_end: u64,
    /// Where the initrd is, and its size.
    pub(super) initrd: Option<(u64, u64)>,
}

impl LoadedImages {
    /// Where the kernel ends in guest memory.
    pub fn kernel_end(&self) -> u64 {
        self.kernel_end
    }

    /// Adds the initrd placed by `place_initrd`, which must not overlap the kernel.
    pub fn with_initrd(self, initrd: &PendingInitrd) -> Result<Self> {
        Ok(Self {
            initrd: Some(initrd.placed_above(self.kernel_end)?),
            ..self
        })
    }
}

/// Loads the kernel into guest memory: at 1 MiB, or where its ELF headers say; the initrd is
/// placed apart (`place_initrd`) and the boot structures come later (`write_boot_info`), once
/// the devices they describe exist. With `map_file`, a bzImage is mapped from its file where it
/// can be (`map_file_into_guest`) instead of read: no copy before the guest starts, but the guest
/// then faults each page in from the page cache, 4 KiB at a time, which measured slower to
/// userspace in the lab than the copy.
fn load_kernel(mem: &GuestMemoryMmap, kernel_path: &Path, map_file: bool) -> Result<LoadedImages> {
    let mut kernel =
        File::open(kernel_path).map_err(|e| LoaderError::OpenKernel(kernel_path.into(), e))?;
    let mut head = vec![0u8; 1024];
    let n = read_up_to(&mut kernel, &mut head)
        .map_err(|e| LoaderError::ReadKernel(kernel_path.into(), e))?;
    head.truncate(n);
    let format = probe_kernel(kernel_path, &head)?;
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(|e| LoaderError::ReadKernel(kernel_path.into(), e))?;

    let loaded = match format {
        KernelFormat::BzImage => load_bzimage(mem, kernel_path, &kernel, &head, map_file)?,
        KernelFormat::Elf => Elf::load(
            mem,
            None,
            &mut kernel,
            Some(GuestAddress(layout::HIMEM_START)),
        )
        .map_err(|e| match e {
            linux_loader::loader::Error::Elf(linux_loader::loader::elf::Error::ReadKernelImage) => {
                LoaderError::KernelTooLarge(kernel_path.into())
            }
            e => LoaderError::Load(kernel_path.into(), e),
        })?,
    };

    let entry = match (format, loaded.pvh_boot_cap) {
        (KernelFormat::Elf, PvhBootCapability::PvhEntryPresent(addr)) => BootEntry::Pvh {
            entry: addr.raw_value(),
        },
        // The 64-bit entry point of a bzImage is 0x200 past the start of its protected-mode
        // code; an ELF vmlinux without a PVH note is entered at its ELF entry, startup_64.
        (KernelFormat::BzImage, _) => BootEntry::Linux64 {
            entry: loaded.kernel_load.raw_value() + 0x200,
        },
        (KernelFormat::Elf, _) => BootEntry::Linux64 {
            entry: loaded.kernel_load.raw_value(),
        },
    };
    Ok(LoadedImages {
        entry,
        setup_header: loaded.setup_header,
        kernel_end: loaded.kernel_end,
        initrd: None,
    })
}

/// Loads a bzImage's protected-mode part (the decompressor and the compressed kernel) at its
/// `code32_start`, as the boot protocol asks. With `map_file`, mapped from the file when it starts
/// on a page boundary there (`map_file_into_guest`: the decompressor normally only reads it,
/// copying itself above and decompressing the kernel elsewhere); read otherwise. `head` is the
/// file's first 1 KiB, already checked by `probe_kernel`.
fn load_bzimage(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &File,
    head: &[u8],
    map_file: bool,
) -> Result<KernelLoaderResult> {
    let mut header = setup_header::default();
    let header_bytes = header.as_mut_slice();
    let header_len = header_bytes.len();
    let in_file = head
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + header_len)
        .ok_or_else(|| LoaderError::NotAKernel(path.into()))?;
    header_bytes.copy_from_slice(in_file);
    let setup_len = match header.setup_sects {
        // The boot protocol's "0 means 4", from before the field was filled in.
        0 => 5 * 512,
        sectors => (u64::from(sectors) + 1) * 512,
    };
    let file_len = file
        .metadata()
        .map_err(|e| LoaderError::ReadKernel(path.into(), e))?
        .len();
    let size = file_len
        .checked_sub(setup_len)
        .filter(|&size| size > 0)
        .ok_or_else(|| LoaderError::NotAKernel(path.into()))?;
    let load = u64::from(header.code32_start);
    if load < layout::HIMEM_START {
        return Err(LoaderError::Load(
            path.into(),
            linux_loader::loader::Error::InvalidKernelStartAddress,
        ));
    }
    if !(map_file && mapped_from_file(mem, GuestAddress(load), file, setup_len, size, path)?) {
        let mut file = file;
        file.seek(SeekFrom::Start(setup_len))
            .map_err(|e| LoaderError::ReadKernel(path.into(), e))?;
        mem.read_exact_volatile_from(GuestAddress(load), &mut file, size as usize)
            .map_err(|_| LoaderError::KernelTooLarge(path.into()))?;
    }
    Ok(KernelLoaderResult {
        kernel_load: GuestAddress(load),
        kernel_end: load + size,
        setup_header: Some(header),
        ..Default::default()
    })
}

/// `load_kernel` on a thread of its own: loading needs only guest memory, so copying the kernel
/// runs while the main thread sets up the VM in KVM.
pub struct KernelLoadThread(JoinHandle<Result<LoadedImages>>);

impl KernelLoadThread {
    /// Starts loading `kernel` into `mem` (a handle sharing the same memory).
    pub fn spawn(mem: GuestMemoryMmap, kernel: PathBuf, map_file: bool) -> std::io::Result<Self> {
        thread::Builder::new()
            .name("loader".into())
            .spawn(move || load_kernel(&mem, &kernel, map_file))
            .map(Self)
    }

    /// Waits for the kernel to be in guest memory.
    pub fn join(self) -> Result<LoadedImages> {
        self.0.join().map_err(|_| LoaderError::LoaderPanicked)?
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;
    use vmm_sys_util::tempfile::TempFile;

    use crate::boot::initrd::place_initrd;
    use crate::boot::mapping::PAGE_SIZE;
    use crate::boot::testing::{guest_bytes, memory, patterned_file};

    #[test]
    fn an_initrd_over_the_kernel_does_not_fit() {
        let mem = memory();
        let kernel = fake_bzimage(7, 0x10_0000, &vec![1; 13 << 20]);
        let images = load_kernel(&mem, kernel.as_path(), false).unwrap();
        let small = patterned_file(2 << 20);
        let initrd = place_initrd(&mem, small.as_path(), u64::MAX).unwrap();
        assert_eq!(
            images.with_initrd(&initrd).unwrap().initrd,
            Some(((14 << 20), 2 << 20))
        );
        let large = patterned_file((2 << 20) + 1);
        let initrd = place_initrd(&mem, large.as_path(), u64::MAX).unwrap();
        assert!(matches!(
            images.with_initrd(&initrd),
            Err(LoaderError::InitrdTooLarge(_, 3, 16))
        ));
        let huge = patterned_file(16 << 20);
        assert!(matches!(
            place_initrd(&mem, huge.as_path(), u64::MAX),
            Err(LoaderError::InitrdTooLarge(_, 16, 16))
        ));
    }

    #[test]
    fn the_kernel_header_limits_where_the_initrd_goes() {
        let mut kernel = std::fs::read(fake_bzimage(7, 0x10_0000, &[1; 100]).as_path()).unwrap();
        let file = TempFile::new().unwrap();
        kernel[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        file.as_file().write_all(&kernel).unwrap();
        assert_eq!(check_kernel(file.as_path()).unwrap().initrd_limit, 1 << 31);
    }

    /// A file that passes for a 64-bit bzImage: `setup_sects` sectors of real-mode setup after
    /// the boot sector, loaded at `code32_start`, then `payload`.
    fn fake_bzimage(setup_sects: u8, code32_start: u32, payload: &[u8]) -> TempFile {
        let mut image = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        image[0x1f1] = setup_sects;
        image[0x202..0x206].copy_from_slice(&BZIMAGE_MAGIC.to_le_bytes());
        image[0x206..0x208].copy_from_slice(&MIN_BOOT_PROTOCOL.to_le_bytes());
        image[0x211] = LOADED_HIGH;
        image[0x214..0x218].copy_from_slice(&code32_start.to_le_bytes());
        image[0x236..0x238].copy_from_slice(&XLF_KERNEL_64.to_le_bytes());
        image.extend_from_slice(payload);
        let file = TempFile::new().unwrap();
        file.as_file().write_all(&image).unwrap();
        file
    }

    #[test]
    fn a_bzimage_lands_at_code32_start_whether_mapped_or_read() {
        let payload: Vec<u8> = (0..3 * PAGE_SIZE as usize + 7)
            .map(|i| (i % 253) as u8 + 1)
            .collect();
        // 7 setup sectors put the payload on a page boundary in the file (mapped when asked);
        // 2 do not (always read).
        for (setup_sects, map) in [(7, true), (7, false), (2, true)] {
            let mem = memory();
            let kernel = fake_bzimage(setup_sects, 0x10_0000, &payload);
            let images = load_kernel(&mem, kernel.as_path(), map).unwrap();
            assert_eq!(
                images.entry,
                BootEntry::Linux64 { entry: 0x10_0200 },
                "setup_sects {setup_sects}"
            );
            assert_eq!(
                guest_bytes(&mem, 0x10_0000, payload.len()),
                payload,
                "setup_sects {setup_sects}"
            );
            let header = images.setup_header.unwrap();
            assert_eq!({ header.setup_sects }, setup_sects);
        }
    }

    #[test]
    fn a_bzimage_below_1_mib_or_without_a_payload_is_refused() {
        let mem = memory();
        let low = fake_bzimage(7, 0x8_0000, &[1; 100]);
        assert!(matches!(
            load_kernel(&mem, low.as_path(), true),
            Err(LoaderError::Load(..))
        ));
        let empty = fake_bzimage(7, 0x10_0000, &[]);
        assert!(matches!(
            load_kernel(&mem, empty.as_path(), true),
            Err(LoaderError::NotAKernel(_))
        ));
    }

    #[test]
    fn a_bzimage_larger_than_guest_memory_is_too_large() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let kernel = fake_bzimage(7, 0x10_0000, &vec![1; 2 << 20]);
        assert!(matches!(
            load_kernel(&mem, kernel.as_path(), true),
            Err(LoaderError::KernelTooLarge(_))
        ));
    }
}
