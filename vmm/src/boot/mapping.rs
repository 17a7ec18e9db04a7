//! Mapping a file's pages into guest memory instead of copying them there (`--map-images`, for
//! the bzImage and the initrd): `map_file_into_guest` maps them copy-on-write where it safely
//! can, and `mapped_from_file` tells the kernel and initrd loaders whether it did or they are to
//! read the file instead.

use std::fs::File;
use std::path::Path;

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{LoaderError, Result};

/// Host page size on x86_64; guest RAM regions are mapped in whole pages of it.
pub(super) const PAGE_SIZE: u64 = 4096;

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
/// the guest boots (the guest builders write a new file and rename it). `addr` and `file_offset`
/// must be page aligned and the range, rounded up to whole pages, inside one RAM region that
/// nothing else has been written to; the bytes past the end of the file in its last page read as
/// zero.
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

/// `map_file_into_guest`, reporting whether it mapped the file: false means nothing changed and
/// the caller reads the file instead (a pipe, an unaligned range, a file system without mmap).
pub(super) fn mapped_from_file(
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::FileExt;
    use vm_memory::Bytes;
    use vmm_sys_util::tempfile::TempFile;

    use crate::boot::testing::{guest_bytes, memory, patterned_file};

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
}
