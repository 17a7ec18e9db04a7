//! Loads a Linux kernel (bzImage or ELF vmlinux), its initrd and command line into guest memory,
//! and writes the boot structures the chosen entry protocol needs (boot_params or PVH start_info),
//! including where the ACPI RSDP is when there is one.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{
    load_cmdline, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability,
};
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion,
};

use crate::arch::layout;

/// "HdrS": the boot protocol header signature at offset 0x202 of a bzImage.
const BZIMAGE_MAGIC: u32 = 0x5372_6448;
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
const E820_RAM: u32 = 1;
const PVH_START_INFO_MAGIC: u32 = 0x336e_c578;
/// boot_params.hdr.type_of_loader for a loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;

/// Errors while loading the kernel and initrd. Each message names the file at fault.
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

/// Top of RAM below 4 GiB, where the initrd goes.
fn low_memory_end(mem: &GuestMemoryMmap) -> u64 {
    (mem.last_addr().raw_value() + 1).min(layout::MMIO_GAP_START)
}

/// The RAM ranges the guest is told about, as (start, size): low memory below the EBDA, then every
/// RAM region with the first MiB (EBDA, BIOS area, MP table) left out.
fn e820_ram(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    let mut map = vec![(0, layout::EBDA_START)];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(layout::HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push((start, end - start));
        }
    }
    map
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
/// structures are written.
#[derive(Debug, Clone, Copy)]
pub struct LoadedImages {
    entry: BootEntry,
    /// The bzImage's setup header, handed to the kernel in boot_params.
    setup_header: Option<setup_header>,
    /// The end of the kernel: an initrd must start at or above it.
    kernel_end: u64,
    /// Where the initrd is, and its size.
    initrd: Option<(u64, u64)>,
}

impl LoadedImages {
    /// Where the kernel ends in guest memory.
    pub fn kernel_end(&self) -> u64 {
        self.kernel_end
    }

