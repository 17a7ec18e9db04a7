//! The `vmm` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

use devices::zoned::ZonedDiskOptions;
use vmm::config::{self, VmConfig};
use vmm::device_manager::virtiofsd::ShareSpec;
use vmm::device_manager::DiskSpec;
use vmm::kvm::exit::ExitReason;

/// Boot a Linux kernel under KVM with a serial console; exits with the guest's reported status.
#[derive(Parser, Debug)]
#[command(
    name = "vmm",
    version,
    about,
    after_help = "Zoned images on the host, without a guest: vmm image create|report|check IMG \
                  (see vmm image --help)."
)]
struct Cli {
    /// Kernel to boot: a bzImage, or an ELF vmlinux (PVH entry when it has the note). Without
    /// it, in a kernel tree, that tree's arch/x86/boot/bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (cpio, optionally compressed). Without it, `--host-root` and run mode
    /// boot the project's own initramfs (built by `make guest`).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// The guest's root file system is the host's `/`, read-only over virtio-fs, with fresh
    /// tmpfs on /tmp, /run and /var/tmp; in run mode the command runs in vmm's current
    /// directory with the caller's PATH, as root.
    #[arg(long)]
    host_root: bool,
    /// A host directory shared writable at the same path in the guest (with `--host-root`,
    /// where the command writes, e.g. `--rwdir .`). Repeatable.
    #[arg(long, value_name = "DIR", value_parser = ShareSpec::rwdir)]
    rwdir: Vec<ShareSpec>,
    /// A host directory shared over virtio-fs, mounted at GUEST_PATH (default: the same path);
    /// `ro` makes it read-only. Repeatable.
    #[arg(long, value_name = "HOST_DIR[:GUEST_PATH][,ro]", value_parser = ShareSpec::parse)]
    share: Vec<ShareSpec>,
    /// Kernel command line; vmm adds console=ttyS0 reboot=k panic=-1 unless given.
    #[arg(long, value_name = "STR", default_value = "")]
    cmdline: String,
    /// Guest memory, 32 MiB to 64 TiB: a number of MiB, or a size with a binary suffix K, M, G or
    /// T (also KiB, MiB, GiB, TiB; any case), rounded down to whole MiB.
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = config::parse_memory_mib)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = config::parse_cpus)]
    cpus: u32,
    /// A virtio-blk disk: PATH[,ro][,serial=ID]. Repeatable; disks appear as vda, vdb, ...
    #[arg(long, value_name = "PATH[,ro][,serial=ID]")]
    disk: Vec<vmm::device_manager::DiskConfig>,
    /// A host-managed zoned virtio-blk disk emulated in an image file, created with the given
    /// geometry if it does not exist: PATH[,size=4G][,zone-size=64M][,zone-capacity=..]
    /// [,conventional-zones=0][,max-open=0][,max-active=0][,max-append=1M][,write-granularity=512]
    /// [,logical-block-size=512|4096] (0 = unlimited). Sizes are bytes, or a number with a binary
    /// suffix K, M, G or T (also KiB, MiB, GiB, TiB; any case). An existing image keeps its geometry; a
    /// conflicting option is an error. For this run only: [,reclaim=on|off] (whether reset zones'
    /// blocks go back to the host file system once the guest leaves the disk alone, and at exit;
    /// images only; default on), [,trace=FILE] (one JSON line per request, docs/zone-trace.md),
    /// [,cache=writeback|volatile] (volatile: writes since the last flush stay losable by
    /// --power-cut; images only), and fault injection:
    /// [,read-only-zones=I[:I]...] [,offline-zones=I[:I]...] (zones shown READ_ONLY or OFFLINE)
    /// [,fail-write=ZONE:N[:STATUS]] (the Nth write to zone ZONE fails with STATUS, 1 to 6,
    /// default 1). PATH `tmp` is a throwaway image in $TMPDIR, gone when vmm exits; a block device
    /// PATH (no geometry options) passes a host-managed zoned device of the host through.
    /// Repeatable; disks of both kinds appear in command-line order.
    #[arg(long, value_name = "PATH[,OPTION=VALUE]...", value_parser = ZonedDiskOptions::parse)]
    zoned_disk: Vec<ZonedDiskOptions>,
    /// How the guest finds the virtio devices: `cmdline` adds virtio_mmio.device= to the kernel
    /// command line (kernels with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), `acpi` writes ACPI tables
    /// (kernels that find virtio-mmio only through ACPI, such as Debian's; without ACPI tables a
    /// kernel uses the MP table), `both` does both and suits every kernel, at the cost of one
    /// harmless "probe ... failed with error -16" line per device from kernels that have both.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = config::Discovery::Both)]
    discovery: config::Discovery,
    /// Command to run in the guest (after `--`): the project's guest /init runs it with bash and
    /// vmm exits with its status. Arguments are joined with spaces, as ssh does.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
    /// Print when the first vCPU started and when the guest reached userspace.
    #[arg(long)]
    boot_time: bool,
    /// Seccomp filters on vmm's threads: once the VM is set up, each thread may make only the
    /// system calls it needs; any other stops vmm with a line naming the call (exit status 159).
    /// `off` is for debugging.
    #[arg(long, value_enum, value_name = "on|off", default_value_t = config::Seccomp::On)]
    seccomp: config::Seccomp,
    /// Map the kernel (a bzImage) and the initrd copy-on-write from their files instead of copying
    /// them into guest memory: vmm starts the guest sooner, and the guest faults their pages in
    /// as it reads them, which can cost it more than the copy saved (see README "Startup").
    #[arg(long)]
    map_images: bool,
    /// Simulate a power cut of the `--zoned-disk ...,cache=volatile` disks: WHEN is
    /// `after=DURATION` (from vmm's start: 500ms, 2s, 1m), `flush=N` (the Nth FLUSH one of
    /// them gets never completes) or `signal` (SIGUSR2). The VM stops at once; `lose=all`
    /// (default) drops every write since the last flush, `lose=random` keeps a random prefix of
    /// each zone's and a random part of the conventional blocks', reproducibly for a given
    /// `seed` (printed); `lose=flushed` is a broken device, to check that a crash test catches
    /// one: each sequential zone also loses its last flushed writes. vmm then exits with
    /// status 99.
    #[arg(long, value_name = "WHEN[,lose=all|random|flushed][,seed=N]", value_parser = config::PowerCutSpec::parse)]
    power_cut: Option<config::PowerCutSpec>,
}

