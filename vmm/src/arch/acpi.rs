//! ACPI tables: how a guest with ACPI finds the vCPUs, the IOAPIC, the virtio-mmio devices, the
//! serial port, and the register through which it powers off and resets. Kernels that find
//! virtio-mmio devices only through ACPI (Debian's, with CONFIG_VIRTIO_MMIO=m and no
//! CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) need these.
//!
//! The platform is hardware-reduced ACPI (no PM timer, SCI, PM1 or GPE blocks, no FACS): the
//! sleep control/status and reset registers are one byte at `layout::ACPI_POWER_PORT`, served by
//! `legacy::AcpiPowerControl`. Everything sits in the BIOS area below the MP table, which the
//! e820 map leaves out of RAM:
//!
//! ```text
//! 0xe0000  RSDP (36 bytes)
//!          XSDT -> FADT, MADT; FADT -> DSDT; each table 16-byte aligned after the previous one
//! 0xf0000  MP table (not ours)
//! ```

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{layout, mptable};
use crate::device_manager::legacy::{ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE};
use crate::device_manager::{MmioSlot, TriggerMode};

/// OEM ID in every table header and the RSDP.
pub const OEM_ID: [u8; 6] = *b"VMM   ";
const OEM_TABLE_ID: [u8; 8] = *b"VMM     ";
const OEM_REVISION: u32 = 1;

/// DSDT revision 2: integers in AML are 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// MADT revision of ACPI 6.5, the version the FADT (6.5) announces.
const MADT_REVISION: u8 = 6;
const MADT_HEADER_LEN: u32 = 44;
/// MADT flag: the platform also has dual 8259 PICs (KVM's in-kernel irqchip does).
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const MADT_TYPE_LOCAL_APIC_NMI: u8 = 4;
/// MPS INTI flags of an interrupt source override: polarity (bits 0-1) 01 active high, trigger
/// mode (bits 2-3) 11 level.
const INTI_LEVEL_ACTIVE_HIGH: u16 = 0b11 << 2 | 0b01;
/// Interrupt source overrides name ISA IRQs, which end at 15.
const ISA_IRQS: u32 = 16;
/// Processor UID meaning "all processors" in a Local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;
/// NMI arrives on LINT1 of every local APIC, as the MP table says too.
const NMI_LINT: u8 = 1;

/// IA-PC boot architecture flags (FADT offset 109): no VGA to probe and no CMOS RTC. The
/// LEGACY_DEVICES and 8042 bits stay clear: there are no ISA devices but COM1 (described in the
/// DSDT), and the i8042 is only a reset line, which Linux's `reboot=k` uses without probing it.
/// MSI_NOT_SUPPORTED and PCIE_ASPM_CONTROLS stay clear: there is no PCI, and a PCI device added
/// later should not inherit a ban on MSI.
const IAPC_NO_VGA: u16 = 1 << 2;
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;

/// EISA ID of a 16550-compatible serial port.
const SERIAL_HID: &str = "PNP0501";
/// The ACPI ID Linux's virtio_mmio driver matches.
const VIRTIO_MMIO_HID: &str = "LNRO0005";

/// Tables start 16-byte aligned.
const TABLE_ALIGN: u64 = 16;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables support at most {max} vCPUs, {0} requested", max = mptable::MAX_CPUS)]
    TooManyCpus(u32),
    #[error("virtio-mmio window {0:#x}+{1:#x} does not fit a 32-bit ACPI memory descriptor")]
    WindowAbove4G(u64, u64),
    #[error("too many devices for the DSDT: {0}, at most 256")]
    TooManyDevices(usize),
    #[error("the ACPI tables need {0} bytes, more than the {1} bytes reserved for them")]
    TooLarge(u64, u64),
    #[error("cannot write the ACPI tables into guest memory")]
    GuestMemory,
}

/// One table and where it goes in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedTable {
    pub address: u64,
    pub bytes: Vec<u8>,
}

/// The ACPI tables of one VM, each with its guest address; the RSDP first.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    pub rsdp: PlacedTable,
    pub xsdt: PlacedTable,
    pub fadt: PlacedTable,
    pub madt: PlacedTable,
    pub dsdt: PlacedTable,
}

