//! Storage behind a plain disk. `PlainExecutor` speaks bytes at offsets through `BlockBackend`;
//! `RawFile` serves them from a regular file or a host block device, with the vectored I/O of
//! `crate::file_io` straight between guest memory and the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::{GuestAddress, GuestMemoryError};

use super::data::{backend_to_guest, guest_to_backend, DataError};
use super::request::Segment;
use crate::file_io::GuestBuffers;
use crate::virtio::GuestMemoryMmap;

/// Byte-addressed storage. Offsets and lengths passed in are already checked against `size`.
pub trait BlockBackend: Send {
    /// Size of the storage in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Fills all of `buf` from `offset`; a short read is an error.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset`; a short write is an error.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes completed writes durable.
    fn flush(&mut self) -> io::Result<()>;
    /// The smallest unit the storage can address, in bytes (the guest's blk_size).
    fn logical_block_size(&self) -> u32 {
        512
    }
    /// The smallest unit the storage writes without reading around it, in bytes (a power-of-two
    /// multiple of the logical block size; the guest's topology fields).
    fn physical_block_size(&self) -> u32 {
        self.logical_block_size()
    }

    /// Writes the guest bytes of `segments`, in order, from `offset` on. The default bounces a
    /// chunk at a time through `write_at`; a file writes them all with one call.
    fn write_segments(
        &mut self,
        memory: &GuestMemoryMmap,
        segments: &[Segment],
        offset: u64,
    ) -> Result<(), DataError> {
        guest_to_backend(memory, segments, self, offset)
    }

    /// Fills the guest bytes of `segments`, in order, from `offset` on. The default bounces a
    /// chunk at a time through `read_at`; a file reads them all with one call.
    fn read_segments(
        &mut self,
        memory: &GuestMemoryMmap,
        segments: &[Segment],
        offset: u64,
    ) -> Result<(), DataError> {
        backend_to_guest(memory, segments, self, offset)
    }
}

/// `segments` of guest memory resolved for vectored I/O; an address outside guest memory is
/// the guest's fault.
fn guest_buffers<'m>(
    memory: &'m GuestMemoryMmap,
    segments: &'m [Segment],
) -> Result<GuestBuffers<'m>, DataError> {
    GuestBuffers::new(memory, segments).map_err(|_| {
        let address = segments.first().map_or(GuestAddress(0), |s| s.addr);
        DataError::Guest(GuestMemoryError::InvalidGuestAddress(address))
    })
}

/// Errors opening a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backing file could not be opened.
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another process holds a conflicting lock on the file.
    #[error("{path} is in use by another process (it is locked)")]
    InUse { path: PathBuf },
    /// The size of the backing file could not be found.
    #[error("cannot find the size of the backing file")]
    Size(#[source] io::Error),
}

/// A file (or host block device) used as-is: byte N of the disk is byte N of the file.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
    read_only: bool,
    /// A host block device's logical and physical block sizes; 512 for a regular file.
    logical_block_size: u32,
    physical_block_size: u32,
}

impl RawFile {
    /// Opens `path` read-write, or read-only when `read_only` is set.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BackendError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BackendError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        // Writers exclude everyone; read-only users may share.
        crate::file_lock::lock(&file, !read_only).map_err(|source| {
            if crate::file_lock::is_conflict(&source) {
                BackendError::InUse {
                    path: path.to_path_buf(),
                }
            } else {
                BackendError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Self::new(file, read_only)
    }

    /// Wraps an open file. Its size is taken now; seeking to the end also works for block
    /// devices, whose metadata length is 0.
    pub fn new(mut file: File, read_only: bool) -> Result<Self, BackendError> {
        let size = file.seek(SeekFrom::End(0)).map_err(BackendError::Size)?;
        let (logical_block_size, physical_block_size) = block_sizes(&file);
        Ok(RawFile {
            file,
            size,
            read_only,
            logical_block_size,
            physical_block_size,
        })
    }
}

/// The logical and physical block sizes of a host block device (BLKSSZGET, BLKPBSZGET), so
/// that a guest on a 4Kn disk addresses it in 4 KiB blocks as the host does; 512 for anything
/// else, or for sizes the guest's driver could not take (logical: a power of two from 512 to
/// 4096; physical: a power-of-two multiple of it).
fn block_sizes(file: &File) -> (u32, u32) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileTypeExt;
    let is_device = file
        .metadata()
        .is_ok_and(|m| m.file_type().is_block_device());
    if !is_device {
        return (512, 512);
    }
    let (mut logical, mut physical): (libc::c_int, libc::c_uint) = (0, 0);
    // SAFETY: both ioctls write one int-sized value into the pointed-to variable, which
    // lives across the call; the descriptor is open.
    let asked = unsafe {
        libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut logical) == 0
            && libc::ioctl(file.as_raw_fd(), libc::BLKPBSZGET, &mut physical) == 0
    };
    let logical = u32::try_from(logical).unwrap_or(0);
    if !asked || !logical.is_power_of_two() || !(512..=4096).contains(&logical) {
        return (512, 512);
    }
    let physical = if physical.is_power_of_two() && physical >= logical {
        physical
    } else {
        logical
    };
    (logical, physical)
}

