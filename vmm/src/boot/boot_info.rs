//! What the kernel is handed at its entry: the command line, and the boot structures its entry
//! protocol reads (boot_params for the 64-bit Linux boot protocol, hvm_start_info for PVH), with
//! the guest's RAM map (e820), where the initrd is, and where the ACPI RSDP is when there is one.

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::load_cmdline;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::kernel::{LoadedImages, BZIMAGE_MAGIC};
use super::{BootEntry, BootSetup, LoaderError, Result};
use crate::arch::layout;

const E820_RAM: u32 = 1;
const PVH_START_INFO_MAGIC: u32 = 0x336e_c578;
/// boot_params.hdr.type_of_loader for a loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;

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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::boot::testing::{guest_bytes, memory};

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
}
