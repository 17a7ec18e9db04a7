//! What the user asked for, validated: the VM's configuration and the kernel command line.

use std::path::{Path, PathBuf};

use devices::size::{Size, SizeUnit};

use crate::arch::mptable;
use crate::device_manager::DiskSpec;

/// Smallest guest memory vmm accepts: a compressed kernel and a small initrd must fit.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest memory vmm accepts (64 TiB): keeps every byte address computation in range.
pub const MAX_MEMORY_MIB: u64 = 64 << 20;

/// Parameters vmm adds to the kernel command line unless the user set them: the serial console,
/// reboot through the keyboard controller (which vmm turns into an exit), and an immediate
/// reboot on panic so that a crashed kernel ends the run instead of hanging it.
const DEFAULT_PARAMS: [(&str, &str); 3] = [
    ("console", "console=ttyS0"),
    ("reboot", "reboot=k"),
    ("panic", "panic=-1"),
];

/// How the guest learns about the virtio-mmio devices.
///
/// `Both` is the default because it is the one setting that finds the devices with every kernel:
/// one with only cmdline devices (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), one with only ACPI
/// (Debian's cloud kernel), one without ACPI (it reads the MP table and the command line). A
/// kernel with both registers each window twice: the ACPI device first (ACPI enumerates before
/// the cmdline devices are registered), which works, then the cmdline one, whose probe fails
/// with -EBUSY ("virtio-mmio: probe of virtio-mmio.0 failed with error -16") because the region
/// is taken. One harmless log line per device; `Acpi` or `Cmdline` avoids it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Discovery {
    /// `virtio_mmio.device=` entries on the kernel command line; no ACPI tables.
    Cmdline,
    /// ACPI tables (DSDT devices with _HID LNRO0005); nothing on the command line.
    Acpi,
    /// Both: works with cmdline-only, ACPI-only and non-ACPI kernels.
    #[default]
    Both,
}

impl Discovery {
    pub fn uses_cmdline(self) -> bool {
        matches!(self, Discovery::Cmdline | Discovery::Both)
    }

    pub fn uses_acpi(self) -> bool {
        matches!(self, Discovery::Acpi | Discovery::Both)
    }
}

/// Whether vmm's threads run under seccomp filters (see `crate::host::seccomp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Seccomp {
    /// Each thread may make only the system calls it needs once the VM runs.
    #[default]
    On,
    /// No filter: for debugging, e.g. under strace or with a device that needs a new call.
    Off,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The user's kernel command line; vmm adds its defaults and device entries.
    pub cmdline: String,
    /// Plain and zoned disks, in command-line order (vda, vdb, ...).
    pub disks: Vec<DiskSpec>,
    /// Directories shared over virtio-fs: the host's root first with `--host-root`, then each
    /// `--rwdir` and `--share` (`virtiofsd`).
    pub shares: Vec<crate::device_manager::virtiofsd::ShareSpec>,
    /// How devices are announced: command line, ACPI tables, or both.
    pub discovery: Discovery,
    pub memory_mib: u64,
    pub cpus: u32,
    /// Print boot-time milestones on exit.
    pub boot_time: bool,
    /// Seccomp filters on vmm's threads once the VM is set up.
    pub seccomp: Seccomp,
    /// Map the kernel and initrd files into guest memory rather than copy them
    /// (`boot::kernel::load_kernel`, `boot::initrd::PendingInitrd::map`).
    pub map_images: bool,
    /// `--power-cut`: when the power goes and what the `cache=volatile` disks lose.
    pub power_cut: Option<PowerCutSpec>,
    /// Switches only tests set; all off in normal use.
    pub test_hooks: TestHooks,
}

/// When `--power-cut` cuts the power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerCutWhen {
    /// `after=DURATION`: that long after vmm started.
    After(std::time::Duration),
    /// `flush=N`: when the Nth FLUSH reaches a `cache=volatile` disk, before it completes.
    Flush(u64),
    /// `signal`: when vmm gets SIGUSR2.
    Signal,
}

/// `--power-cut WHEN[,lose=all|random|flushed][,seed=N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerCutSpec {
    pub when: PowerCutWhen,
    pub loss: devices::zoned::image::Loss,
    /// The seed of the random loss; vmm picks one (and prints it) when not given.
    pub seed: Option<u64>,
}

