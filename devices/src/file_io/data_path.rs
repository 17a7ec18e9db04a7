//! Sector-addressed data I/O on a shared file, usable from several threads at once, so that the
//! zoned disk's requests to different zones move data in parallel while the zone state stays
//! behind one lock (see `zoned::lanes`); buffered, or O_DIRECT through an aligned bounce buffer.

use std::alloc::Layout;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::Arc;

use super::{invalid_input, GuestBuffers};
use crate::block::SECTOR_SIZE;

/// Alignment of O_DIRECT buffers: a page, which satisfies every logical block size up to 4096.
const BUFFER_ALIGNMENT: usize = 4096;

/// Sector-addressed data I/O on a file or block device. Cloning shares the file.
#[derive(Clone, Debug)]
pub struct DataPath {
    file: Arc<File>,
    /// File offset of sector 0.
    base: u64,
    /// For a file opened O_DIRECT: its logical block size. I/O then goes through an aligned
    /// buffer, reads are widened to whole blocks, writes must be whole blocks.
    direct_block: Option<u64>,
    /// Called with the sector of every write before it starts (tests of concurrency).
    #[cfg(test)]
    write_hook: Option<WriteHook>,
}

#[cfg(test)]
#[derive(Clone)]
pub(crate) struct WriteHook(pub Arc<dyn Fn(u64) + Send + Sync>);

#[cfg(test)]
impl std::fmt::Debug for WriteHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteHook")
    }
}

impl DataPath {
    /// Buffered I/O: sector `s` lives at `base + s * 512`.
    pub fn buffered(file: Arc<File>, base: u64) -> Self {
        DataPath {
            file,
            base,
            direct_block: None,
            #[cfg(test)]
            write_hook: None,
        }
    }