/// Plain and zoned disks in the order they were given on the command line.
fn disks_in_order(matches: &clap::ArgMatches, cli: &Cli) -> Vec<DiskSpec> {
    let positions = |id: &str| -> Vec<usize> {
        matches
            .indices_of(id)
            .map(|i| i.collect())
            .unwrap_or_default()
    };
    let mut disks: Vec<(usize, DiskSpec)> = positions("disk")
        .into_iter()
        .zip(cli.disk.iter().cloned().map(DiskSpec::Plain))
        .chain(
            positions("zoned_disk").into_iter().zip(
                cli.zoned_disk
                    .iter()
                    .cloned()
                    .map(|options| DiskSpec::Zoned(Box::new(options))),
            ),
        )
        .collect();
    disks.sort_by_key(|(position, _)| *position);
    disks.into_iter().map(|(_, disk)| disk).collect()
}

/// Exit status for errors of vmm itself (bad options, missing files, KVM failures).
const VMM_ERROR: u8 = 2;

fn main() -> ExitCode {
    // `vmm image ...` is a tool of its own on the host: no VM, none of the options below.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|first| first == "image") {
        return vmm::image_tool::main(args);
    }
    // Before any thread starts (vmm::host::seccomp explains why).
    vmm::host::seccomp::use_one_malloc_arena();
    vmm::host::timing::start();
    vmm::host::logger::init();
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches).map(|cli| (matches, cli)));
    let (matches, cli) = match parsed {
        Ok(parsed) => parsed,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vmm: {}", config::clap_error_line(&e));
            return ExitCode::from(VMM_ERROR);
        }
    };
    let disks = disks_in_order(&matches, &cli);
    let volatile_disk = cli.zoned_disk.iter().any(|disk| disk.volatile_cache);
    if cli.power_cut.is_some() && !volatile_disk {
        eprintln!(
            "vmm: --power-cut needs a --zoned-disk with cache=volatile, whose unflushed writes it \
             can lose"
        );
        return ExitCode::from(VMM_ERROR);
    }
    let run_mode = !cli.command.is_empty();
    let guest = match config::GuestChoice::resolve(
        cli.kernel,
        cli.initrd,
        cli.host_root,
        run_mode,
        &std::env::current_dir().unwrap_or_default(),
    ) {
        Ok(guest) => guest,
        Err(e) => {
            eprintln!("vmm: {e}");
            return ExitCode::from(VMM_ERROR);
        }
    };
    for note in &guest.notes {
        eprintln!("vmm: {note}");
    }
    let mut shares = Vec::new();
    if cli.host_root {
        shares.push(ShareSpec::host_root());
    }
    shares.extend(cli.rwdir.iter().cloned());
    shares.extend(cli.share.iter().cloned());
    let mut cmdline = cli.cmdline.clone();
    if cli.host_root {
        cmdline = config::host_root_cmdline(&cmdline, guest.modules.as_deref());
    }
    let config = VmConfig {
        cmdline: if cli.command.is_empty() {
            cmdline
        } else {
            config::run_mode_cmdline(&cmdline, &cli.command)
        },
        disks,
        shares,
        discovery: cli.discovery,
        kernel: guest.kernel,
        initrd: guest.initrd,
        memory_mib: cli.memory,
        cpus: cli.cpus,
        boot_time: cli.boot_time,
        seccomp: cli.seccomp,
        map_images: cli.map_images,
        power_cut: cli.power_cut,
        test_hooks: config::TestHooks::from_env(),
    };
    match vmm::machine::run(&config) {
        Ok(reason) => {
            match &reason {
                ExitReason::VcpuError(message) | ExitReason::DeviceFailed(message) => {
                    eprintln!("vmm: {message}")
                }
                ExitReason::Signal(signo) => eprintln!("vmm: stopped by signal {signo}"),
                _ => {}
            }
            if config.boot_time {
                eprintln!("{}", vmm::host::timing::report());
            }
            let code = reason.exit_code_for(run_mode);
            if run_mode && reason.lacks_guest_status() {
                eprintln!(
                    "vmm: the guest stopped ({reason:?}) without reporting the command's status; \
                     a kernel panic or an init without the exit port?"
                );
            }
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!("vmm: {}", vmm::device_manager::chain(&e));
            ExitCode::from(VMM_ERROR)
        }
    }
}
