//! The CPUID each vCPU sees: KVM's supported set (which includes the KVM hypervisor leaves), with
//! the hypervisor bit set, the TSC-deadline timer when KVM emulates it, and a topology of `count`
//! single-threaded cores in one package, where vCPU `index` has APIC ID `index`.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Bits needed to number `count` APIC IDs.
fn apic_id_bits(count: u32) -> u32 {
    count.max(1).next_power_of_two().trailing_zeros()
}

fn patch_entry(entry: &mut kvm_cpuid_entry2, index: u32, count: u32) {
    let id_bits = apic_id_bits(count);
    match entry.function {
        LEAF_FEATURES => {
            entry.ecx |= ECX_HYPERVISOR;
            entry.ebx = (entry.ebx & 0x0000_ffff) | (index << 24) | ((count & 0xff) << 16);
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // Cores per package minus one, in bits 31:26.
            entry.eax = (entry.eax & 0x03ff_ffff) | ((count.saturating_sub(1) & 0x3f) << 26);
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            entry.edx = index;
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = (TOPOLOGY_LEVEL_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = id_bits;
                    entry.ebx = count;
                    entry.ecx = (TOPOLOGY_LEVEL_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        LEAF_AMD_SIZE_IDS => {
            entry.ecx = (entry.ecx & !0xf0ff) | (id_bits << 12) | (count.saturating_sub(1) & 0xff);
        }
        LEAF_AMD_EXT_APIC_ID => {
            entry.eax = index;
            entry.ebx = index & 0xff;
            entry.ecx = 0;
        }
        _ => {}
    }
}

/// Sets the TSC-deadline timer bit (leaf 1, ECX bit 24), which KVM_GET_SUPPORTED_CPUID leaves out
/// even when KVM emulates the timer (KVM_CAP_TSC_DEADLINE_TIMER); VMMs add it themselves. Without
/// it Linux calibrates the LAPIC timer against the PIT for about 100 ms of guest time and then
/// verifies it for as long again; in the nested lab the verification fails, the LAPIC timer is
/// disabled and the PIT drives the tick.
pub fn add_tsc_deadline_timer(cpuid: &mut CpuId) {
    for entry in cpuid.as_mut_slice() {
        if entry.function == LEAF_FEATURES {
            entry.ecx |= ECX_TSC_DEADLINE;
        }
    }
}

/// The CPUID table for vCPU `index` of `count`.
pub fn vcpu_cpuid(supported: &CpuId, index: u32, count: u32) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, index, count);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn leaf_1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = entry(LEAF_FEATURES, 0);
        e.ebx = 0x0000_0800;
        patch_entry(&mut e, 3, 4);
        assert_eq!(e.ebx, 0x0304_0800);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn tsc_deadline_bit_goes_into_leaf_1_only() {
        let mut cpuid =
            CpuId::from_entries(&[entry(LEAF_FEATURES, 0), entry(LEAF_CACHE_PARAMS, 0)])
                .expect("two entries fit");
        add_tsc_deadline_timer(&mut cpuid);
        let entries = cpuid.as_slice();
        assert_eq!(entries[0].ecx, ECX_TSC_DEADLINE);
        assert_eq!(entries[1].ecx, 0);
    }

    #[test]
    fn extended_topology_describes_cores() {
        let mut smt = entry(LEAF_EXT_TOPOLOGY, 0);
        let mut core = entry(LEAF_EXT_TOPOLOGY, 1);
        patch_entry(&mut smt, 1, 3);
        patch_entry(&mut core, 1, 3);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 1));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 1));
    }

    #[test]
    fn apic_id_bits_round_up() {
        assert_eq!(apic_id_bits(1), 0);
        assert_eq!(apic_id_bits(2), 1);
        assert_eq!(apic_id_bits(3), 2);
        assert_eq!(apic_id_bits(8), 3);
    }
}