/// vmm's exit status after a power cut (README, "Exit status").
pub const POWER_CUT_STATUS: u8 = 99;

impl PowerCutSpec {
    pub fn parse(text: &str) -> Result<Self, String> {
        use devices::zoned::image::Loss;
        let mut parts = text.split(',');
        let first = parts.next().unwrap_or("");
        let when = match first.split_once('=') {
            None if first == "signal" => PowerCutWhen::Signal,
            Some(("after", value)) => PowerCutWhen::After(parse_duration(value).ok_or_else(|| {
                format!("invalid duration '{value}' in --power-cut after=: expected e.g. 500ms, 2s, 1.5s or 1m")
            })?),
            Some(("flush", value)) => match value.parse::<u64>() {
                Ok(n) if n > 0 => PowerCutWhen::Flush(n),
                _ => return Err(format!("invalid flush count '{value}' in --power-cut flush=: expected a number from 1")),
            },
            _ => {
                return Err(format!(
                    "invalid --power-cut '{first}': expected after=DURATION, flush=N or signal first"
                ))
            }
        };
        let mut spec = PowerCutSpec {
            when,
            loss: Loss::All,
            seed: None,
        };
        let mut loss_given = false;
        for part in parts {
            match part.split_once('=') {
                Some(("lose", value)) if !loss_given => {
                    loss_given = true;
                    spec.loss = match value {
                        "all" => Loss::All,
                        "random" => Loss::Random,
                        "flushed" => Loss::Flushed,
                        _ => {
                            return Err(format!(
                                "invalid --power-cut lose={value}: expected all, random or flushed"
                            ))
                        }
                    };
                }
                Some(("seed", value)) if spec.seed.is_none() => {
                    spec.seed = Some(value.parse().map_err(|_| {
                        format!(
                            "invalid --power-cut seed={value}: expected a number from 0 to 2^64-1"
                        )
                    })?);
                }
                Some(("lose", _)) | Some(("seed", _)) => {
                    return Err(format!("--power-cut option '{part}' given twice"))
                }
                _ => {
                    return Err(format!(
                        "invalid --power-cut option '{part}': expected lose=all|random|flushed or seed=N"
                    ))
                }
            }
        }
        Ok(spec)
    }
}

/// `500ms`, `2s`, `1.5s`, `1m`, or a plain number of seconds.
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.parse().ok()?;
    let seconds = value * scale;
    (0.0..1e9)
        .contains(&seconds)
        .then(|| std::time::Duration::from_secs_f64(seconds))
}

/// Test-only switches, read from `VMM_TEST_*` environment variables so that a lab test can reach
/// code paths a normal run takes only by chance. None changes what the guest sees; all are off
/// unless a test sets them, and nothing else in vmm reads these variables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TestHooks {
    /// `VMM_TEST_LATE_INITRD=1`: read the initrd only once the guest has reached for it, so that
    /// the guest's wait for it (`held_back`) runs on a real kernel (tests/tests/vmm_boot.rs).
    pub late_initrd: bool,
}

impl TestHooks {
    /// The variable that turns on `late_initrd`.
    pub const LATE_INITRD_VAR: &'static str = "VMM_TEST_LATE_INITRD";