    /// Adds the initrd placed by `place_initrd`, which must not overlap the kernel.
    pub fn with_initrd(self, initrd: &PendingInitrd) -> Result<Self> {
        if initrd.start < self.kernel_end {
            return Err(initrd.too_large());
        }
        Ok(Self {
            initrd: Some((initrd.start, initrd.size)),
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
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    kernel_path: &Path,
    map_file: bool,
) -> Result<LoadedImages> {
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

/// Writes the command line and the boot structures the kernel's entry protocol needs (boot_params
/// or PVH start_info). `rsdp` is the ACPI RSDP's address, if the VMM wrote ACPI tables: handed
/// over in boot_params.acpi_rsdp_addr (boot protocol 2.14+; older kernels ignore it and find the
/// RSDP by scanning 0xe0000..1 MiB) or hvm_start_info.rsdp_paddr.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    images: &LoadedImages,
    cmdline: &str,
    rsdp: Option<u64>,
) -> Result<BootSetup> {
    if cmdline.len() >= layout::CMDLINE_MAX_SIZE {
        return Err(LoaderError::CmdlineTooLong(
            cmdline.len(),
            layout::CMDLINE_MAX_SIZE - 1,
        ));
    }
    let mut cmd = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(LoaderError::Cmdline)?;
    cmd.insert_str(cmdline).map_err(LoaderError::Cmdline)?;
    load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cmd)
        .map_err(|_| LoaderError::BootStructures)?;

    let boot_info = match images.entry {
        BootEntry::Pvh { .. } => {
            write_pvh_start_info(mem, images.initrd, rsdp)?;
            layout::PVH_INFO_START
        }
        BootEntry::Linux64 { .. } => {
            write_boot_params(mem, images.setup_header, cmdline.len(), images.initrd, rsdp)?;
            layout::ZERO_PAGE_START
        }
    };
    Ok(BootSetup {
        entry: images.entry,
        boot_info,
    })
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

/// An initrd with its place in guest memory chosen, not necessarily in it yet: `map` or `load`
/// puts it there. vmm boots the guest first and reads the initrd meanwhile, since the kernel
/// needs it only well after it starts; until it is read, KVM does not map `held_back` (see
/// `held_back`).
#[derive(Debug)]
pub struct PendingInitrd {
    file: File,
    path: PathBuf,
    start: u64,
    size: u64,
    /// The end of the memory it was placed under.
    top: u64,
    /// The end of the RAM region it is in.
    region_end: u64,
}

/// Guest RAM held back from KVM around an initrd still to be read is whole 2 MiB pages where it
/// can be: KVM maps guest RAM in 2 MiB pages only where one memory slot covers the whole page,
/// and in the lab a 2 MiB page split between two slots cost the guest 512 page-fault exits.
const HELD_BACK_ALIGN: u64 = 2 << 20;

impl PendingInitrd {
    /// The guest range KVM must not map until the initrd is read: its pages, widened to 2 MiB
    /// boundaries within its RAM region and above 1 MiB. What vmm writes before the guest runs
    /// must be outside it: the kernel is unless it ends less than 2 MiB below the initrd
    /// (`LoadedImages::kernel_end` tells).
    pub fn held_back(&self) -> Range<u64> {
        let start = (self.start & !(HELD_BACK_ALIGN - 1)).max(layout::HIMEM_START);
        // `place_initrd` put the initrd below `region_end`.
        let end = (self.start + self.size)
            .next_multiple_of(HELD_BACK_ALIGN)
            .min(self.region_end)
            .next_multiple_of(PAGE_SIZE);
        start..end
    }

    /// Reads the initrd into its place in guest memory.
    pub fn load(self, mem: &GuestMemoryMmap) -> Result<()> {
        let mut file = &self.file;
        mem.read_exact_volatile_from(GuestAddress(self.start), &mut file, self.size as usize)
            .map_err(|e| LoaderError::ReadInitrd(self.path.clone(), e))
    }

    /// Maps the initrd from its file (`map_file_into_guest`); false when it could not be, and
    /// it is to be read instead.
    pub fn map(&self, mem: &GuestMemoryMmap) -> Result<bool> {
        mapped_from_file(
            mem,
            GuestAddress(self.start),
            &self.file,
            0,
            self.size,
            &self.path,
        )
    }

    fn too_large(&self) -> LoaderError {
        LoaderError::InitrdTooLarge(
            self.path.clone(),
            self.size.div_ceil(1 << 20),
            self.top >> 20,
        )
    }
}

/// Chooses where the initrd goes: as high in low memory as `addr_limit` (`KernelInfo`) allows,
/// page aligned; `LoadedImages::with_initrd` checks that it is above the kernel.
pub fn place_initrd(mem: &GuestMemoryMmap, path: &Path, addr_limit: u64) -> Result<PendingInitrd> {
    let file = File::open(path).map_err(|e| LoaderError::OpenInitrd(path.into(), e))?;
    let size = file
        .metadata()
        .map_err(|e| LoaderError::OpenInitrd(path.into(), e))?
        .len();
    let ram_end = low_memory_end(mem);
    let top = ram_end.min(addr_limit);
    let mut initrd = PendingInitrd {
        file,
        path: path.into(),
        start: 0,
        size,
        top,
        region_end: ram_end,
    };
    initrd.start = match top.checked_sub(size) {
        Some(start) if start & !0xfff >= layout::HIMEM_START => start & !0xfff,
        _ => return Err(initrd.too_large()),
    };
    Ok(initrd)
}

/// `map_file_into_guest`, reporting whether it mapped the file: false means nothing changed and
/// the caller reads the file instead (a pipe, an unaligned range, a file system without mmap).
fn mapped_from_file(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    file: &File,
    file_offset: u64,
    len: u64,
    path: &Path,
) -> Result<bool> {
    match map_file_into_guest(mem, addr, file, file_offset, len) {
        Ok(()) => Ok(true),
        Err(MapError::NotMapped(e)) => {
            log::debug!("{} is read, not mapped: {e}", path.display());
            Ok(false)
        }
        Err(MapError::MemoryLost(e)) => Err(LoaderError::GuestMemoryLost(e)),
    }
}

/// Host page size on x86_64; guest RAM regions are mapped in whole pages of it.
const PAGE_SIZE: u64 = 4096;

/// Why a file could not be mapped into guest memory.
#[derive(Debug)]
enum MapError {
    /// Nothing changed; the caller may read the file into guest memory instead.
    NotMapped(std::io::Error),
    /// The mapping failed after the kernel had let go of the guest pages there, and fresh memory
    /// could not be put back: that part of guest memory is gone.
    MemoryLost(std::io::Error),
}

/// Makes the `len` bytes of guest memory at `addr` show `file` from `file_offset`, copy-on-write,
/// by mapping the file privately over that part of the guest RAM mapping. Nothing is copied now:
/// the guest faults in each page it touches straight from the page cache, instead of vmm
/// allocating, zeroing and filling every page up front. The guest only reads what vmm maps this
/// way (an initrd is unpacked and freed; a bzImage's decompressor copies itself away and
/// decompresses the kernel elsewhere), so most of it never needs private pages; guest writes,
/// such as to memory the guest reuses later, get private copies and never reach the file. Guest
/// RAM stays one host mapping, so devices still see it contiguous. Pages the guest has not
/// written show the file as it is when touched, so the file must not be rewritten in place while
/// the guest boots (the guest builders write a new file and rename it). `addr` and `file_offset` must be page aligned and the range,
/// rounded up to whole pages, inside one RAM region that nothing else has been written to; the
/// bytes past the end of the file in its last page read as zero.
fn map_file_into_guest(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    file: &File,
    file_offset: u64,
    len: u64,
) -> std::result::Result<(), MapError> {
    use std::io::{Error, ErrorKind};
    use std::os::fd::AsRawFd;

    let refuse = |why: &str| MapError::NotMapped(Error::new(ErrorKind::InvalidInput, why));
    let is_file = file
        .metadata()
        .map_err(MapError::NotMapped)?
        .file_type()
        .is_file();
    if !is_file {
        return Err(refuse("not a regular file"));
    }
    if len == 0
        || !addr.raw_value().is_multiple_of(PAGE_SIZE)
        || !file_offset.is_multiple_of(PAGE_SIZE)
    {
        return Err(refuse("not a page-aligned, non-empty range"));
    }
    let file_offset = libc::off_t::try_from(file_offset).map_err(|_| refuse("offset too large"))?;
    let map_len = len.next_multiple_of(PAGE_SIZE);
    let region = mem
        .find_region(addr)
        .ok_or_else(|| refuse("outside guest RAM"))?;
    let offset = addr.raw_value() - region.start_addr().raw_value();
    if offset
        .checked_add(map_len)
        .is_none_or(|end| end > region.len())
    {
        return Err(refuse("not inside one guest RAM region"));
    }
    let host = region
        .get_host_address(vm_memory::MemoryRegionAddress(offset))
        .map_err(|_| refuse("outside guest RAM"))?;
    if !(host as u64).is_multiple_of(PAGE_SIZE) {
        return Err(refuse("guest RAM is not page aligned"));
    }
    let map_fixed = |flags: libc::c_int, fd: libc::c_int, offset: libc::off_t| {
        // SAFETY: [host, host + map_len) lies inside the mapping of one guest RAM region (checked
        // above), which `mem` owns and unmaps as a whole when dropped, so MAP_FIXED replaces
        // pages of that mapping only, and the range stays readable and writable as before.
        // Guest memory is accessed through volatile slices and raw pointers only, never through
        // Rust references that could see its contents change underneath them.
        let mapped = unsafe {
            libc::mmap(
                host.cast(),
                map_len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | flags,
                fd,
                offset,
            )
        };
        if mapped == libc::MAP_FAILED {
            Err(Error::last_os_error())
        } else {
            Ok(())
        }
    };
    map_fixed(0, file.as_raw_fd(), file_offset).map_err(|e| {
        // A MAP_FIXED that fails late may already have unmapped the old pages: put fresh
        // anonymous memory back, as vm-memory maps guest RAM, so the caller can read instead.
        match map_fixed(libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, 0) {
            Ok(()) => MapError::NotMapped(e),
            Err(lost) => MapError::MemoryLost(lost),
        }
    })
}

fn write_boot_params(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<()> {
    let mut params = boot_params {
        acpi_rsdp_addr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    if let Some(hdr) = header {
        params.hdr = hdr;
    } else {
        // An ELF vmlinux carries no setup header: describe a minimal one.
        params.hdr.header = BZIMAGE_MAGIC;
        params.hdr.boot_flag = 0xaa55;
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((start, size)) = initrd {
        params.hdr.ramdisk_image = start as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_ram(mem);
    for (slot, (addr, size)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
        .map_err(|_| LoaderError::BootStructures)
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<()> {
    let map = e820_ram(mem);
    let info_size = std::mem::size_of::<hvm_start_info>() as u64;
    let memmap_addr = layout::PVH_INFO_START + info_size;
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    let modlist_addr = memmap_addr + entry_size * map.len() as u64;
    let mut info = hvm_start_info {
        magic: PVH_START_INFO_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        memmap_paddr: memmap_addr,
        memmap_entries: map.len() as u32,
        rsdp_paddr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    for (i, (addr, size)) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: E820_RAM,
            reserved: 0,
        };
        mem.write_obj(entry, GuestAddress(memmap_addr + entry_size * i as u64))
            .map_err(|_| LoaderError::BootStructures)?;
    }
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(modlist_addr))
            .map_err(|_| LoaderError::BootStructures)?;
        info.nr_modules = 1;
        info.modlist_paddr = modlist_addr;
    }
    mem.write_obj(info, GuestAddress(layout::PVH_INFO_START))
        .map_err(|_| LoaderError::BootStructures)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;
    use std::os::unix::fs::FileExt;
    use vmm_sys_util::tempfile::TempFile;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    /// A file of `len` bytes, none of them zero, so a zero in guest memory is never file data.
    fn patterned_file(len: usize) -> TempFile {
        let file = TempFile::new().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        file.as_file().write_all(&data).unwrap();
        file
    }

    fn guest_bytes(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
        buf
    }

    #[test]
    fn a_mapped_file_reads_back_in_guest_memory_with_a_zero_tail_and_its_neighbours_intact() {
        let mem = memory();
        let at = 8 << 20;
        let len = 3 * PAGE_SIZE as usize + 100;
        // Data on the pages around the mapping must survive it.
        mem.write_slice(&[0xaa; 16], GuestAddress(at - 16)).unwrap();
        mem.write_slice(&[0xbb; 16], GuestAddress(at + 4 * PAGE_SIZE))
            .unwrap();
        let file = patterned_file(len);
        map_file_into_guest(&mem, GuestAddress(at), file.as_file(), 0, len as u64).unwrap();

        let mut expected = vec![0u8; len];
        file.as_file().read_exact_at(&mut expected, 0).unwrap();
        assert_eq!(guest_bytes(&mem, at, len), expected);
        let tail = 4 * PAGE_SIZE as usize - len;
        assert_eq!(guest_bytes(&mem, at + len as u64, tail), vec![0; tail]);
        assert_eq!(guest_bytes(&mem, at - 16, 16), vec![0xaa; 16]);
        assert_eq!(guest_bytes(&mem, at + 4 * PAGE_SIZE, 16), vec![0xbb; 16]);
    }

    #[test]
    fn guest_writes_to_a_mapped_file_stay_private() {
        let mem = memory();
        let at = 4 << 20;
        let file = patterned_file(PAGE_SIZE as usize);
        map_file_into_guest(&mem, GuestAddress(at), file.as_file(), 0, PAGE_SIZE).unwrap();
        mem.write_slice(&[0; 64], GuestAddress(at)).unwrap();

        assert_eq!(guest_bytes(&mem, at, 64), vec![0; 64]);
        let mut on_disk = [0u8; 64];
        file.as_file().read_exact_at(&mut on_disk, 0).unwrap();
        assert!(on_disk.iter().all(|&b| b != 0), "the file was modified");
    }

    #[test]
    fn a_file_is_not_mapped_at_an_unaligned_address_or_past_guest_ram() {
        let mem = memory();
        let file = patterned_file(100);
        for (at, len) in [
            (0x1001, 100),
            ((16 << 20) - PAGE_SIZE, PAGE_SIZE + 1),
            (16 << 20, 100),
        ] {
            let result = map_file_into_guest(&mem, GuestAddress(at), file.as_file(), 0, len);
            assert!(
                matches!(result, Err(MapError::NotMapped(_))),
                "{at:#x}+{len}"
            );
        }
        // The refusals left guest memory alone.
        assert_eq!(guest_bytes(&mem, (16 << 20) - PAGE_SIZE, 8), vec![0; 8]);
    }

    #[test]
    fn a_pipe_is_not_mapped() {
        let mem = memory();
        let dir = TempFile::new().unwrap();
        let fifo = dir.as_path().with_extension("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c_path is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::write(fifo, [7u8; 10]).unwrap())
        };
        let reader = File::open(&fifo).unwrap();
        writer.join().unwrap();
        let result = map_file_into_guest(&mem, GuestAddress(1 << 20), &reader, 0, 10);
        assert!(matches!(result, Err(MapError::NotMapped(_))));
        std::fs::remove_file(&fifo).unwrap();
    }

    #[test]
    fn the_initrd_lands_page_aligned_at_the_top_of_memory_with_its_contents() {
        let len = 5 * PAGE_SIZE as usize + 1;
        let file = patterned_file(len);
        let mut expected = vec![0u8; len];
        file.as_file().read_exact_at(&mut expected, 0).unwrap();
        for map in [true, false] {
            let mem = memory();
            let initrd = place_initrd(&mem, file.as_path(), u64::MAX).unwrap();
            let start = (16 << 20) - 6 * PAGE_SIZE;
            assert_eq!((initrd.start, initrd.size), (start, len as u64));
            assert_eq!(initrd.held_back(), 14 << 20..16 << 20);
            if !(map && initrd.map(&mem).unwrap()) {
                initrd.load(&mem).unwrap();
            }
            assert_eq!(guest_bytes(&mem, start, len), expected, "map {map}");
        }
    }

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
    fn held_back_ram_is_the_initrd_widened_to_2_mib_inside_its_region() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (16 << 20) + 0x3000)]).unwrap();
        let file = patterned_file(5 * PAGE_SIZE as usize + 1);
        // At the top of a region that does not end on 2 MiB: up to the region's end.
        let initrd = place_initrd(&mem, file.as_path(), u64::MAX).unwrap();
        assert_eq!(initrd.held_back(), 14 << 20..(16 << 20) + 0x3000);
        // Below a limit inside the region: up to the next 2 MiB boundary.
        let initrd = place_initrd(&mem, file.as_path(), (9 << 20) + 5).unwrap();
        assert_eq!(initrd.held_back(), 8 << 20..10 << 20);
        // Never below 1 MiB.
        let initrd = place_initrd(&mem, file.as_path(), (1 << 20) + 0x7000).unwrap();
        assert_eq!(initrd.held_back(), 1 << 20..2 << 20);
    }

    #[test]
    fn the_kernel_header_limits_where_the_initrd_goes() {
        let mut kernel = std::fs::read(fake_bzimage(7, 0x10_0000, &[1; 100]).as_path()).unwrap();
        let file = TempFile::new().unwrap();
        kernel[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        file.as_file().write_all(&kernel).unwrap();
        assert_eq!(check_kernel(file.as_path()).unwrap().initrd_limit, 1 << 31);
    }

    #[test]
    fn boot_params_carry_the_rsdp_address() {
        let mem = memory();
        write_boot_params(&mem, None, 10, None, Some(layout::ACPI_RSDP_START)).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        let rsdp = params.acpi_rsdp_addr;
        assert_eq!(rsdp, layout::ACPI_RSDP_START);
        write_boot_params(&mem, None, 10, None, None).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        let rsdp = params.acpi_rsdp_addr;
        assert_eq!(rsdp, 0);
    }

    #[test]
    fn pvh_start_info_carries_the_rsdp_address() {
        let mem = memory();
        write_pvh_start_info(&mem, None, Some(layout::ACPI_RSDP_START)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, PVH_START_INFO_MAGIC);
        assert_eq!(info.rsdp_paddr, layout::ACPI_RSDP_START);
    }

    #[test]
    fn boot_info_follows_the_entry_protocol_and_carries_the_command_line() {
        let mem = memory();
        let linux = LoadedImages {
            entry: BootEntry::Linux64 { entry: 0x100200 },
            setup_header: None,
            kernel_end: 2 << 20,
            initrd: Some((8 << 20, 1234)),
        };
        let boot = write_boot_info(&mem, &linux, "console=ttyS0", None).unwrap();
        assert_eq!(boot.entry, linux.entry);
        assert_eq!(boot.boot_info, layout::ZERO_PAGE_START);
        let params: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        let (image, size) = (params.hdr.ramdisk_image, params.hdr.ramdisk_size);
        assert_eq!((image, size), (8 << 20, 1234));
        assert_eq!(
            guest_bytes(&mem, layout::CMDLINE_START, 14),
            b"console=ttyS0\0"
        );

        let pvh = LoadedImages {
            entry: BootEntry::Pvh { entry: 0x1000000 },
            ..linux
        };
        let boot = write_boot_info(&mem, &pvh, "quiet", None).unwrap();
        assert_eq!(boot.boot_info, layout::PVH_INFO_START);
        let info: hvm_start_info = mem.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (8 << 20, 1234));

        let too_long = "x".repeat(layout::CMDLINE_MAX_SIZE);
        assert!(matches!(
            write_boot_info(&mem, &linux, &too_long, None),
            Err(LoaderError::CmdlineTooLong(..))
        ));
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