impl AcpiTables {
    pub fn all(&self) -> [&PlacedTable; 5] {
        [&self.rsdp, &self.xsdt, &self.fadt, &self.madt, &self.dsdt]
    }

    /// First byte past the last table.
    pub fn end(&self) -> u64 {
        self.all()
            .iter()
            .map(|t| t.address + t.bytes.len() as u64)
            .max()
            .unwrap_or(layout::ACPI_RSDP_START)
    }
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

fn align_up(address: u64) -> u64 {
    address.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

/// IRQNoFlags(){irq}: the 2-byte small IRQ descriptor, meaning ISA semantics (edge-triggered,
/// active-high, exclusive). acpi_tables has only the extended descriptor.
struct IrqNoFlags(u8);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        const SMALL_IRQ_DESCRIPTOR_2_BYTES: u8 = 0x22;
        sink.byte(SMALL_IRQ_DESCRIPTOR_2_BYTES);
        sink.word(1u16 << self.0);
    }
}

/// The DSDT: `\_S5_` for poweroff, and in `\_SB_` the COM1 port and one device per
/// virtio-mmio window. COM1 must be here: on a hardware-reduced platform Linux has no legacy
/// PIC, so its IRQ numbers are no longer the GSIs, and only a device described with its GSI (the
/// PNP0501 port, bound by 8250_pnp) gets a working interrupt.
fn dsdt(slots: &[MmioSlot]) -> Result<Vec<u8>, AcpiError> {
    // Each window's interrupt: active-high, exclusive (each window has its own pin), and
    // level-triggered where vmm registered a resample irqfd: virtio-mmio's InterruptStatus has
    // level semantics, and vmm holds the pin up until the guest's EOI and raises it again while
    // a status bit is set. An extended descriptor's trigger mode is used as it stands (Linux
    // applies interrupt source overrides only to the small IRQ descriptors); the MADT's
    // overrides and the MP table say the same, so the pin is programmed alike whichever way the
    // guest found the device.
    let active_low = false;
    let shared = false;

    if slots.len() > 0x100 {
        return Err(AcpiError::TooManyDevices(slots.len()));
    }
    // Children of \_SB_, each serialized as it is built.
    let mut system_bus = Vec::new();

    let serial_io = IO::new(layout::SERIAL_PORT_BASE, layout::SERIAL_PORT_BASE, 1, 8);
    let serial_irq = IrqNoFlags(layout::SERIAL_IRQ as u8);
    let serial_crs = ResourceTemplate::new(vec![&serial_io, &serial_irq]);
    Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new(SERIAL_HID)),
            &Name::new("_UID".into(), &0u8),
            &Name::new("_CRS".into(), &serial_crs),
        ],
    )
    .to_aml_bytes(&mut system_bus);

    let hid: &'static str = VIRTIO_MMIO_HID;
    for (uid, slot) in slots.iter().enumerate() {
        let too_high = || AcpiError::WindowAbove4G(slot.base, slot.size);
        let base = u32::try_from(slot.base).map_err(|_| too_high())?;
        let size = u32::try_from(slot.size).map_err(|_| too_high())?;
        base.checked_add(size).ok_or_else(too_high)?;
        let memory = Memory32Fixed::new(true, base, size);
        let edge_triggered = slot.trigger == TriggerMode::Edge;
        let interrupt = Interrupt::new(true, edge_triggered, active_low, shared, slot.irq);
        let crs = ResourceTemplate::new(vec![&memory, &interrupt]);
        // Four-character names VR00..VRFF (at most 256 slots, checked above).
        Device::new(
            format!("VR{uid:02X}").as_str().into(),
            vec![
                &Name::new("_HID".into(), &hid),
                &Name::new("_UID".into(), &(uid as u32)),
                // DMA is cache-coherent (x86 assumes so without _CCA; saying it costs nothing).
                &Name::new("_CCA".into(), &1u8),
                &Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut system_bus);
    }

    // \_S5_: SLP_TYPa, SLP_TYPb, two reserved. Hardware-reduced sleep uses SLP_TYPa only.
    let s5 = Name::new(
        "_S5_".into(),
        &Package::new(vec![&ACPI_S5_SLEEP_TYPE, &0u8, &0u8, &0u8]),
    );

    let mut table = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.append_slice(&aml_bytes(&s5));
    table.append_slice(&Scope::raw("\\_SB_".into(), system_bus));
    Ok(table.as_slice().to_vec())
}