    /// The hooks the environment turns on (a variable set to `1`).
    pub fn from_env() -> Self {
        let on = |name: &str| std::env::var_os(name).is_some_and(|v| v == "1");
        Self {
            late_initrd: on(Self::LATE_INITRD_VAR),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid size '{0}': expected a number with an optional K, M, G or T suffix (plain numbers are MiB)")]
    BadSize(String),
    #[error("--memory {0} MiB is too small: at least {MIN_MEMORY_MIB} MiB")]
    MemoryTooSmall(u64),
    #[error("--memory {0} MiB is too large: at most {MAX_MEMORY_MIB} MiB")]
    MemoryTooLarge(u64),
    #[error("--cpus {0} is out of range: 1 to {max}", max = mptable::MAX_CPUS)]
    BadCpuCount(u32),
    #[error("'{0}' is not a number of vCPUs")]
    NotACpuCount(String),
}

/// A command-line error from clap as one line: its first paragraph, without the "error: "
/// prefix and the usage hints.
pub fn clap_error_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    message.join(" ").trim_start_matches("error: ").to_string()
}

/// Parses a memory size into MiB by `devices::size`'s grammar, where a bare number is MiB: "512",
/// "512M", "2G", "1048576K", "1T", "1GiB"; a size that is not whole MiB is rounded down.
pub fn parse_memory_mib(text: &str) -> Result<u64, ConfigError> {
    let mib = Size::parse(text, SizeUnit::MiB)
        .and_then(|size| size.in_units(SizeUnit::MiB))
        .ok_or_else(|| ConfigError::BadSize(text.to_string()))?;
    if mib < MIN_MEMORY_MIB {
        return Err(ConfigError::MemoryTooSmall(mib));
    }
    if mib > MAX_MEMORY_MIB {
        return Err(ConfigError::MemoryTooLarge(mib));
    }
    Ok(mib)
}

/// Parses `--cpus`: a number from 1 to `mptable::MAX_CPUS`.
pub fn parse_cpus(text: &str) -> Result<u32, ConfigError> {
    let cpus: u32 = text
        .parse()
        .map_err(|_| ConfigError::NotACpuCount(text.to_string()))?;
    validate_cpus(cpus)
}

pub fn validate_cpus(cpus: u32) -> Result<u32, ConfigError> {
    if cpus == 0 || cpus > mptable::MAX_CPUS {
        return Err(ConfigError::BadCpuCount(cpus));
    }
    Ok(cpus)
}

/// The user's command line with vmm's defaults added in front of it where the user did not set
/// the same parameter.
pub fn build_cmdline(user: &str, extra: &[String]) -> String {
    let user_keys: Vec<&str> = user
        .split_whitespace()
        .map(|p| p.split('=').next().unwrap_or(p))
        .collect();
    let mut parts: Vec<String> = DEFAULT_PARAMS
        .iter()
        .filter(|(key, _)| !user_keys.contains(key))
        .map(|(_, param)| param.to_string())
        .collect();
    parts.extend(extra.iter().cloned());
    if !user.trim().is_empty() {
        parts.push(user.trim().to_string());
    }
    parts.join(" ")
}

/// Where `make guest` put the project's guest kernel and initramfs images: `VMM_GUEST_DIR`, or
/// `build/guest` of the checkout the running vmm binary was built in (target/*/vmm).
pub fn project_guest_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("VMM_GUEST_DIR") {
        return Some(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    exe.ancestors()
        .skip(1)
        .take(4)
        .map(|dir| dir.join("build/guest"))
        .find(|dir| dir.is_dir())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuestError {
    #[error(
        "--kernel is required (or run vmm in a kernel tree with a built arch/x86/boot/bzImage)"
    )]
    NoKernel,
    #[error("--host-root needs the project's host-root initramfs, which is not built ({0} is missing): run `make guest` in vmm's checkout, or pass --initrd")]
    NoHostRootInitrd(String),
    #[error("run mode (-- COMMAND) needs an initramfs with the project's /init, and none is built ({0} is missing): pass --initrd, use --host-root, or run `make guest` in vmm's checkout")]
    NoRunInitrd(String),
}

/// The kernel and initrd to boot and the modules directory to show the guest, with vmm's
/// defaults applied, and what to tell the user about the defaults taken.
#[derive(Debug, PartialEq, Eq)]
pub struct GuestChoice {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// A host directory with `lib/modules/RELEASE` of this kernel, or a kernel tree with its
    /// modules.builtin (`--host-root` shows it at /lib/modules/RELEASE).
    pub modules: Option<PathBuf>,
    pub notes: Vec<String>,
}

/// The image a kernel tree builds, relative to its top.
const TREE_KERNEL: &str = "arch/x86/boot/bzImage";

impl GuestChoice {
    /// Without `--kernel`, the kernel of the tree `cwd` is (like virtme-ng). Without
    /// `--initrd`, `--host-root` boots the project's host-root initramfs and run mode the
    /// project's guest initramfs; a missing one is an error that says what to pass.
    pub fn resolve(
        kernel: Option<PathBuf>,
        initrd: Option<PathBuf>,
        host_root: bool,
        run_mode: bool,
        cwd: &Path,
    ) -> Result<Self, GuestError> {
        Self::resolve_in(
            kernel,
            initrd,
            host_root,
            run_mode,
            cwd,
            project_guest_dir(),
        )
    }

