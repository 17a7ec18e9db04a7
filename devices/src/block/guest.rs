//! Guest memory access for the request path. `vm-memory`'s general accessors walk a range
//! region by region through an iterator on every call; a request touches a handful of small
//! ranges (descriptors, header, status byte), each inside one region, so these look the region
//! up once and copy straight, and fall back to the general accessors for ranges that span
//! regions. Every access is still checked: a range outside guest memory is an error. Also the
//! copy of a small reply (GET_ID, ZONE_REPORT, the append sector) into a request's buffers.

use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError,
    GuestMemoryRegion, MemoryRegionAddress, Permissions, VolatileSlice,
};

use super::request::Segment;
use crate::virtio::GuestMemoryMmap;

/// The `len` bytes at `addr` as one host slice, if they lie inside one region.
#[inline]
pub fn region_slice(
    memory: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
) -> Option<VolatileSlice<'_, ()>> {
    let region = memory.find_region(addr)?;
    let offset = addr.checked_offset_from(region.start_addr())?;
    region.get_slice(MemoryRegionAddress(offset), len).ok()
}

/// Whether `len` bytes at `addr` lie inside guest memory, accessible with `access`.
#[inline]
pub fn in_memory(
    memory: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
    access: Permissions,
) -> bool {
    region_slice(memory, addr, len).is_some() || GuestMemory::check_range(memory, addr, len, access)
}

/// Fills `buf` from guest memory at `addr`.
#[inline]
pub fn read(
    memory: &GuestMemoryMmap,
    addr: GuestAddress,
    buf: &mut [u8],
) -> Result<(), GuestMemoryError> {
    match region_slice(memory, addr, buf.len()) {
        Some(slice) => {
            slice.copy_to(buf);
            Ok(())
        }
        None => memory.read_slice(buf, addr),
    }
}

/// Writes `bytes` into guest memory at `addr`.
#[inline]
pub fn write(
    memory: &GuestMemoryMmap,
    addr: GuestAddress,
    bytes: &[u8],
) -> Result<(), GuestMemoryError> {
    match region_slice(memory, addr, bytes.len()) {
        Some(slice) => {
            slice.copy_from(bytes);
            Ok(())
        }
        None => memory.write_slice(bytes, addr),
    }
}

/// Writes `bytes` into `segments` as far as they reach; returns how many bytes were written.
pub fn bytes_to_guest<M: GuestMemory + ?Sized>(
    memory: &M,
    segments: &[Segment],
    bytes: &[u8],
) -> Result<usize, GuestMemoryError> {
    let mut written = 0;
    for segment in segments {
        let Some(rest) = bytes.get(written..).filter(|rest| !rest.is_empty()) else {
            break;
        };
        let count = rest.len().min(segment.len as usize);
        memory.write_slice(&rest[..count], segment.addr)?;
        written += count;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_inside_across_and_outside_regions() {
        // Two adjacent regions and a hole after them.
        let memory = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
        ])
        .unwrap();
        let bytes: Vec<u8> = (0..32u8).collect();
        // Inside one region, and across the boundary (the general path).
        for addr in [0x10, 0xff0] {
            write(&memory, GuestAddress(addr), &bytes).unwrap();
            let mut back = [0u8; 32];
            read(&memory, GuestAddress(addr), &mut back).unwrap();
            assert_eq!(&back[..], &bytes[..]);
            assert!(in_memory(
                &memory,
                GuestAddress(addr),
                32,
                Permissions::Read
            ));
        }
        assert!(region_slice(&memory, GuestAddress(0xff0), 32).is_none());
        // Past the end, at the end, and an address whose end overflows.
        for addr in [0x1ff0, 0x2000, u64::MAX - 4] {
            assert!(!in_memory(
                &memory,
                GuestAddress(addr),
                32,
                Permissions::Write
            ));
            assert!(write(&memory, GuestAddress(addr), &bytes).is_err());
            let mut back = [0u8; 32];
            assert!(read(&memory, GuestAddress(addr), &mut back).is_err());
        }
        assert!(in_memory(
            &memory,
            GuestAddress(0x1fe0),
            32,
            Permissions::Write
        ));
    }

    use crate::block::request::Segment;

    fn segment(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn bytes_fill_segments_as_far_as_they_reach() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let written =
            bytes_to_guest(&memory, &[segment(0x10, 3), segment(0x20, 10)], b"abcdefgh").unwrap();
        assert_eq!(written, 8);
        let mut out = [0u8; 5];
        memory.read_slice(&mut out, GuestAddress(0x20)).unwrap();
        assert_eq!(&out, b"defgh");
        assert_eq!(bytes_to_guest(&memory, &[], b"abc").unwrap(), 0);
        assert_eq!(bytes_to_guest(&memory, &[segment(0, 4)], b"").unwrap(), 0);
    }
}
