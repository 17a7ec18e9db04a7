//! The KVM VM: guest memory, the in-kernel interrupt controllers and PIT, and the vCPU file
//! descriptors with their boot state.

use std::ops::Range;
use std::path::Path;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::{cpuid, layout, regs};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user open /dev/kvm?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("/dev/kvm lacks a capability vmm needs: {0}")]
    MissingCapability(&'static str),
    #[error("cannot allocate {0} MiB of guest memory: {1}")]
    GuestMemory(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error("cannot allocate {0} MiB of guest memory: {1}")]
    GuestMemoryFile(u64, #[source] std::io::Error),
    #[error("cannot allocate {0} MiB of guest memory: {1}")]
    GuestAddress(u64, #[source] vm_memory::GuestMemoryError),
    #[error("cannot allocate {0} MiB of guest memory: held-back range {1:x?} is not inside one RAM region")]
    HeldBackOutsideRam(u64, Option<Range<u64>>),
    #[error("KVM_{0} failed: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("vCPU setup failed: {0}")]
    Regs(#[from] regs::RegsError),
}

type Result<T> = std::result::Result<T, VmError>;

/// Whether this host's KVM is PVM, which runs small guests but cannot boot a stock Linux kernel.
pub fn kvm_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Guest RAM of `mem_size` bytes: anonymous memory, with the MMIO hole below 4 GiB left out.
pub fn guest_memory(mem_size: u64) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(mem_size)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmError::GuestMemory(mem_size >> 20, e))
}

/// Guest RAM as `guest_memory` lays it out, but in one memfd mapped shared, so that another
/// process (a vhost-user backend such as virtiofsd) can map the same pages from the fd.
pub fn shared_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap> {
    let mib = mem_size >> 20;
    // SAFETY: the name is a NUL-terminated string literal; the result is checked below.
    let fd = unsafe { libc::memfd_create(c"vmm-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(VmError::GuestMemoryFile(
            mib,
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: memfd_create just returned this fd, and nothing else owns it.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(mem_size)
        .map_err(|e| VmError::GuestMemoryFile(mib, e))?;
    let file = std::sync::Arc::new(file);
    let mut offset = 0;
    let ranges: Vec<(GuestAddress, usize, Option<vm_memory::FileOffset>)> =
        layout::ram_regions(mem_size)
            .into_iter()
            .map(|(start, size)| {
                let range = (
                    GuestAddress(start),
                    size as usize,
                    Some(vm_memory::FileOffset::from_arc(file.clone(), offset)),
                );
                offset += size;
                range
            })
            .collect();
    GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(|e| VmError::GuestMemory(mib, e))
}

pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
    pub memory: GuestMemoryMmap,
}

impl Vm {
    /// Opens KVM, creates the VM with `mem_size` bytes of RAM (minus the MMIO hole), and, when
    /// `irqchip` is set, the in-kernel IOAPIC/PIC/LAPICs and PIT.
    pub fn new(mem_size: u64, irqchip: bool) -> Result<Self> {
        Ok(Self::with_memory(guest_memory(mem_size)?, irqchip, None)?.0)
    }

    /// As `new`, with guest memory from `guest_memory` (which others may already be filling),
    /// all of it mapped into the VM but `held_back` (`map_memory`).
    pub fn with_memory(
        memory: GuestMemoryMmap,
        irqchip: bool,
        held_back: Option<Range<u64>>,
    ) -> Result<(Self, Option<HeldBackSlot>)> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        for (cap, name) in [
            (Cap::UserMemory, "USER_MEMORY"),
            (Cap::Irqchip, "IRQCHIP"),
            (Cap::Ioeventfd, "IOEVENTFD"),
            (Cap::Irqfd, "IRQFD"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCapability(name));
            }
        }
        let fd = kvm.create_vm().map_err(|e| VmError::Kvm("CREATE_VM", e))?;
        let vm = Self { kvm, fd, memory };
        // Memory first: each change to the VM's memory or device buses waits for a KVM grace
        // period, and one right after another can wait a whole timer tick (several ms here).
        let held_back = vm.map_memory(held_back)?;
        let fd = &vm.fd;
        fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(|e| VmError::Kvm("SET_TSS_ADDR", e))?;
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
            .map_err(|e| VmError::Kvm("SET_IDENTITY_MAP_ADDR", e))?;
        if irqchip {
            fd.create_irq_chip()
                .map_err(|e| VmError::Kvm("CREATE_IRQCHIP", e))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit)
                .map_err(|e| VmError::Kvm("CREATE_PIT2", e))?;
        }
        Ok((vm, held_back))
    }

    /// Maps guest RAM into the VM, all of it but `held_back` (page aligned, inside one RAM
    /// region), which is returned as a slot for `HeldBackSlot::map` to add once vmm has filled
    /// it. Until then a guest access there exits to vmm as MMIO.
    fn map_memory(&self, held_back: Option<Range<u64>>) -> Result<Option<HeldBackSlot>> {
        let mem_mib = self.memory.iter().map(|region| region.len()).sum::<u64>() >> 20;
        // Guest ranges [start, end) to map now, and the one to map later.
        let mut ranges = Vec::new();
        let mut later = None;
        for region in self.memory.iter() {
            let start = region.start_addr().raw_value();
            let end = start + region.len();
            match &held_back {
                Some(hole) if hole.start >= start && hole.end <= end && hole.start < hole.end => {
                    ranges.extend(
                        [start..hole.start, hole.end..end]
                            .into_iter()
                            .filter(|r| !r.is_empty()),
                    );
                    later = Some(hole.clone());
                }
                _ => ranges.push(start..end),
            }
        }
        if held_back.is_some() && later.is_none() {
            return Err(VmError::HeldBackOutsideRam(mem_mib, held_back.clone()));
        }
        let slot = |index: usize, range: &Range<u64>| -> Result<kvm_userspace_memory_region> {
            let host = self
                .memory
                .get_host_address(GuestAddress(range.start))
                .map_err(|e| VmError::GuestAddress(mem_mib, e))?;
            Ok(kvm_userspace_memory_region {
                slot: index as u32,
                guest_phys_addr: range.start,
                memory_size: range.end - range.start,
                userspace_addr: host as u64,
                flags: 0,
            })
        };
        for (index, range) in ranges.iter().enumerate() {
            let region = slot(index, range)?;
            // SAFETY: the range is part of a live mapping owned by `self.memory`, which the Vm
            // keeps for as long as the VM exists, and the slots do not overlap.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(|e| VmError::Kvm("SET_USER_MEMORY_REGION", e))?;
        }
        later
            .map(|range| slot(ranges.len(), &range).map(HeldBackSlot))
            .transpose()
    }

    /// KVM's supported CPUID plus the TSC-deadline timer when KVM emulates it: the base of
    /// every vCPU's table.
    pub fn supported_cpuid(&self) -> Result<CpuId> {
        let mut supported = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::Kvm("GET_SUPPORTED_CPUID", e))?;
        if self.kvm.check_extension(Cap::TscDeadlineTimer) {
            cpuid::add_tsc_deadline_timer(&mut supported);
        }
        Ok(supported)
    }

    /// Creates vCPU `index` of `count` with its CPUID, MSRs, FPU and LAPIC set up.
    pub fn create_vcpu(&self, supported: &CpuId, index: u32, count: u32) -> Result<VcpuFd> {
        let vcpu = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|e| VmError::Kvm("CREATE_VCPU", e))?;
        vcpu.set_cpuid2(&cpuid::vcpu_cpuid(supported, index, count))
            .map_err(|e| VmError::Kvm("SET_CPUID2", e))?;
        regs::setup_common(&vcpu)?;
        Ok(vcpu)
    }
}

/// Guest RAM that `Vm::map_memory` held back from the VM, to be mapped once filled.
#[derive(Debug)]
pub struct HeldBackSlot(kvm_userspace_memory_region);

impl HeldBackSlot {
    /// Maps the held-back RAM into the VM: from now on guest accesses there reach RAM.
    pub fn map(&self, vm: &Vm) -> Result<()> {
        // SAFETY: as in `Vm::map_memory`, which made this slot from `vm`'s own guest memory,
        // alongside slots that do not overlap it.
        unsafe { vm.fd.set_user_memory_region(self.0) }
            .map_err(|e| VmError::Kvm("SET_USER_MEMORY_REGION", e))
    }

    /// The guest range, as [start, end).
    pub fn range(&self) -> Range<u64> {
        self.0.guest_phys_addr..self.0.guest_phys_addr + self.0.memory_size
    }
}