    fn resolve_in(
        kernel: Option<PathBuf>,
        initrd: Option<PathBuf>,
        host_root: bool,
        run_mode: bool,
        cwd: &Path,
        guest_dir: Option<PathBuf>,
    ) -> Result<Self, GuestError> {
        let mut notes = Vec::new();
        let kernel = match kernel {
            Some(kernel) => kernel,
            None if cwd.join(TREE_KERNEL).is_file() && cwd.join("Kbuild").is_file() => {
                notes.push(format!(
                    "no --kernel: booting {TREE_KERNEL} of the kernel tree {}",
                    cwd.display()
                ));
                cwd.join(TREE_KERNEL)
            }
            None => return Err(GuestError::NoKernel),
        };
        let built = |name: &str| {
            guest_dir
                .as_ref()
                .map(|dir| dir.join(name))
                .unwrap_or_else(|| PathBuf::from("build/guest").join(name))
        };
        let initrd = match initrd {
            Some(initrd) => Some(initrd),
            None if host_root => {
                let image = built("hostroot.cpio.gz");
                if !image.is_file() {
                    return Err(GuestError::NoHostRootInitrd(image.display().to_string()));
                }
                Some(image)
            }
            None if run_mode => {
                let image = built("initramfs.cpio.gz");
                if !image.is_file() {
                    return Err(GuestError::NoRunInitrd(image.display().to_string()));
                }
                Some(image)
            }
            None => None,
        };
        let modules = modules_of(&kernel);
        Ok(Self {
            kernel,
            initrd,
            modules,
            notes,
        })
    }
}

/// Where the modules of `kernel` are: `modules/` beside it (`make guest`'s layout,
/// `modules/lib/modules/RELEASE`), or the kernel tree it was built in, if that has a
/// modules.builtin.
fn modules_of(kernel: &Path) -> Option<PathBuf> {
    let kernel = kernel.canonicalize().ok()?;
    let beside = kernel.parent()?.join("modules");
    if beside.join("lib/modules").is_dir() {
        return Some(beside);
    }
    let tree = kernel.ancestors().nth(4)?;
    (kernel.ends_with(TREE_KERNEL) && tree.join("modules.builtin").is_file())
        .then(|| tree.to_path_buf())
}

/// The user's command line plus what the host-root /init needs to run a command as if on the
/// host: vmm's current directory, the caller's PATH, and the kernel's modules.
pub fn host_root_cmdline(user: &str, modules: Option<&Path>) -> String {
    let encode = |text: &std::ffi::OsStr| base64_encode(text.as_encoded_bytes());
    let mut parts = vec![user.trim().to_string()];
    if let Ok(cwd) = std::env::current_dir() {
        parts.push(format!("vmm.cwd64={}", encode(cwd.as_os_str())));
    }
    if let Some(path) = std::env::var_os("PATH") {
        parts.push(format!("vmm.path64={}", encode(&path)));
    }
    if let Some(modules) = modules {
        parts.push(format!("vmm.modules64={}", encode(modules.as_os_str())));
    }
    parts.retain(|p| !p.is_empty());
    parts.join(" ")
}

/// Standard base64 (RFC 4648, with padding): how a guest command travels in `vmm.run64=`.
pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The kernel parameter that makes the project's guest /init run `command` (see
/// docs/guest-interface.md): arguments are joined with spaces, as ssh does, and run by bash.
pub fn run_param(command: &[String]) -> String {
    format!("vmm.run64={}", base64_encode(command.join(" ").as_bytes()))
}

/// The command line in run mode: the user's, plus `quiet` unless the user chose a log level
/// (boot messages are noise when a command's output is the point, and each console byte costs a
/// VM exit), plus the command.
pub fn run_mode_cmdline(user: &str, command: &[String]) -> String {
    let chooses_level = user
        .split_whitespace()
        .any(|p| p == "quiet" || p == "debug" || p.starts_with("loglevel="));
    let quiet = if chooses_level { "" } else { "quiet " };
    format!("{quiet}{} {}", user.trim(), run_param(command)).replace("  ", " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
        assert_eq!(base64_encode(&[0xff, 0xfe, 0x3e]), "//4+");
    }

    #[test]
    fn run_mode_is_quiet_unless_a_log_level_is_chosen() {
        let command = vec!["true".to_string()];
        let run = run_param(&command);
        assert_eq!(run_mode_cmdline("", &command), format!("quiet {run}"));
        assert_eq!(
            run_mode_cmdline("loglevel=7", &command),
            format!("loglevel=7 {run}")
        );
        assert_eq!(
            run_mode_cmdline("x=1", &command),
            format!("quiet x=1 {run}")
        );
    }

    #[test]
    fn run_param_joins_arguments() {
        let command = vec!["echo".to_string(), "a b;".to_string(), "exit 3".to_string()];
        assert_eq!(
            run_param(&command),
            format!("vmm.run64={}", base64_encode(b"echo a b; exit 3"))
        );
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mib("512"), Ok(512));
        assert_eq!(parse_memory_mib("512M"), Ok(512));
        assert_eq!(parse_memory_mib("2G"), Ok(2048));
        assert_eq!(parse_memory_mib("2g"), Ok(2048));
        assert_eq!(parse_memory_mib("65536K"), Ok(64));
        assert_eq!(parse_memory_mib("1T"), Ok(1 << 20));
        assert!(matches!(
            parse_memory_mib("lots"),
            Err(ConfigError::BadSize(_))
        ));
        assert!(matches!(
            parse_memory_mib("12Q"),
            Err(ConfigError::BadSize(_))
        ));
        assert!(matches!(parse_memory_mib(""), Err(ConfigError::BadSize(_))));
        assert!(matches!(
            parse_memory_mib("-1"),
            Err(ConfigError::BadSize(_))
        ));
        assert!(matches!(
            parse_memory_mib("99999999999999999999G"),
            Err(ConfigError::BadSize(_))
        ));
        assert!(matches!(
            parse_memory_mib("9999999999999T"),
            Err(ConfigError::MemoryTooLarge(_))
        ));
        assert_eq!(
            parse_memory_mib("16M"),
            Err(ConfigError::MemoryTooSmall(16))
        );
    }

