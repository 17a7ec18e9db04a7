//! The initrd: where it goes in guest memory (`place_initrd`: as high in low memory as the kernel
//! takes it), and getting it there later, read or mapped from its file, as a `PendingInitrd`; it
//! also says which guest RAM stays held back until then (`held_back`).

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::mapping::{mapped_from_file, PAGE_SIZE};
use super::{LoaderError, Result};
use crate::arch::layout;

/// Guest RAM held back from KVM around an initrd still to be read is whole 2 MiB pages where it
/// can be: KVM maps guest RAM in 2 MiB pages only where one memory slot covers the whole page,
/// and in the lab a 2 MiB page split between two slots cost the guest 512 page-fault exits.
const HELD_BACK_ALIGN: u64 = 2 << 20;

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

    /// Where the initrd is and its size, for an initrd that starts at or above `kernel_end`.
    pub(super) fn placed_above(&self, kernel_end: u64) -> Result<(u64, u64)> {
        if self.start < kernel_end {
            return Err(self.too_large());
        }
        Ok((self.start, self.size))
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

/// Top of RAM below 4 GiB, where the initrd goes.
fn low_memory_end(mem: &GuestMemoryMmap) -> u64 {
    (mem.last_addr().raw_value() + 1).min(layout::MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::FileExt;

    use crate::boot::testing::{guest_bytes, memory, patterned_file};

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
}