    /// O_DIRECT I/O on a device with `logical_block_size`-byte blocks (a power of two).
    pub fn direct(file: Arc<File>, logical_block_size: u64) -> Self {
        DataPath {
            file,
            base: 0,
            direct_block: Some(logical_block_size.max(1)),
            #[cfg(test)]
            write_hook: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn with_write_hook(mut self, hook: Arc<dyn Fn(u64) + Send + Sync>) -> Self {
        self.write_hook = Some(WriteHook(hook));
        self
    }

    /// Whether I/O bypasses the page cache (and so takes device time, worth parallelizing).
    pub fn is_direct(&self) -> bool {
        self.direct_block.is_some()
    }

    /// The shared file (for ioctls and syncs).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn offset(&self, sector: u64) -> io::Result<u64> {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|o| o.checked_add(self.base))
            .ok_or_else(invalid_input)
    }

    /// Reads `buf.len()` bytes at `sector`. For O_DIRECT this allocates a bounce buffer per
    /// call: a caller serving requests keeps one and uses `read_with`.
    pub fn read(&self, sector: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_with(sector, buf, &mut AlignedBuffer::empty())
    }

    /// Writes `data` at `sector` (a bounce buffer per call for O_DIRECT, as `read`).
    pub fn write(&self, sector: u64, data: &[u8]) -> io::Result<()> {
        self.write_with(sector, data, &mut AlignedBuffer::empty())
    }

    /// The bounce buffer bytes that O_DIRECT I/O of `len` bytes at any sector needs (a read is
    /// widened to the logical blocks around it); 0 for buffered I/O, which needs none.
    pub fn bounce_len(&self, len: u64) -> u64 {
        match self.direct_block {
            None => 0,
            Some(block) => len.div_ceil(block).saturating_add(1).saturating_mul(block),
        }
    }

    /// `read`, reusing `bounce` for O_DIRECT (a caller on one thread keeps one buffer).
    pub fn read_with(
        &self,
        sector: u64,
        buf: &mut [u8],
        bounce: &mut AlignedBuffer,
    ) -> io::Result<()> {
        let Some(block) = self.direct_block else {
            return self.file.read_exact_at(buf, self.offset(sector)?);
        };
        self.read_direct(block, sector, buf.len(), bounce, |data| {
            buf.copy_from_slice(data);
            Ok(())
        })
    }

    /// `write`, reusing `bounce` for O_DIRECT.
    pub fn write_with(
        &self,
        sector: u64,
        data: &[u8],
        bounce: &mut AlignedBuffer,
    ) -> io::Result<()> {
        let Some(block) = self.direct_block else {
            self.before_write(sector);
            return self.file.write_all_at(data, self.offset(sector)?);
        };
        self.write_direct(block, sector, data.len(), bounce, |into| {
            into.copy_from_slice(data);
            Ok(())
        })
    }

    /// Writes `buffers` at `sector`: straight from guest memory, or for O_DIRECT copied once
    /// into `bounce` (grown if it is too short, never shrunk).
    pub fn write_from_guest(
        &self,
        sector: u64,
        buffers: &GuestBuffers<'_>,
        bounce: &mut AlignedBuffer,
    ) -> io::Result<()> {
        let len = buffers.len();
        let Some(block) = self.direct_block else {
            self.before_write(sector);
            return buffers.write_to(&self.file, self.offset(sector)?);
        };
        self.write_direct(block, sector, len, bounce, |into| buffers.copy_out(into))
    }

    /// Reads `buffers.len()` bytes at `sector` into `buffers`: straight into guest memory, or
    /// for O_DIRECT copied once out of `bounce`.
    pub fn read_into_guest(
        &self,
        sector: u64,
        buffers: &GuestBuffers<'_>,
        bounce: &mut AlignedBuffer,
    ) -> io::Result<()> {
        let len = buffers.len();
        let Some(block) = self.direct_block else {
            return buffers.read_from(&self.file, self.offset(sector)?);
        };
        self.read_direct(block, sector, len, bounce, |data| buffers.copy_in(data))
    }

    /// O_DIRECT read of `len` bytes at `sector`: the enclosing logical blocks go into
    /// `bounce`, and `consume` gets the `len` bytes asked for.
    fn read_direct(
        &self,
        block: u64,
        sector: u64,
        len: usize,
        bounce: &mut AlignedBuffer,
        consume: impl FnOnce(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let offset = self.offset(sector)?;
        let start = offset / block * block;
        let end = (offset + len as u64).div_ceil(block) * block;
        let skip = (offset - start) as usize;
        let whole = usize::try_from(end - start).map_err(|_| invalid_input())?;
        let bounce = bounce.prefix(whole)?;
        self.file.read_exact_at(bounce, start)?;
        consume(&bounce[skip..skip + len])
    }

    /// O_DIRECT write of `len` bytes (whole logical blocks) at `sector`, from `bounce` after
    /// `fill` has filled it.
    fn write_direct(
        &self,
        block: u64,
        sector: u64,
        len: usize,
        bounce: &mut AlignedBuffer,
        fill: impl FnOnce(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let offset = self.offset(sector)?;
        self.before_write(sector);
        if !offset.is_multiple_of(block) || !(len as u64).is_multiple_of(block) {
            return Err(invalid_input());
        }
        let bounce = bounce.prefix(len)?;
        fill(bounce)?;
        self.file.write_all_at(bounce, offset)
    }

    /// Tells the test hook, if any, that a write to `sector` starts.
    fn before_write(&self, _sector: u64) {
        #[cfg(test)]
        if let Some(hook) = &self.write_hook {
            (hook.0)(_sector);
        }
    }
}

/// The layout of an [`AlignedBuffer`] that has not allocated.
const NO_ALLOCATION: Layout = match Layout::from_size_align(0, BUFFER_ALIGNMENT) {
    Ok(layout) => layout,
    Err(_) => panic!("BUFFER_ALIGNMENT is a power of two"),
};

/// A heap buffer aligned for O_DIRECT. It only grows: whoever serves requests keeps one and
/// reuses it, so that steady-state I/O allocates nothing.
pub struct AlignedBuffer {
    ptr: NonNull<u8>,
    /// Size 0 for a buffer that has not allocated yet.
    layout: Layout,
}

// SAFETY: the buffer owns its allocation exclusively, like a Vec<u8>; nothing else points to it.
unsafe impl Send for AlignedBuffer {}

impl AlignedBuffer {
    /// A buffer of at least `len` bytes, and at least a page.
    pub fn new(len: usize) -> io::Result<Self> {
        let mut buffer = Self::empty();
        buffer.reserve(len.max(BUFFER_ALIGNMENT))?;
        Ok(buffer)
    }

    /// A buffer that allocates only when first used.
    pub fn empty() -> Self {
        AlignedBuffer {
            ptr: NonNull::dangling(),
            layout: NO_ALLOCATION,
        }
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Whether nothing is allocated yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Grows the buffer to at least `len` bytes (to the next power of two, so a run of
    /// growing requests reallocates a few times only). The contents are not kept.
    pub fn reserve(&mut self, len: usize) -> io::Result<()> {
        if self.len() >= len {
            return Ok(());
        }
        let size = len
            .checked_next_power_of_two()
            .ok_or_else(invalid_input)?
            .max(BUFFER_ALIGNMENT);
        let layout =
            Layout::from_size_align(size, BUFFER_ALIGNMENT).map_err(|_| invalid_input())?;
        // SAFETY: the layout has a non-zero size (at least BUFFER_ALIGNMENT).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // The old allocation, if any, is freed by its drop.
        *self = AlignedBuffer { ptr, layout };
        Ok(())
    }

    /// The first `len` bytes, after growing the buffer if it is shorter.
    pub fn prefix(&mut self, len: usize) -> io::Result<&mut [u8]> {
        self.reserve(len)?;
        Ok(&mut self.as_mut_slice()[..len])
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to layout.size() initialized (zeroed at allocation) bytes owned by
        // self, or is a dangling, non-null pointer for size 0; &mut self guarantees no other
        // reference to them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// Whether the start is aligned for O_DIRECT.
    pub fn is_aligned(&self) -> bool {
        self.ptr.as_ptr().addr().is_multiple_of(BUFFER_ALIGNMENT)
    }

    /// Where the buffer starts (tests of its reuse).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        if self.layout.size() == 0 {
            return;
        }
        // SAFETY: ptr was allocated with exactly this layout and is freed only here.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempfile::TempFile;

    #[test]
    fn buffered_io_is_offset_by_the_base() {
        let temp = TempFile::new().unwrap();
        let file = Arc::new(temp.into_file());
        file.set_len(8192).unwrap();
        let path = DataPath::buffered(file.clone(), 1024);
        path.write(2, &[7u8; 512]).unwrap();
        let mut raw = [0u8; 512];
        file.read_exact_at(&mut raw, 1024 + 1024).unwrap();
        assert_eq!(raw, [7u8; 512]);
        let mut back = [0u8; 512];
        path.clone().read(2, &mut back).unwrap();
        assert_eq!(back, [7u8; 512]);
        assert!(path.read(u64::MAX, &mut back).is_err());
    }

    #[test]
    fn direct_io_widens_reads_and_refuses_partial_block_writes() {
        // A regular file accepts any alignment, so this checks the arithmetic, not O_DIRECT.
        let temp = TempFile::new().unwrap();
        let file = Arc::new(temp.into_file());
        file.set_len(16384).unwrap();
        let path = DataPath::direct(file.clone(), 4096);
        let block: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        path.write(8, &block).unwrap();
        let mut middle = [0u8; 512];
        path.read(9, &mut middle).unwrap();
        assert_eq!(&middle[..], &block[512..1024]);
        assert_eq!(
            path.write(9, &block).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        assert_eq!(
            path.write(8, &block[..512]).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
    }

    #[test]
    fn guest_buffers_go_through_the_aligned_buffer_for_direct_io() {
        use crate::block::Segment;
        use vm_memory::{Bytes, GuestAddress};
        let memory =
            crate::virtio::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let temp = TempFile::new().unwrap();
        let file = Arc::new(temp.into_file());
        file.set_len(16384).unwrap();
        let path = DataPath::direct(file.clone(), 4096);
        let block: Vec<u8> = (0..4096u32).map(|i| (i % 249) as u8).collect();
        memory
            .write_slice(&block[..1000], GuestAddress(0x1000))
            .unwrap();
        memory
            .write_slice(&block[1000..], GuestAddress(0x5000))
            .unwrap();
        let seg = |addr: u64, len: u32| Segment {
            addr: GuestAddress(addr),
            len,
        };
        let source = [seg(0x1000, 1000), seg(0x5000, 3096)];
        let from = GuestBuffers::new(&memory, &source).unwrap();
        let mut bounce = AlignedBuffer::empty();
        path.write_from_guest(8, &from, &mut bounce).unwrap();
        let mut on_disk = vec![0u8; 4096];
        file.read_exact_at(&mut on_disk, 8 * 512).unwrap();
        assert_eq!(on_disk, block);
        // A read inside the block is widened to it and lands in the guest's pieces.
        let target = [seg(0x9000, 100), seg(0xa000, 412)];
        let into = GuestBuffers::new(&memory, &target).unwrap();
        path.read_into_guest(9, &into, &mut bounce).unwrap();
        let mut first = vec![0u8; 100];
        let mut second = vec![0u8; 412];
        memory.read_slice(&mut first, GuestAddress(0x9000)).unwrap();
        memory
            .read_slice(&mut second, GuestAddress(0xa000))
            .unwrap();
        assert_eq!(first, &block[512..612]);
        assert_eq!(second, &block[612..1024]);
        // Not whole blocks: refused before anything is written.
        let one = [seg(0x1000, 512)];
        let short = GuestBuffers::new(&memory, &one).unwrap();
        assert_eq!(
            path.write_from_guest(8, &short, &mut bounce)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
    }

    #[test]
    fn aligned_buffer_grows_and_stays_aligned() {
        let mut buffer = AlignedBuffer::new(100).unwrap();
        assert_eq!(buffer.len(), BUFFER_ALIGNMENT);
        assert_eq!(
            buffer.prefix(3 * BUFFER_ALIGNMENT + 1).unwrap().len(),
            3 * BUFFER_ALIGNMENT + 1
        );
        assert!(buffer.len() > 3 * BUFFER_ALIGNMENT);
        assert!(buffer.is_aligned());
        // Shorter uses keep the allocation.
        let start = buffer.as_ptr();
        buffer.prefix(512).unwrap();
        buffer.prefix(buffer.len()).unwrap();
        assert_eq!(buffer.as_ptr(), start);
        // An empty buffer allocates on first use only.
        let mut empty = AlignedBuffer::empty();
        assert!(empty.is_empty());
        assert!(empty.prefix(0).unwrap().is_empty());
        assert_eq!(empty.prefix(5000).unwrap().len(), 5000);
        assert!(empty.is_aligned() && empty.len() == 2 * BUFFER_ALIGNMENT);
    }
}
