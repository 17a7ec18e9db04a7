//! The guest physical memory map: where the VMM puts boot structures, the kernel, and devices.
//!
//! ```text
//! 0x0000_0500  GDT                       0x0000_7000  boot_params (zero page)
//! 0x0000_0520  IDT (empty)               0x0000_8ff0  boot stack top
//! 0x0000_6000  PVH start_info + memmap   0x0000_9000  PML4, PDPT (0xa000), PD (0xb000)
//! 0x0002_0000  kernel command line       0x0009_fc00  EBDA .. 1 MiB: reserved
//! 0x000e_0000  ACPI RSDP and tables      0x000f_0000  MP table
//! 0x0010_0000  kernel
//! 0xc000_0000 .. 4 GiB: MMIO hole (virtio-mmio windows, IOAPIC, LAPIC); RAM beyond it moves above 4 GiB
//! ```

/// Start of the GDT.
pub const GDT_START: u64 = 0x500;
/// Start of the (empty) IDT.
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, followed by its memory map.
pub const PVH_INFO_START: u64 = 0x6000;
/// Linux `boot_params`, the "zero page".
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 table; the PDPT and page directory follow it.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages identity-mapping the first GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line the VMM will write (Linux x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; from here to 1 MiB is not RAM for the guest.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI RSDP, followed by the other ACPI tables up to `ACPI_TABLES_END`. Linux scans
/// 0xe0000..0x100000 for the RSDP when the boot protocol does not hand it over.
pub const ACPI_RSDP_START: u64 = 0xe0000;
/// End of the room for ACPI tables: the MP table follows.
pub const ACPI_TABLES_END: u64 = MPTABLE_START;
/// MP floating pointer and configuration table (scanned by Linux in 0xf0000..0x100000).
pub const MPTABLE_START: u64 = 0xf0000;
/// Where the kernel is loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the hole below 4 GiB where devices live.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window; each device gets `VIRTIO_MMIO_WINDOW_SIZE` bytes.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_WINDOW_SIZE: u64 = 0x1000;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// Identity map page and TSS KVM needs on Intel, inside the MMIO hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Identity map page used by KVM on Intel (just below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Legacy serial port (COM1) base and IRQ.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// COM1 interrupt line.
pub const SERIAL_IRQ: u32 = 4;
/// ACPI sleep control/status and reset register (one byte), named by the FADT. 0x600 is free of
/// every legacy PC device the guest might probe.
pub const ACPI_POWER_PORT: u16 = 0x600;
/// First IRQ handed to virtio-mmio devices.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last usable IOAPIC pin.
pub const IRQ_MAX: u32 = 23;

/// Guest RAM regions for `mem_size` bytes, leaving out the MMIO hole.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_below_the_hole_is_one_region() {
        assert_eq!(ram_regions(512 << 20), vec![(0, 512 << 20)]);
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
    }

    #[test]
    fn ram_beyond_the_hole_moves_above_4g() {
        let regions = ram_regions(4 << 30);
        assert_eq!(regions, vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]);
    }
}