/// The FADT of a hardware-reduced platform whose sleep and reset registers are one I/O port.
fn fadt(dsdt_address: u64) -> Vec<u8> {
    let power_register = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(layout::ACPI_POWER_PORT),
    );
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_address)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature power or sleep button: there are none.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    builder.iapc_boot_arch = (IAPC_NO_VGA | IAPC_NO_CMOS_RTC).into();
    builder.reset_reg = power_register;
    builder.reset_value = ACPI_RESET_VALUE;
    builder.sleep_control_reg = power_register;
    builder.sleep_status_reg = power_register;
    aml_bytes(&builder.finalize())
}

/// The MADT: one enabled local APIC per vCPU (APIC ID = index), the IOAPIC with the ID after
/// the last vCPU (as in the MP table) and GSI base 0, an interrupt source override for each
/// level-triggered virtio IRQ below 16, and NMI on LINT1.
///
/// KVM's default routing sends GSI n to IOAPIC pin n (and, below 16, to the PIC), which is
/// ACPI's identity default for ISA IRQs, so no override moves an IRQ. The overrides only say
/// "level-triggered, active-high" for the virtio IRQs, which as ISA IRQs would otherwise default
/// to edge (what a guest that maps IRQs from the MADT, without the DSDT, would use). Linux would
/// use an IRQ0 -> GSI2 override (what QEMU declares, with routing to match) only for the PIT, and
/// a hardware-reduced ACPI platform has Linux skip the PIT and the 8259 altogether
/// (acpi_generic_reduced_hw_init): its timer is the local APIC's.
fn madt(cpus: u32, slots: &[MmioSlot]) -> Vec<u8> {
    let mut table = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.write_u32(36, layout::APIC_START as u32);
    table.write_u32(40, MADT_PCAT_COMPAT);
    for cpu in 0..cpus {
        let id = cpu as u8;
        table.append_slice(&aml_bytes(&ProcessorLocalApic::new(
            id,
            id,
            EnabledStatus::Enabled,
        )));
    }
    table.append_slice(&aml_bytes(&IoApic::new(
        cpus as u8,
        layout::IOAPIC_START as u32,
        0,
    )));
    for slot in slots {
        if slot.trigger != TriggerMode::Level || slot.irq >= ISA_IRQS {
            continue;
        }
        // Interrupt source override: type, length, bus (0: ISA), source IRQ, GSI, flags.
        let mut entry = vec![MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE, 10, 0, slot.irq as u8];
        entry.extend_from_slice(&slot.irq.to_le_bytes());
        entry.extend_from_slice(&INTI_LEVEL_ACTIVE_HIGH.to_le_bytes());
        table.append_slice(&entry);
    }
    // Local APIC NMI: type, length, processor UID, flags (0: conforms to the bus), LINT#.
    table.append_slice(&[MADT_TYPE_LOCAL_APIC_NMI, 6, ALL_PROCESSORS, 0, 0, NMI_LINT]);
    table.as_slice().to_vec()
}

/// Builds every table for `cpus` vCPUs and the virtio-mmio `slots`, placed from
/// `layout::ACPI_RSDP_START` on.
pub fn build_tables(cpus: u32, slots: &[MmioSlot]) -> Result<AcpiTables, AcpiError> {
    if cpus == 0 || cpus > mptable::MAX_CPUS {
        return Err(AcpiError::TooManyCpus(cpus));
    }
    let rsdp_address = layout::ACPI_RSDP_START;
    let xsdt_address = align_up(rsdp_address + Rsdp::len() as u64);
    // The XSDT's size is known in advance: a header and two 64-bit entries.
    let xsdt_len = 36 + 2 * 8;
    let fadt_address = align_up(xsdt_address + xsdt_len);
    let madt = madt(cpus, slots);
    let madt_address = align_up(fadt_address + acpi_tables::fadt::FADT::len() as u64);
    let dsdt = dsdt(slots)?;
    let dsdt_address = align_up(madt_address + madt.len() as u64);
    let fadt = fadt(dsdt_address);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_address);
    xsdt.add_entry(madt_address);
    let xsdt = aml_bytes(&xsdt);
    debug_assert_eq!(xsdt.len() as u64, xsdt_len);

    let tables = AcpiTables {
        rsdp: PlacedTable {
            address: rsdp_address,
            bytes: aml_bytes(&Rsdp::new(OEM_ID, xsdt_address)),
        },
        xsdt: PlacedTable {
            address: xsdt_address,
            bytes: xsdt,
        },
        fadt: PlacedTable {
            address: fadt_address,
            bytes: fadt,
        },
        madt: PlacedTable {
            address: madt_address,
            bytes: madt,
        },
        dsdt: PlacedTable {
            address: dsdt_address,
            bytes: dsdt,
        },
    };
    let room = layout::ACPI_TABLES_END - layout::ACPI_RSDP_START;
    let needed = tables.end() - layout::ACPI_RSDP_START;
    if needed > room {
        return Err(AcpiError::TooLarge(needed, room));
    }
    Ok(tables)
}

