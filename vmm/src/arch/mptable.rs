//! MP specification 1.4 tables: tell a guest without ACPI how many CPUs there are, where the
//! IOAPIC is, that ISA IRQ n arrives on IOAPIC pin n (KVM's default routing), and which pins are
//! level-triggered (the virtio-mmio devices').

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;
use crate::device_manager::{MmioSlot, TriggerMode};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const MP_SPEC_REVISION: u8 = 4;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// I/O interrupt entry flags (MP 1.4 table 4-10): polarity and trigger mode conform to the bus,
/// for ISA edge-triggered and active-high.
const IRQ_FLAGS_CONFORMING: u16 = 0;
/// Polarity (bits 0-1) 01 active high, trigger mode (bits 2-3) 11 level. Linux honours these
/// for every pin it maps through the MP table, ISA IRQs below 16 included.
const IRQ_FLAGS_LEVEL_ACTIVE_HIGH: u16 = 0b11 << 2 | 0b01;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// CPU signature (family 6) and feature flags (FPU, APIC) for processor entries.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const BUS_ID_ISA: u8 = 0;
const HEADER_LEN: usize = 44;
/// APIC IDs are 8 bits and the IOAPIC takes the ID after the last CPU.
pub const MAX_CPUS: u32 = 254;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("the MP table supports at most {MAX_CPUS} vCPUs, {0} requested")]
    TooManyCpus(u32),
    #[error("cannot write the MP table into guest memory")]
    GuestMemory,
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// The MP configuration table (header and entries) for `cpus` vCPUs and the virtio-mmio
/// devices in `slots`.
fn config_table(cpus: u32, slots: &[MmioSlot]) -> Vec<u8> {
    let ioapic_id = cpus as u8;
    let mut entries = Vec::new();
    let mut count = 0u16;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu as u8, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, BUS_ID_ISA]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..=layout::IRQ_MAX as u8 {
        let level = slots
            .iter()
            .any(|slot| slot.irq == u32::from(irq) && slot.trigger == TriggerMode::Level);
        let flags = if level {
            IRQ_FLAGS_LEVEL_ACTIVE_HIGH
        } else {
            IRQ_FLAGS_CONFORMING
        };
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT]);
        entries.extend_from_slice(&flags.to_le_bytes());
        entries.extend_from_slice(&[BUS_ID_ISA, irq, ioapic_id, irq]);
        count += 1;
    }
    // PIC output on LINT0, NMI on LINT1 of every local APIC (0xff = all).
    entries.extend_from_slice(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        0,
        BUS_ID_ISA,
        0,
        0xff,
        0,
    ]);
    entries.extend_from_slice(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        0,
        BUS_ID_ISA,
        0,
        0xff,
        1,
    ]);
    count += 2;

    let mut table = Vec::with_capacity(HEADER_LEN + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    table.push(MP_SPEC_REVISION);
    table.push(0); // checksum, filled below
    table.extend_from_slice(b"VMM     ");
    table.extend_from_slice(b"0.1         ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// Writes the MP floating pointer and configuration table at `layout::MPTABLE_START`.
pub fn setup_mptable(
    mem: &GuestMemoryMmap,
    cpus: u32,
    slots: &[MmioSlot],
) -> Result<(), MptableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let table_addr = layout::MPTABLE_START + 16;
    let mut floating = Vec::with_capacity(16);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(table_addr as u32).to_le_bytes());
    floating.extend_from_slice(&[1, MP_SPEC_REVISION, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);
    mem.write_slice(&floating, GuestAddress(layout::MPTABLE_START))
        .map_err(|_| MptableError::GuestMemory)?;
    mem.write_slice(&config_table(cpus, slots), GuestAddress(table_addr))
        .map_err(|_| MptableError::GuestMemory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn tables_checksum_to_zero_and_count_entries() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        setup_mptable(&mem, 2, &[]).unwrap();
        let mut floating = [0u8; 16];
        mem.read_slice(&mut floating, GuestAddress(layout::MPTABLE_START))
            .unwrap();
        assert_eq!(&floating[..4], b"_MP_");
        assert_eq!(floating.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        let table = config_table(2, &[]);
        assert_eq!(table.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(
            u16::from_le_bytes([table[34], table[35]]),
            2 + 1 + 1 + 24 + 2
        );
        assert_eq!(
            usize::from(u16::from_le_bytes([table[4], table[5]])),
            table.len()
        );
    }

    #[test]
    fn cpu_count_is_bounded() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(setup_mptable(&mem, 0, &[]).is_err());
        assert!(setup_mptable(&mem, MAX_CPUS + 1, &[]).is_err());
        assert!(setup_mptable(&mem, MAX_CPUS, &[]).is_ok());
    }

    /// The I/O interrupt entries of `table`, as (flags, source bus IRQ, destination pin).
    fn io_interrupts(table: &[u8]) -> Vec<(u16, u8, u8)> {
        let mut at = HEADER_LEN;
        let mut found = Vec::new();
        while at < table.len() {
            let len = if table[at] == ENTRY_PROCESSOR { 20 } else { 8 };
            if table[at] == ENTRY_IO_INTERRUPT {
                let flags = u16::from_le_bytes([table[at + 2], table[at + 3]]);
                found.push((flags, table[at + 5], table[at + 7]));
            }
            at += len;
        }
        found
    }

    #[test]
    fn virtio_pins_are_level_triggered_active_high_and_the_rest_conform_to_isa() {
        let slot = |irq, trigger| MmioSlot {
            base: layout::VIRTIO_MMIO_START,
            size: layout::VIRTIO_MMIO_WINDOW_SIZE,
            irq,
            trigger,
        };
        let slots = [
            slot(5, TriggerMode::Level),
            slot(6, TriggerMode::Edge),
            slot(20, TriggerMode::Level),
        ];
        let table = config_table(1, &slots);
        let entries = io_interrupts(&table);
        assert_eq!(entries.len(), layout::IRQ_MAX as usize + 1);
        for (flags, source, pin) in entries {
            assert_eq!(source, pin, "ISA IRQ n is pin n");
            let expected = match pin {
                5 | 20 => 0b1101,
                _ => 0,
            };
            assert_eq!(flags, expected, "flags of pin {pin}");
        }
        // The serial port's IRQ stays ISA: edge-triggered.
        assert_eq!(io_interrupts(&table)[layout::SERIAL_IRQ as usize].0, 0);
    }
}