impl RawFile {
    /// Refuses writes to a read-only backend.
    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the backend is read-only",
            ));
        }
        Ok(())
    }
}

impl BlockBackend for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.writable()?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn logical_block_size(&self) -> u32 {
        self.logical_block_size
    }

    fn physical_block_size(&self) -> u32 {
        self.physical_block_size
    }

    fn write_segments(
        &mut self,
        memory: &GuestMemoryMmap,
        segments: &[Segment],
        offset: u64,
    ) -> Result<(), DataError> {
        self.writable().map_err(DataError::Backend)?;
        // One copy, guest memory to the file, in one pwritev as a raw pwrite would do.
        guest_buffers(memory, segments)?
            .write_to(&self.file, offset)
            .map_err(DataError::Backend)
    }

    fn read_segments(
        &mut self,
        memory: &GuestMemoryMmap,
        segments: &[Segment],
        offset: u64,
    ) -> Result<(), DataError> {
        guest_buffers(memory, segments)?
            .read_from(&self.file, offset)
            .map_err(DataError::Backend)
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    fn segment(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn read_only_users_share_a_file() {
        let temp = TempFile::new().unwrap();
        temp.as_file().set_len(4096).unwrap();
        let a = RawFile::open(temp.as_path(), true).unwrap();
        let b = RawFile::open(temp.as_path(), true).unwrap();
        assert!(matches!(
            RawFile::open(temp.as_path(), false),
            Err(BackendError::InUse { .. })
        ));
        drop((a, b));
        RawFile::open(temp.as_path(), false).unwrap();
    }

    #[test]
    fn raw_file_reads_and_writes_at_offsets() {
        let temp = TempFile::new_with_prefix(std::env::temp_dir().join("devices-rawfile")).unwrap();
        temp.as_file().set_len(4096).unwrap();
        let mut backend = RawFile::open(temp.as_path(), false).unwrap();
        // A second writer, or a reader beside a writer, is refused while this one is open.
        assert!(matches!(
            RawFile::open(temp.as_path(), false),
            Err(BackendError::InUse { .. })
        ));
        assert!(matches!(
            RawFile::open(temp.as_path(), true),
            Err(BackendError::InUse { .. })
        ));
        assert_eq!(backend.size(), 4096);
        assert!(!backend.read_only());
        backend.write_at(1000, b"hello").unwrap();
        backend.flush().unwrap();
        let mut buf = [0u8; 7];
        backend.read_at(999, &mut buf).unwrap();
        assert_eq!(&buf, b"\0hello\0");
        // Reading past the end is a short read, reported as an error.
        assert!(backend.read_at(4090, &mut buf).is_err());
    }

    #[test]
    fn read_only_raw_file_refuses_writes() {
        let temp = TempFile::new_with_prefix(std::env::temp_dir().join("devices-rawfile")).unwrap();
        temp.as_file().set_len(512).unwrap();
        let mut backend = RawFile::open(temp.as_path(), true).unwrap();
        assert!(backend.read_only());
        assert!(backend.write_at(0, b"x").is_err());
        assert!(backend.flush().is_ok());
    }

    #[test]
    fn opening_a_missing_file_is_an_error() {
        let error = RawFile::open(Path::new("/nonexistent/disk.img"), false).unwrap_err();
        assert!(matches!(error, BackendError::Open { .. }));
    }

    #[test]
    fn a_file_moves_data_straight_between_guest_memory_and_disk() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let temp = TempFile::new().unwrap();
        temp.as_file().set_len(0x4000).unwrap();
        let mut file = RawFile::open(temp.as_path(), false).unwrap();
        let pattern: Vec<u8> = (0..0x1800u32).map(|i| (i % 253) as u8).collect();
        memory.write_slice(&pattern, GuestAddress(0x1000)).unwrap();
        file.write_segments(&memory, &[segment(0x1000, pattern.len() as u32)], 0x800)
            .unwrap();
        let mut on_disk = vec![0u8; pattern.len()];
        temp.as_file().read_exact_at(&mut on_disk, 0x800).unwrap();
        assert_eq!(on_disk, pattern);
        file.read_segments(&memory, &[segment(0x8000, pattern.len() as u32)], 0x800)
            .unwrap();
        let mut back = vec![0u8; pattern.len()];
        memory.read_slice(&mut back, GuestAddress(0x8000)).unwrap();
        assert_eq!(back, pattern);
        // Outside guest memory: the guest's fault.
        assert!(matches!(
            file.write_segments(&memory, &[segment(0xf000, 0x2000)], 0),
            Err(DataError::Guest(_))
        ));
        // Past the end of the file: an error either way (the guest sees IOERR).
        assert!(matches!(
            file.read_segments(&memory, &[segment(0, 0x1000)], 0x3800),
            Err(DataError::Backend(_)) | Err(DataError::Guest(_))
        ));
        let mut read_only = RawFile::open(temp.as_path(), true);
        assert!(read_only.is_err(), "the writer holds the lock");
        drop(file);
        read_only = RawFile::open(temp.as_path(), true);
        assert!(matches!(
            read_only
                .unwrap()
                .write_segments(&memory, &[segment(0x1000, 512)], 0),
            Err(DataError::Backend(_))
        ));
    }

    #[test]
    fn a_file_moves_many_segments_in_order() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
        let temp = TempFile::new().unwrap();
        temp.as_file().set_len(0x8000).unwrap();
        let mut file = RawFile::open(temp.as_path(), false).unwrap();
        // More segments than GuestBuffers keeps inline, out of address order, odd lengths.
        let segment = |addr: u64, len: u32| Segment {
            addr: GuestAddress(addr),
            len,
        };
        let source = [
            segment(0x9000, 700),
            segment(0x1000, 512),
            segment(0x5000, 300),
            segment(0x3000, 1024),
            segment(0x7000, 1),
            segment(0x2000, 511),
        ];
        let total: u32 = source.iter().map(|s| s.len).sum();
        let pattern: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut at = 0;
        for s in &source {
            let end = at + s.len as usize;
            memory.write_slice(&pattern[at..end], s.addr).unwrap();
            at = end;
        }
        file.write_segments(&memory, &source, 0x1000).unwrap();
        let mut on_disk = vec![0u8; pattern.len()];
        temp.as_file().read_exact_at(&mut on_disk, 0x1000).unwrap();
        assert_eq!(on_disk, pattern);

        let target = [
            segment(0x10000, 1000),
            segment(0x11000, 1),
            segment(0x12000, 1047),
            segment(0x13000, 500),
            segment(0x14000, 500),
        ];
        file.read_segments(&memory, &target, 0x1000).unwrap();
        let mut back = Vec::new();
        for s in &target {
            let mut part = vec![0u8; s.len as usize];
            memory.read_slice(&mut part, s.addr).unwrap();
            back.extend(part);
        }
        assert_eq!(back, pattern);
        // A segment outside guest memory fails the whole transfer before any I/O.
        let outside = [segment(0x1000, 512), segment(0x1f000, 0x2000)];
        assert!(matches!(
            file.write_segments(&memory, &outside, 0),
            Err(DataError::Guest(_))
        ));
    }
}
