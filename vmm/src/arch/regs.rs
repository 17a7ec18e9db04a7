//! Initial vCPU state for the two entry protocols: 64-bit Linux boot (long mode, identity-mapped
//! first GiB) and PVH (32-bit protected mode, no paging).

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;
use crate::boot::{BootEntry, BootSetup};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Page table entry bits: present, writable, and (in a page directory) a 2 MiB page.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_HUGE_PAGE: u64 = 0x80;

/// GDT descriptor flags in the layout of Linux's GDT_ENTRY: access byte in bits 0-7, then
/// AVL/L/DB/G in bits 12-15.
const GDT_CODE64: u16 = 0xa09b;
const GDT_CODE32: u16 = 0xc09b;
const GDT_DATA: u16 = 0xc093;
const GDT_TSS: u16 = 0x808b;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors while setting up a vCPU; each names the KVM call that failed.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot GDT or page tables into guest memory")]
    GuestMemory,
    #[error("KVM_{0} failed: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("KVM accepted only {0} of {1} boot MSRs")]
    Msrs(usize, usize),
}

type Result<T> = std::result::Result<T, RegsError>;

fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM segment register that the GDT entry at `index` describes.
fn segment(entry: u64, index: u16) -> kvm_segment {
    let flags = ((entry >> 40) & 0xf0ff) as u16;
    let granular = (flags >> 15) & 1 == 1;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let present = ((flags >> 7) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: (flags & 0xf) as u8,
        present,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: granular as u8,
        avl: ((flags >> 12) & 1) as u8,
        unusable: 1 - present,
        padding: 0,
    }
}

/// Writes a GDT of [null, code, data, tss] and loads the segment registers from it.
fn setup_segments(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs, code_flags: u16) -> Result<()> {
    let gdt = [
        0,
        gdt_entry(code_flags, 0, 0xfffff),
        gdt_entry(GDT_DATA, 0, 0xfffff),
        gdt_entry(GDT_TSS, 0, 0xfffff),
    ];
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(layout::GDT_START + 8 * i as u64))
            .map_err(|_| RegsError::GuestMemory)?;
    }
    mem.write_obj(0u64, GuestAddress(layout::IDT_START))
        .map_err(|_| RegsError::GuestMemory)?;
    sregs.gdt.base = layout::GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = layout::IDT_START;
    sregs.idt.limit = 7;
    let data = segment(gdt[2], 2);
    sregs.cs = segment(gdt[1], 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], 3);
    Ok(())
}

/// Identity-maps the first GiB with 2 MiB pages: enough for the kernel, boot params and initrd
/// pointer until the kernel builds its own page tables.
fn setup_page_tables(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs) -> Result<()> {
    let write = |value: u64, addr: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|_| RegsError::GuestMemory)
    };
    write(layout::PDPTE_START | PTE_PRESENT_RW, layout::PML4_START)?;
    write(layout::PDE_START | PTE_PRESENT_RW, layout::PDPTE_START)?;
    for i in 0..512u64 {
        write(
            (i << 21) | PDE_HUGE_PAGE | PTE_PRESENT_RW,
            layout::PDE_START + i * 8,
        )?;
    }
    sregs.cr3 = layout::PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

/// Puts the boot vCPU at the kernel entry with the state its protocol requires.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, mem: &GuestMemoryMmap, boot: &BootSetup) -> Result<()> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Kvm("GET_SREGS", e))?;
    // Start from a clean CR0: protected mode, caches enabled.
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match boot.entry {
        BootEntry::Linux64 { entry } => {
            setup_segments(mem, &mut sregs, GDT_CODE64)?;
            setup_page_tables(mem, &mut sregs)?;
            regs.rip = entry;
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
            regs.rsi = boot.boot_info;
        }
        BootEntry::Pvh { entry } => {
            setup_segments(mem, &mut sregs, GDT_CODE32)?;
            regs.rip = entry;
            regs.rbx = boot.boot_info;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("SET_SREGS", e))?;
    vcpu.set_regs(&regs)
        .map_err(|e| RegsError::Kvm("SET_REGS", e))?;
    Ok(())
}

/// FPU, boot MSRs and LAPIC local interrupts, for every vCPU.
pub fn setup_common(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| RegsError::Kvm("SET_FPU", e))?;

    let entries = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    });
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs(0, entries.len()))?;
    let written = vcpu
        .set_msrs(&msrs)
        .map_err(|e| RegsError::Kvm("SET_MSRS", e))?;
    if written != entries.len() {
        return Err(RegsError::Msrs(written, entries.len()));
    }

    // LINT0 delivers the legacy PIC (ExtINT), LINT1 NMIs: without this the PIT's interrupts
    // through the PIC never reach the vCPU.
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| RegsError::Kvm("GET_LAPIC", e))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT_LINT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT_LINT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(|e| RegsError::Kvm("SET_LAPIC", e))?;
    Ok(())
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = segment(gdt_entry(GDT_CODE64, 0, 0xfffff), 1);
        assert_eq!((code.base, code.limit, code.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (code.l, code.db, code.present, code.s, code.type_),
            (1, 0, 1, 1, 0xb)
        );
        let data = segment(gdt_entry(GDT_DATA, 0, 0xfffff), 2);
        assert_eq!((data.db, data.l, data.type_, data.selector), (1, 0, 3, 16));
        let code32 = segment(gdt_entry(GDT_CODE32, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db), (0, 1));
    }

    #[test]
    fn gdt_entry_matches_the_linux_encoding() {
        // GDT_ENTRY_INIT(0xa09b, 0, 0xfffff) from arch/x86 boot code.
        assert_eq!(gdt_entry(GDT_CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(GDT_DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn lvt_mode_keeps_other_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT_LINT0] = 0x10;
        regs[APIC_LVT_LINT0 + 2] = 0x01;
        set_lvt_mode(&mut regs, APIC_LVT_LINT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT_LINT0] as u8, 0x10);
        assert_eq!(regs[APIC_LVT_LINT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT_LINT0 + 2] as u8, 0x01);
    }
}
