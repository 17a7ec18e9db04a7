//! Advisory locks on disk images, so that two VMMs never write one image at once: a writer takes
//! an exclusive lock, a read-only user a shared one. Locks are flock(2) locks, held as long as the
//! file stays open, and released by the kernel when the process dies (even by SIGKILL).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Locks `file` without waiting; `ErrorKind::WouldBlock` means another process holds a
/// conflicting lock.
pub fn lock(file: &File, exclusive: bool) -> io::Result<()> {
    let mode = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock only acts on the descriptor, which `file` keeps open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether an error from `lock` means "in use by another process".
pub fn is_conflict(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_exclude_everyone_and_readers_share() {
        let path = std::env::temp_dir().join(format!("vmm-lock-{}", std::process::id()));
        std::fs::write(&path, b"x").unwrap();
        let open = || File::open(&path).unwrap();
        let (a, b, c) = (open(), open(), open());
        lock(&a, false).unwrap();
        lock(&b, false).unwrap();
        assert!(is_conflict(&lock(&c, true).unwrap_err()));
        drop((a, b));
        lock(&c, true).unwrap();
        assert!(is_conflict(&lock(&open(), false).unwrap_err()));
        drop(c);
        lock(&open(), true).unwrap();
        std::fs::remove_file(path).unwrap();
    }
}
