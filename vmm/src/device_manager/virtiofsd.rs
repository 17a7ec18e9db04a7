//! Host directories shared with the guest over virtio-fs: what `--share`, `--rwdir` and
//! `--host-root` ask for, and the virtiofsd processes that serve them.
//!
//! vmm starts one virtiofsd per share on a socket in a private directory, connects to it as the
//! vhost-user frontend (`devices::fs`), and leaves the serving to it. virtiofsd sandboxes itself
//! (a mount namespace when vmm runs as root, as under QEMU). It dies with vmm: it exits when its
//! connection closes, and gets SIGKILL if vmm is killed first (PR_SET_PDEATHSIG). A virtiofsd
//! that dies while the VM runs closes the connection, which stops the VM with a message.

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where vmm looks for virtiofsd when `VMM_VIRTIOFSD` is not set, after `virtiofsd` in PATH:
/// Debian 13's package, then QEMU's C virtiofsd on Debian 12.
const KNOWN_PATHS: [&str; 2] = ["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];

/// How long virtiofsd may take to listen on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One directory shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// The host directory (absolute).
    pub host: PathBuf,
    /// Where the guest mounts it (absolute); the host path unless given.
    pub guest: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShareOptionError {
    #[error("--share needs a host directory")]
    MissingPath,
    #[error("--share option '{0}' is unknown: expected ro")]
    UnknownOption(String),
    #[error("share {0}: no such directory")]
    NotADirectory(String),
    #[error("share {0}: the guest path '{1}' must be absolute and must not contain spaces")]
    BadGuestPath(String, String),
}

impl ShareSpec {
    /// Parses `HOST_DIR[:GUEST_PATH][,ro]`; the host directory must exist.
    pub fn parse(text: &str) -> Result<Self, ShareOptionError> {
        let mut parts = text.split(',');
        let location = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(ShareOptionError::MissingPath)?;
        let mut read_only = false;
        for option in parts {
            match option {
                "ro" => read_only = true,
                other => return Err(ShareOptionError::UnknownOption(other.to_string())),
            }
        }
        let (host, guest) = match location.split_once(':') {
            Some((host, guest)) => (host, Some(guest)),
            None => (location, None),
        };
        let host = Self::directory(host)?;
        let guest = match guest {
            Some(guest) => {
                if !guest.starts_with('/') || guest.contains(char::is_whitespace) {
                    return Err(ShareOptionError::BadGuestPath(
                        host.display().to_string(),
                        guest.to_string(),
                    ));
                }
                PathBuf::from(guest)
            }
            None => host.clone(),
        };
        Ok(Self {
            host,
            guest,
            read_only,
        })
    }

    /// `--rwdir DIR`: DIR shared writable at the same path.
    pub fn rwdir(text: &str) -> Result<Self, ShareOptionError> {
        let host = Self::directory(text)?;
        Ok(Self {
            guest: host.clone(),
            host,
            read_only: false,
        })
    }

    /// The host root for `--host-root`: `/`, read-only.
    pub fn host_root() -> Self {
        Self {
            host: PathBuf::from("/"),
            guest: PathBuf::from("/"),
            read_only: true,
        }
    }

    fn directory(text: &str) -> Result<PathBuf, ShareOptionError> {
        let path = Path::new(text);
        match path.canonicalize() {
            Ok(path) if path.is_dir() => Ok(path),
            _ => Err(ShareOptionError::NotADirectory(text.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    #[error(
        "no virtiofsd found (looked for VMM_VIRTIOFSD, virtiofsd in PATH, {}); \
         install one with resources/install-deps.sh virtiofsd",
        KNOWN_PATHS.join(", ")
    )]
    NotFound,
    #[error("VMM_VIRTIOFSD={0} is not an executable file")]
    BadOverride(String),
    #[error("cannot make a private directory for the virtiofsd sockets")]
    SocketDir(#[source] std::io::Error),
    #[error("cannot start {0}")]
    Spawn(String, #[source] std::io::Error),
    #[error(
        "virtiofsd for {0} exited ({1}) before it listened on its socket; its messages are above"
    )]
    Exited(String, std::process::ExitStatus),
    #[error("virtiofsd for {0} did not listen on its socket within {1} s")]
    Timeout(String, u64),
}

/// The two command-line dialects: the Rust virtiofsd, and QEMU's older C one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Rust,
    Qemu,
}

/// The virtiofsd binary vmm uses.
#[derive(Debug, Clone)]
pub struct VirtiofsdBinary {
    path: PathBuf,
    dialect: Dialect,
}

impl VirtiofsdBinary {
    /// `VMM_VIRTIOFSD`, else `virtiofsd` in PATH, else the distributions' locations.
    pub fn find() -> Result<Self, VirtiofsdError> {
        let path = match std::env::var_os("VMM_VIRTIOFSD") {
            Some(path) => {
                let path = PathBuf::from(path);
                if !is_executable(&path) {
                    return Err(VirtiofsdError::BadOverride(path.display().to_string()));
                }
                path
            }
            None => std::env::var_os("PATH")
                .into_iter()
                .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
                .map(|dir| dir.join("virtiofsd"))
                .chain(KNOWN_PATHS.iter().map(PathBuf::from))
                .find(|path| is_executable(path))
                .ok_or(VirtiofsdError::NotFound)?,
        };
        // QEMU's C virtiofsd lives under /usr/lib/qemu and takes `-o` options.
        let dialect = if path.starts_with("/usr/lib/qemu") {
            Dialect::Qemu
        } else {
            Dialect::Rust
        };
        Ok(Self { path, dialect })
    }

    /// The arguments that serve `share` on `socket`.
    fn arguments(&self, share: &ShareSpec, socket: &Path, as_root: bool) -> Vec<String> {
        let socket = socket.display();
        let dir = share.host.display();
        // What the guest writes to a writable share it reads back through its own cache, so
        // only changes made on the host could go unseen: the guest revalidates what it cached
        // there (auto). A read-only share, above all the host's root, is cached without
        // revalidation (always): each program the command starts would otherwise cost lookups
        // and attribute round trips to virtiofsd for every path it touches.
        let cache = if share.read_only { "always" } else { "auto" };
        match self.dialect {
            Dialect::Rust => {
                let mut args = vec![
                    format!("--socket-path={socket}"),
                    format!("--shared-dir={dir}"),
                    format!("--cache={cache}"),
                    "--announce-submounts".to_string(),
                    "--log-level=error".to_string(),
                    // Without privileges virtiofsd can neither build a namespace nor switch
                    // credentials: it then serves files with the caller's own permissions.
                    format!("--sandbox={}", if as_root { "namespace" } else { "none" }),
                ];
                if share.read_only {
                    args.push("--readonly".to_string());
                }
                args
            }
            Dialect::Qemu => vec![
                format!("--socket-path={socket}"),
                "-o".to_string(),
                format!("source={dir}"),
                "-o".to_string(),
                format!("cache={cache}"),
                "-o".to_string(),
                "announce_submounts".to_string(),
                "-o".to_string(),
                format!("sandbox={}", if as_root { "chroot" } else { "none" }),
            ],
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The private directory holding the sockets, removed with it.
pub struct SocketDir(PathBuf);

impl SocketDir {
    pub fn new() -> Result<Self, VirtiofsdError> {
        let mut template = std::env::temp_dir()
            .join("vmm-virtiofs.XXXXXX")
            .into_os_string()
            .into_encoded_bytes();
        template.push(0);
        // SAFETY: `template` is a writable NUL-terminated buffer that mkdtemp fills in place.
        let made = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
        if made.is_null() {
            return Err(VirtiofsdError::SocketDir(std::io::Error::last_os_error()));
        }
        template.pop();
        // SAFETY: the bytes came from an OsString plus what mkdtemp wrote (ASCII).
        let path = unsafe { std::ffi::OsString::from_encoded_bytes_unchecked(template) };
        Ok(Self(PathBuf::from(path)))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running virtiofsd and the connection to it.
pub struct Virtiofsd {
    child: Child,
    pub share: ShareSpec,
    /// Set once the VM may run: from then on vmm's seccomp filters forbid kill and wait, and
    /// virtiofsd ends by itself (its connection closes, or PR_SET_PDEATHSIG).
    serving: bool,
}

impl Virtiofsd {
    /// Starts virtiofsd for `share` on `dir/NAME.sock` and connects to it.
    pub fn start(
        binary: &VirtiofsdBinary,
        share: &ShareSpec,
        dir: &SocketDir,
        name: &str,
    ) -> Result<(Self, UnixStream), VirtiofsdError> {
        let socket = dir.path().join(format!("{name}.sock"));
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let mut command = Command::new(&binary.path);
        command
            .args(binary.arguments(share, &socket, as_root))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
        // which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| VirtiofsdError::Spawn(binary.path.display().to_string(), e))?;
        let mut daemon = Self {
            child,
            share: share.clone(),
            serving: false,
        };
        let started = Instant::now();
        loop {
            if let Ok(stream) = UnixStream::connect(&socket) {
                // Connected: nobody else may reach this virtiofsd through its path.
                let _ = std::fs::remove_file(&socket);
                return Ok((daemon, stream));
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(VirtiofsdError::Exited(
                    share.host.display().to_string(),
                    status,
                ));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(VirtiofsdError::Timeout(
                    share.host.display().to_string(),
                    START_TIMEOUT.as_secs(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Virtiofsd {
    /// The VM is about to run: leave the process alone from now on (see `serving`).
    pub fn set_serving(&mut self) {
        self.serving = true;
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        // A virtiofsd whose VM never ran (setup failed) must not outlive vmm.
        if self.serving {
            return;
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_options() {
        let tmp = std::env::temp_dir().canonicalize().unwrap();
        let text = tmp.display().to_string();
        assert_eq!(
            ShareSpec::parse(&text),
            Ok(ShareSpec {
                host: tmp.clone(),
                guest: tmp.clone(),
                read_only: false
            })
        );
        assert_eq!(
            ShareSpec::parse(&format!("{text}:/mnt/x,ro")),
            Ok(ShareSpec {
                host: tmp.clone(),
                guest: PathBuf::from("/mnt/x"),
                read_only: true
            })
        );
        assert_eq!(ShareSpec::parse(""), Err(ShareOptionError::MissingPath));
        assert_eq!(
            ShareSpec::parse(&format!("{text},rw")),
            Err(ShareOptionError::UnknownOption("rw".into()))
        );
        assert_eq!(
            ShareSpec::parse("/no/such/dir"),
            Err(ShareOptionError::NotADirectory("/no/such/dir".into()))
        );
        assert!(matches!(
            ShareSpec::parse(&format!("{text}:relative")),
            Err(ShareOptionError::BadGuestPath(..))
        ));
        assert_eq!(
            ShareSpec::rwdir("/no/such/dir"),
            Err(ShareOptionError::NotADirectory("/no/such/dir".into()))
        );
    }

    #[test]
    fn each_dialect_gets_its_options() {
        let share = ShareSpec {
            host: PathBuf::from("/srv/x"),
            guest: PathBuf::from("/srv/x"),
            read_only: true,
        };
        let rust = VirtiofsdBinary {
            path: PathBuf::from("/usr/libexec/virtiofsd"),
            dialect: Dialect::Rust,
        };
        let args = rust.arguments(&share, Path::new("/run/s.sock"), false);
        assert!(args.contains(&"--shared-dir=/srv/x".to_string()));
        assert!(args.contains(&"--readonly".to_string()));
        assert!(args.contains(&"--sandbox=none".to_string()));
        let qemu = VirtiofsdBinary {
            path: PathBuf::from("/usr/lib/qemu/virtiofsd"),
            dialect: Dialect::Qemu,
        };
        let args = qemu.arguments(&share, Path::new("/run/s.sock"), true);
        assert!(args.contains(&"source=/srv/x".to_string()));
        assert!(args.contains(&"sandbox=chroot".to_string()));
        assert!(args.contains(&"cache=always".to_string()));
    }

    #[test]
    fn only_read_only_shares_are_cached_without_revalidation() {
        let mut share = ShareSpec {
            host: PathBuf::from("/srv/x"),
            guest: PathBuf::from("/srv/x"),
            read_only: true,
        };
        let rust = VirtiofsdBinary {
            path: PathBuf::from("/usr/libexec/virtiofsd"),
            dialect: Dialect::Rust,
        };
        let socket = Path::new("/run/s.sock");
        assert!(rust
            .arguments(&share, socket, true)
            .contains(&"--cache=always".to_string()));
        share.read_only = false;
        let args = rust.arguments(&share, socket, true);
        assert!(args.contains(&"--cache=auto".to_string()));
        assert!(!args.contains(&"--readonly".to_string()));
    }

    #[test]
    fn a_bad_override_is_named() {
        // Only this test sets the variable in this process.
        std::env::set_var("VMM_VIRTIOFSD", "/no/such/virtiofsd");
        let found = VirtiofsdBinary::find();
        std::env::remove_var("VMM_VIRTIOFSD");
        assert!(matches!(found, Err(VirtiofsdError::BadOverride(p)) if p == "/no/such/virtiofsd"));
    }
}