/// Writes the ACPI tables into guest memory and returns the RSDP's address.
pub fn setup_acpi(mem: &GuestMemoryMmap, cpus: u32, slots: &[MmioSlot]) -> Result<u64, AcpiError> {
    let tables = build_tables(cpus, slots)?;
    for table in tables.all() {
        mem.write_slice(&table.bytes, GuestAddress(table.address))
            .map_err(|_| AcpiError::GuestMemory)?;
    }
    Ok(tables.rsdp.address)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn le32(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    fn le64(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| w == &needle)
            .count()
    }

    fn slots(n: u32) -> Vec<MmioSlot> {
        (0..n)
            .map(|i| MmioSlot {
                base: layout::VIRTIO_MMIO_START + u64::from(i) * layout::VIRTIO_MMIO_WINDOW_SIZE,
                size: layout::VIRTIO_MMIO_WINDOW_SIZE,
                irq: layout::VIRTIO_IRQ_BASE + i,
                trigger: TriggerMode::Level,
            })
            .collect()
    }

    /// Every virtio IRQ the device manager can hand out.
    const MAX_DEVICES: u32 = layout::IRQ_MAX - layout::VIRTIO_IRQ_BASE + 1;

    #[test]
    fn every_table_checksums_to_zero_and_has_its_length() {
        let tables = build_tables(4, &slots(3)).unwrap();
        for table in tables.all() {
            assert_eq!(sum(&table.bytes), 0, "{:?}", &table.bytes[..8]);
        }
        // The RSDP's first checksum covers its first 20 bytes (the ACPI 1.0 part).
        assert_eq!(sum(&tables.rsdp.bytes[..20]), 0);
        for table in [&tables.xsdt, &tables.fadt, &tables.madt, &tables.dsdt] {
            assert_eq!(le32(&table.bytes, 4) as usize, table.bytes.len());
            assert_eq!(&table.bytes[10..16], &OEM_ID);
        }
    }

    #[test]
    fn rsdp_points_to_an_xsdt_listing_the_fadt_and_madt() {
        let tables = build_tables(2, &slots(1)).unwrap();
        let rsdp = &tables.rsdp.bytes;
        assert_eq!(tables.rsdp.address, layout::ACPI_RSDP_START);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(le32(rsdp, 20), 36, "length");
        assert_eq!(le64(rsdp, 24), tables.xsdt.address);

        let xsdt = &tables.xsdt.bytes;
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(xsdt.len(), 36 + 16);
        assert_eq!(le64(xsdt, 36), tables.fadt.address);
        assert_eq!(le64(xsdt, 44), tables.madt.address);
        assert_eq!(&tables.fadt.bytes[..4], b"FACP");
        assert_eq!(&tables.madt.bytes[..4], b"APIC");
        assert_eq!(&tables.dsdt.bytes[..4], b"DSDT");
        for table in tables.all() {
            assert_eq!(table.address % TABLE_ALIGN, 0);
        }
    }

    #[test]
    fn fadt_is_hardware_reduced_with_the_power_register() {
        let tables = build_tables(1, &[]).unwrap();
        let fadt = &tables.fadt.bytes;
        assert_eq!(fadt.len(), 276);
        assert_eq!((fadt[8], fadt[131]), (6, 5), "FADT revision 6.5");
        assert_eq!(le32(fadt, 36), 0, "no FACS");
        assert_eq!(le64(fadt, 132), 0, "no X_FACS");
        assert_eq!(le32(fadt, 40), 0, "DSDT given as X_DSDT");
        assert_eq!(le64(fadt, 140), tables.dsdt.address);
        let flags = le32(fadt, 112);
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        assert_eq!(
            u16::from_le_bytes([fadt[109], fadt[110]]),
            IAPC_NO_VGA | IAPC_NO_CMOS_RTC
        );
        // RESET_REG (116), SLEEP_CONTROL_REG (244), SLEEP_STATUS_REG (256): system I/O, 8 bits,
        // byte access, at the power port.
        for at in [116, 244, 256] {
            assert_eq!(&fadt[at..at + 4], &[1, 8, 0, 1], "GAS at {at}");
            assert_eq!(le64(fadt, at + 4), u64::from(layout::ACPI_POWER_PORT));
        }
        assert_eq!(fadt[128], ACPI_RESET_VALUE);
    }

    #[test]
    fn madt_lists_every_cpu_and_one_ioapic() {
        let cpus = 5;
        let mut slots = slots(MAX_DEVICES);
        slots[1].trigger = TriggerMode::Edge;
        let madt = build_tables(cpus, &slots).unwrap().madt.bytes;
        assert_eq!(le32(&madt, 36), layout::APIC_START as u32);
        assert_eq!(le32(&madt, 40), MADT_PCAT_COMPAT);
        let mut at = MADT_HEADER_LEN as usize;
        let (mut lapic_ids, mut ioapics, mut nmis) = (Vec::new(), Vec::new(), 0);
        let mut overrides = Vec::new();
        while at < madt.len() {
            let (kind, len) = (madt[at], madt[at + 1] as usize);
            assert!(len >= 2 && at + len <= madt.len());
            match kind {
                0 => {
                    assert_eq!(len, 8);
                    assert_eq!(madt[at + 2], madt[at + 3], "UID = APIC ID");
                    assert_eq!(le32(&madt, at + 4), 1, "enabled");
                    lapic_ids.push(madt[at + 3]);
                }
                1 => {
                    assert_eq!(len, 12);
                    ioapics.push((madt[at + 2], le32(&madt, at + 4), le32(&madt, at + 8)));
                }
                2 => {
                    assert_eq!(len, 10);
                    assert_eq!(madt[at + 2], 0, "ISA bus");
                    let flags = u16::from_le_bytes([madt[at + 8], madt[at + 9]]);
                    assert_eq!(flags, 0b1101, "level-triggered, active-high");
                    overrides.push((madt[at + 3], le32(&madt, at + 4)));
                }
                4 => {
                    assert_eq!(&madt[at + 2..at + 6], &[0xff, 0, 0, 1]);
                    nmis += 1;
                }
                other => panic!("unexpected MADT entry type {other}"),
            }
            at += len;
        }
        assert_eq!(lapic_ids, (0..cpus as u8).collect::<Vec<_>>());
        assert_eq!(ioapics, vec![(cpus as u8, layout::IOAPIC_START as u32, 0)]);
        assert_eq!(nmis, 1);
        // Identity overrides for the level-triggered virtio IRQs that are ISA IRQs (below 16),
        // none for the edge-triggered one (IRQ 6) or for GSIs from 16 on.
        let expected: Vec<(u8, u32)> = (layout::VIRTIO_IRQ_BASE..16)
            .filter(|&irq| irq != 6)
            .map(|irq| (irq as u8, irq))
            .collect();
        assert_eq!(overrides, expected);
    }

    #[test]
    fn dsdt_describes_each_window_its_interrupt_com1_and_s5() {
        let slots = slots(3);
        let dsdt = build_tables(1, &slots).unwrap().dsdt.bytes;
        assert_eq!(count(&dsdt, b"LNRO0005\0"), 3);
        for slot in &slots {
            let mut memory = vec![0x86, 9, 0, 1];
            memory.extend_from_slice(&(slot.base as u32).to_le_bytes());
            memory.extend_from_slice(&(slot.size as u32).to_le_bytes());
            assert_eq!(count(&dsdt, &memory), 1, "Memory32Fixed of {slot:?}");
            // Extended interrupt: consumer, level-triggered, active-high, exclusive; one IRQ.
            let mut interrupt = vec![0x89, 6, 0, 0b0001, 1];
            interrupt.extend_from_slice(&slot.irq.to_le_bytes());
            assert_eq!(count(&dsdt, &interrupt), 1, "Interrupt of {slot:?}");
        }
        // Without resample irqfds a window's interrupt is edge-triggered.
        let mut edge = slots[0];
        edge.trigger = TriggerMode::Edge;
        let edge_dsdt = build_tables(1, &[edge]).unwrap().dsdt.bytes;
        let mut interrupt = vec![0x89, 6, 0, 0b0011, 1];
        interrupt.extend_from_slice(&edge.irq.to_le_bytes());
        assert_eq!(count(&edge_dsdt, &interrupt), 1, "Interrupt of {edge:?}");
        for name in [b"VR00", b"VR01", b"VR02", b"_SB_", b"COM1", b"_S5_"] {
            assert_eq!(count(&dsdt, name), 1, "{}", String::from_utf8_lossy(name));
        }
        // PNP0501 as an EISA ID, COM1's I/O range and IRQ 4.
        assert_eq!(count(&dsdt, &[0x0c, 0x41, 0xd0, 0x05, 0x01]), 1);
        assert_eq!(count(&dsdt, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]), 1);
        assert_eq!(count(&dsdt, &[0x22, 0x10, 0x00]), 1);
        // Name(_S5_, Package(4){5, 0, 0, 0})
        assert_eq!(
            count(&dsdt, b"_S5_\x12\x07\x04\x0a\x05\x00\x00\x00"),
            1,
            "{dsdt:x?}"
        );
    }

    #[test]
    fn tables_fit_below_the_mp_table_at_the_largest_configuration() {
        let tables = build_tables(mptable::MAX_CPUS, &slots(MAX_DEVICES)).unwrap();
        assert!(
            tables.end() <= layout::ACPI_TABLES_END,
            "{:#x}",
            tables.end()
        );
        assert!(tables.rsdp.address >= layout::EBDA_START);
        assert_eq!(
            count(&tables.dsdt.bytes, b"LNRO0005\0"),
            MAX_DEVICES as usize
        );
        let overrides = (16 - layout::VIRTIO_IRQ_BASE) as usize;
        assert_eq!(
            tables.madt.bytes.len(),
            44 + 8 * mptable::MAX_CPUS as usize + 12 + 10 * overrides + 6
        );
    }

    #[test]
    fn bad_configurations_are_errors() {
        assert!(matches!(
            build_tables(0, &[]),
            Err(AcpiError::TooManyCpus(0))
        ));
        assert!(matches!(
            build_tables(mptable::MAX_CPUS + 1, &[]),
            Err(AcpiError::TooManyCpus(_))
        ));
        let high = MmioSlot {
            base: 0x1_0000_0000,
            size: 0x1000,
            irq: 5,
            trigger: TriggerMode::Level,
        };
        assert!(matches!(
            build_tables(1, &[high]),
            Err(AcpiError::WindowAbove4G(..))
        ));
        let straddling = MmioSlot {
            base: 0xffff_f000,
            size: 0x2000,
            irq: 5,
            trigger: TriggerMode::Level,
        };
        assert!(matches!(
            build_tables(1, &[straddling]),
            Err(AcpiError::WindowAbove4G(..))
        ));
    }

    #[test]
    fn setup_writes_the_tables_where_linux_scans_for_the_rsdp() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rsdp = setup_acpi(&mem, 2, &slots(2)).unwrap();
        // Linux's fallback: a 16-byte aligned "RSD PTR " in 0xe0000..0x100000.
        let mut found = None;
        for address in (0xe0000u64..0x100000).step_by(16) {
            let mut signature = [0u8; 8];
            mem.read_slice(&mut signature, GuestAddress(address))
                .unwrap();
            if &signature == b"RSD PTR " {
                found = Some(address);
                break;
            }
        }
        assert_eq!(found, Some(rsdp));
        let tables = build_tables(2, &slots(2)).unwrap();
        for table in tables.all() {
            let mut written = vec![0u8; table.bytes.len()];
            mem.read_slice(&mut written, GuestAddress(table.address))
                .unwrap();
            assert_eq!(written, table.bytes);
        }
    }
}