    #[test]
    fn memory_sizes_follow_the_shared_size_grammar() {
        assert_eq!(parse_memory_mib("1GiB"), Ok(1024));
        assert_eq!(parse_memory_mib("512mib"), Ok(512));
        assert_eq!(parse_memory_mib("33000K"), Ok(32));
        for bad in ["+512", "1.5G", "512MB", "512 M"] {
            assert_eq!(
                parse_memory_mib(bad),
                Err(ConfigError::BadSize(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn defaults_for_kernel_and_initrd() {
        let tmp = std::env::temp_dir().join(format!("vmm-guest-choice-{}", std::process::id()));
        let tree = tmp.join("linux");
        let guest = tmp.join("guest");
        std::fs::create_dir_all(tree.join("arch/x86/boot")).unwrap();
        std::fs::create_dir_all(guest.join("modules/lib/modules")).unwrap();
        let resolve = |kernel: Option<PathBuf>, initrd, host_root, run, cwd: &Path| {
            GuestChoice::resolve_in(kernel, initrd, host_root, run, cwd, Some(guest.clone()))
        };
        // No kernel and no tree.
        assert_eq!(
            resolve(None, None, false, false, &tmp),
            Err(GuestError::NoKernel)
        );
        // A tree without a built kernel is no tree to boot.
        std::fs::write(tree.join("Kbuild"), "").unwrap();
        assert_eq!(
            resolve(None, None, false, false, &tree),
            Err(GuestError::NoKernel)
        );
        std::fs::write(tree.join(TREE_KERNEL), "").unwrap();
        let choice = resolve(None, None, false, false, &tree).unwrap();
        assert_eq!(choice.kernel, tree.join(TREE_KERNEL));
        assert_eq!(choice.initrd, None);
        assert_eq!(choice.notes.len(), 1);
        // Its modules.builtin makes the tree the modules directory.
        assert_eq!(choice.modules, None);
        std::fs::write(tree.join("modules.builtin"), "").unwrap();
        let choice = resolve(None, None, false, false, &tree).unwrap();
        assert_eq!(choice.modules, Some(tree.canonicalize().unwrap()));
        // Run mode and host root without the project's images: errors naming them.
        assert!(matches!(
            resolve(None, None, false, true, &tree),
            Err(GuestError::NoRunInitrd(p)) if p.ends_with("initramfs.cpio.gz")
        ));
        assert!(matches!(
            resolve(None, None, true, true, &tree),
            Err(GuestError::NoHostRootInitrd(p)) if p.ends_with("hostroot.cpio.gz")
        ));
        std::fs::write(guest.join("initramfs.cpio.gz"), "").unwrap();
        std::fs::write(guest.join("hostroot.cpio.gz"), "").unwrap();
        let kernel = guest.join("bzImage");
        std::fs::write(&kernel, "").unwrap();
        let choice = resolve(Some(kernel.clone()), None, false, true, &tmp).unwrap();
        assert_eq!(choice.initrd, Some(guest.join("initramfs.cpio.gz")));
        assert!(choice.notes.is_empty());
        assert_eq!(
            choice.modules,
            Some(guest.canonicalize().unwrap().join("modules"))
        );
        let choice = resolve(Some(kernel.clone()), None, true, true, &tmp).unwrap();
        assert_eq!(choice.initrd, Some(guest.join("hostroot.cpio.gz")));
        // An explicit --initrd always wins.
        let choice = resolve(Some(kernel), Some("/x".into()), true, true, &tmp).unwrap();
        assert_eq!(choice.initrd, Some(PathBuf::from("/x")));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn power_cut_options() {
        use devices::zoned::image::Loss;
        let spec = |s: &str| PowerCutSpec::parse(s);
        assert_eq!(
            spec("after=1.5s,lose=random,seed=7"),
            Ok(PowerCutSpec {
                when: PowerCutWhen::After(std::time::Duration::from_millis(1500)),
                loss: Loss::Random,
                seed: Some(7)
            })
        );
        assert_eq!(
            spec("flush=3"),
            Ok(PowerCutSpec {
                when: PowerCutWhen::Flush(3),
                loss: Loss::All,
                seed: None
            })
        );
        assert_eq!(spec("signal").unwrap().when, PowerCutWhen::Signal);
        assert_eq!(spec("flush=2,lose=flushed").unwrap().loss, Loss::Flushed);
        assert_eq!(
            spec("after=500ms").unwrap().when,
            PowerCutWhen::After(std::time::Duration::from_millis(500))
        );
        assert_eq!(
            spec("after=2").unwrap().when,
            PowerCutWhen::After(std::time::Duration::from_secs(2))
        );
        for bad in [
            "",
            "soon",
            "after=",
            "after=-1s",
            "after=xs",
            "flush=0",
            "flush=x",
            "signal,lose=some",
            "signal,seed=-1",
            "signal,lose=all,lose=all",
            "signal,frob=1",
        ] {
            let error = spec(bad).unwrap_err();
            assert!(
                !error.contains('\n') && error.contains("power-cut"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn cpu_counts() {
        assert_eq!(validate_cpus(1), Ok(1));
        assert_eq!(validate_cpus(0), Err(ConfigError::BadCpuCount(0)));
        assert_eq!(validate_cpus(1000), Err(ConfigError::BadCpuCount(1000)));
    }

    #[test]
    fn discovery_modes() {
        use clap::ValueEnum;
        assert_eq!(Discovery::default(), Discovery::Both);
        assert_eq!(Discovery::from_str("acpi", false), Ok(Discovery::Acpi));
        assert_eq!(
            Discovery::from_str("cmdline", false),
            Ok(Discovery::Cmdline)
        );
        assert!(Discovery::from_str("dt", false).is_err());
        assert!(Discovery::Both.uses_acpi() && Discovery::Both.uses_cmdline());
        assert!(Discovery::Acpi.uses_acpi() && !Discovery::Acpi.uses_cmdline());
        assert!(!Discovery::Cmdline.uses_acpi() && Discovery::Cmdline.uses_cmdline());
    }

    #[test]
    fn defaults_yield_to_user_parameters() {
        assert_eq!(build_cmdline("", &[]), "console=ttyS0 reboot=k panic=-1");
        assert_eq!(
            build_cmdline("console=hvc0 quiet", &[]),
            "reboot=k panic=-1 console=hvc0 quiet"
        );
        assert_eq!(
            build_cmdline("panic=5", &["virtio_mmio.device=4K@0xd0000000:5".into()]),
            "console=ttyS0 reboot=k virtio_mmio.device=4K@0xd0000000:5 panic=5"
        );
    }
}
