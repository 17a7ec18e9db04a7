//! Seccomp filters for vmm's threads, installed once the VM is set up (files open, KVM VM and
//! vCPUs created, guest memory mapped, threads spawned), so that the steady state, where the
//! guest is running and can attack, may make only the system calls listed here.
//!
//! Filters for the main thread (event loop, device I/O, shutdown), the vCPU threads (KVM_RUN,
//! and device code reached through register writes) and virtio-fs threads. No thread may open a
//! file, create a process (threads, which inherit the filter, it may), map executable memory, or
//! use the network. A forbidden call traps (SIGSYS); the handler installed here prints one line
//! naming the call and the thread and exits with [`VIOLATION_EXIT_STATUS`]. The exceptions are
//! calls the C library makes on its own and survives failing: opening a file fails with EACCES,
//! clone3 with ENOSYS. `--seccomp off` turns the filters off for debugging.
//!
//! The lists come from `strace -f` of vmm in the lab over every kind of run the lab suite makes
//! (boot, plain and zoned disks under fio and btrfs, host zoned devices, SIGTERM, guest panic, run
//! mode exit, --boot-time); see docs/seccomp.md.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::mpsc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[cfg(target_arch = "x86_64")]
#[path = "seccomp/x86_64_names.rs"]
mod names;

/// vmm's exit status after a seccomp violation: 128 + SIGSYS, as a shell shows a process killed
/// by that signal.
pub const VIOLATION_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// `_IO(KVMIO, 0x80)`: the one KVM ioctl a running vCPU makes.
const KVM_RUN: u64 = 0xae80;
/// `_IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)`: the main thread maps the guest RAM
/// under the initrd into the VM once it has read the initrd, while the guest already runs.
const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_ae46;
/// `siginfo_t::si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: libc::c_int = 1;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[source] seccompiler::BackendError),
    #[error(
        "cannot install the seccomp filter of the {0} thread: {1} (--seccomp off runs without it)"
    )]
    Install(&'static str, #[source] seccompiler::Error),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
    #[error("seccomp filters are not available on {0}: run with --seccomp off")]
    UnsupportedArch(&'static str),
}

/// Which filter a thread gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Main,
    Vcpu,
    /// A virtio-fs device's thread (`devices::fs`): vhost-user messages to virtiofsd, its
    /// completions turned into interrupts.
    Virtiofs,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Virtiofs => "virtio-fs",
        }
    }
}

/// A condition on the low 32 bits of one argument (every argument checked here is an int, an
/// ioctl request or a flag word).
fn dword(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value).map_err(SeccompError::Build)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conditions).map_err(SeccompError::Build)
}

/// ioctl(ANY, request) for each request.
fn ioctl_rules(requests: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    requests
        .iter()
        .map(|&request| rule(vec![dword(1, SeccompCmpOp::Eq, request)?]))
        .collect()
}

/// Memory may be mapped or re-protected, never executable: allocation (malloc's arenas grow with
/// mprotect) needs the calls, and no thread of vmm ever needs new code.
fn not_executable(prot_arg: u8) -> Result<Vec<SeccompRule>, SeccompError> {
    Ok(vec![rule(vec![dword(
        prot_arg,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )?])?])
}

/// What both kinds of thread need: the Rust runtime and libc (allocation, locks, time, thread
/// exit, an abort that still aborts), console output, and the disk I/O of the device models,
/// which run on the main thread and, through register writes, on a vCPU thread.
fn common_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = [
        // Eventfds, console output, stdin, timerfd expirations; the disk backends.
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_fdatasync,
        libc::SYS_fsync,
        libc::SYS_close,
        // Memory and locks.
        libc::SYS_brk,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        // Time, where the vDSO falls back to the system call (the lab's clock source does).
        libc::SYS_clock_gettime,
        // Signals: the SIGINT/SIGTERM/SIGHUP handlers return, thread exit tears down the
        // alternate signal stack, and abort() blocks signals and raises SIGABRT.
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_exit,
        libc::SYS_exit_group,
        // Disks move data straight between guest memory and the file (pwritev/preadv).
        libc::SYS_pwritev,
        libc::SYS_preadv,
        // Lane threads of a zoned batch (devices::zoned lanes) start and end: robust
        // futex list and restartable sequences (glibc), the thread's alternate signal stack.
        // clone3 is allowed here only so that `failing_with` below decides: ENOSYS.
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sched_getaffinity,
        libc::SYS_clone3,
        // Likewise the opens, which fail with EACCES (`FILE_OPENS`): no file is ever opened.
        libc::SYS_open,
        libc::SYS_openat,
        libc::SYS_openat2,
    ]
    .into_iter()
    .map(|call| (call, Vec::new()))
    .collect();
    rules.insert(libc::SYS_mmap, not_executable(2)?);
    rules.insert(libc::SYS_mprotect, not_executable(2)?);
    // abort(): SIGABRT to this process only (its thread group id is its pid; any thread).
    rules.insert(
        libc::SYS_tgkill,
        vec![rule(vec![
            dword(0, SeccompCmpOp::Eq, u64::from(std::process::id()))?,
            dword(2, SeccompCmpOp::Eq, libc::SIGABRT as u64)?,
        ])?],
    );
    // Closing a descriptor in a debug build first checks that it is open (F_GETFD).
    rules.insert(
        libc::SYS_fcntl,
        vec![rule(vec![dword(
            1,
            SeccompCmpOp::Eq,
            libc::F_GETFD as u64,
        )?])?],
    );
    // Threads only (CLONE_THREAD), never a new process.
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![dword(
            0,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            libc::CLONE_THREAD as u64,
        )?])?],
    );
    // A new thread names itself ("zoned-lane").
    rules.insert(
        libc::SYS_prctl,
        vec![rule(vec![dword(
            0,
            SeccompCmpOp::Eq,
            libc::PR_SET_NAME as u64,
        )?])?],
    );
    // Reset zones' blocks go back from an image file (the idle reclaim); no other fallocate
    // mode is used.
    rules.insert(
        libc::SYS_fallocate,
        vec![rule(vec![dword(
            1,
            SeccompCmpOp::Eq,
            (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64,
        )?])?],
    );
    use devices::zoned::host::ioctl as zone;
    let mut ioctls = ioctl_rules(&[
        zone::BLKREPORTZONE,
        zone::BLKRESETZONE,
        zone::BLKOPENZONE,
        zone::BLKCLOSEZONE,
        zone::BLKFINISHZONE,
    ])?;
    // The terminal on stdin: is it one (the console escape), and restoring it on exit, which the
    // violation handler also does, on whichever thread trapped.
    for request in [libc::TCGETS, libc::TCSETS] {
        ioctls.push(rule(vec![
            dword(0, SeccompCmpOp::Eq, libc::STDIN_FILENO as u64)?,
            dword(1, SeccompCmpOp::Eq, request)?,
        ])?);
    }
    rules.insert(libc::SYS_ioctl, ioctls);
    Ok(rules)
}

/// The allow-list of one kind of thread, as seccompiler rules.
fn thread_rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules = common_rules()?;
    match kind {
        ThreadKind::Main => {
            // The event loop: epoll, the console flush timer.
            for call in [
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_ctl,
                libc::SYS_timerfd_settime,
            ] {
                rules.insert(call, Vec::new());
            }
            rules
                .entry(libc::SYS_ioctl)
                .or_default()
                .extend(ioctl_rules(&[KVM_SET_USER_MEMORY_REGION])?);
        }
        ThreadKind::Vcpu => {
            rules
                .entry(libc::SYS_ioctl)
                .or_default()
                .extend(ioctl_rules(&[KVM_RUN])?);
        }
        ThreadKind::Virtiofs => {
            // Its own epoll over the call eventfds and the socket; vhost-user messages (file
            // descriptors travel as SCM_RIGHTS, hence sendmsg and recvmsg).
            for call in [
                libc::SYS_epoll_create1,
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_ctl,
                libc::SYS_sendmsg,
                libc::SYS_recvmsg,
            ] {
                rules.insert(call, Vec::new());
            }
        }
    }
    Ok(rules)
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    let arch = std::env::consts::ARCH;
    arch.try_into()
        .map_err(|_| SeccompError::UnsupportedArch(arch))
}

/// Compiles the filter of one kind of thread: allow what is listed, trap everything else.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        thread_rules(kind)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        target_arch()?,
    )
    .map_err(SeccompError::Build)?;
    filter.try_into().map_err(SeccompError::Build)
}

/// Both compiled filters, built before any is installed (compiling allocates freely).
pub struct Filters {
    pub main: BpfProgram,
    pub vcpu: BpfProgram,
}

impl Filters {
    pub fn compile() -> Result<Self, SeccompError> {
        Ok(Self {
            main: compile(ThreadKind::Main)?,
            vcpu: compile(ThreadKind::Vcpu)?,
        })
    }
}

thread_local! {
    /// The filter this thread runs under, for the violation message. Const-initialized, so the
    /// signal handler reads it without any lazy initialization.
    static THREAD_FILTER: Cell<&'static str> = const { Cell::new("") };
}

/// The system calls that open a file. They fail with EACCES rather than trap: the C library
/// makes them on its own, where vmm cannot prevent it, and copes with the failure (glibc's
/// malloc reads /proc/sys/vm/overcommit_memory the first time it shrinks a thread's arena, and
/// without it only releases the memory with madvise instead of remapping it), and vmm's own
/// code reports a failed open as an error. No file is opened either way (docs/seccomp.md).
const FILE_OPENS: [i64; 3] = [libc::SYS_open, libc::SYS_openat, libc::SYS_openat2];

/// A filter, stacked under each thread's own, that makes `calls` fail with `errno`: an errno
/// result takes precedence over the other filter's allow (which the calls therefore need), a
/// trap over the errno.
///
/// Used twice. glibc starts a thread with clone3 and falls back to clone when clone3 fails
/// with ENOSYS; clone's flags are an argument the filter can check (threads only), clone3's are
/// in memory, where it cannot. And the [`FILE_OPENS`] fail with EACCES.
fn failing_with(calls: &[i64], errno: i32) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        calls.iter().map(|&call| (call, Vec::new())).collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        target_arch()?,
    )
    .map_err(SeccompError::Build)?;
    filter.try_into().map_err(SeccompError::Build)
}

/// Makes every thread allocate from glibc's main malloc arena. Call it first thing in `main`,
/// before any thread exists: a thread picks its arena at its first allocation.
///
/// A thread arena is trimmed by shrinking its heap, and the first time that happens glibc opens
/// /proc/sys/vm/overcommit_memory (which the filters refuse, docs/seccomp.md); the main arena is
/// trimmed by moving the program break, which opens nothing. vmm's threads allocate little once
/// the VM runs, so one arena's lock costs nothing measurable. Without glibc (no `mallopt`)
/// this does nothing.
pub fn use_one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a malloc parameter; M_ARENA_MAX takes any positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Installs `program` on the calling thread (and every thread it creates later).
pub fn apply(program: &BpfProgram, kind: ThreadKind) -> Result<(), SeccompError> {
    THREAD_FILTER.with(|name| name.set(kind.name()));
    let install = |program: &BpfProgram| {
        seccompiler::apply_filter(program).map_err(|e| SeccompError::Install(kind.name(), e))
    };
    install(&failing_with(&[libc::SYS_clone3], libc::ENOSYS)?)?;
    install(&failing_with(&FILE_OPENS, libc::EACCES)?)?;
    install(program)
}

/// Installs `program` on the calling vCPU thread and tells the main thread how that went on
/// `installed`: the main thread lets the vCPUs run only once every filter is in place.
pub fn apply_and_report(program: &BpfProgram, installed: &mpsc::Sender<Result<(), SeccompError>>) {
    let result = apply(program, ThreadKind::Vcpu);
    // The main thread waits for one report per vCPU; if it is gone, so is the VM.
    let _ = installed.send(result);
}

/// The name of system call `number`, or "" when unknown.
pub fn syscall_name(number: i64) -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        usize::try_from(number)
            .ok()
            .and_then(|n| names::NAMES.get(n))
            .copied()
            .unwrap_or("")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = number;
        ""
    }
}

/// A fixed buffer that the signal handler formats its message in: no allocation there.
struct MessageBuffer {
    bytes: [u8; 256],
    len: usize,
}

impl MessageBuffer {
    fn push(&mut self, text: &[u8]) {
        let room = self.bytes.len() - self.len;
        let n = text.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }

    fn push_number(&mut self, value: i64) {
        if value < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut rest = value.unsigned_abs();
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.push(&digits[start..]);
    }
}

/// The violation message for system call `number` on a thread under `filter`.
fn violation_message(number: i64, filter: &str, out: &mut MessageBuffer) {
    out.push(b"vmm: seccomp: the ");
    // A thread vmm started after installing filters (a zoned lane) inherits its creator's.
    out.push(if filter.is_empty() {
        b"zoned-lane"
    } else {
        filter.as_bytes()
    });
    out.push(b" thread made the forbidden system call ");
    let name = syscall_name(number);
    if !name.is_empty() {
        out.push(name.as_bytes());
        out.push(b" ");
    }
    out.push(b"(");
    out.push_number(number);
    out.push(b"); stopping (--seccomp off runs without the filter)\n");
}

/// The fields of `siginfo_t` that a SIGSYS carries (Linux, 64-bit): after signo, errno and code
/// (and padding to 8 bytes) come the faulting address, the system call number and the arch.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

extern "C" fn on_sigsys(_signo: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let mut message = MessageBuffer {
        bytes: [0; 256],
        len: 0,
    };
    // SAFETY: the kernel hands a SA_SIGINFO handler a valid siginfo_t, and SigsysInfo is the
    // prefix of its layout for SIGSYS on 64-bit Linux.
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    if info.code == SYS_SECCOMP {
        violation_message(i64::from(info.syscall), THREAD_FILTER.get(), &mut message);
    } else {
        message.push(b"vmm: stopped by SIGSYS\n");
    }
    crate::host::terminal::restore_in_signal_handler();
    // SAFETY: write(2) and _exit(2) are async-signal-safe and allowed by every filter; the
    // buffer is valid for `len` bytes.
    unsafe {
        libc::write(
            libc::STDERR_FILENO,
            message.bytes.as_ptr().cast(),
            message.len,
        );
        libc::_exit(VIOLATION_EXIT_STATUS);
    }
}

/// Routes SIGSYS (a seccomp violation) to the handler that reports it and exits.
pub fn install_violation_handler() -> Result<(), SeccompError> {
    // SAFETY: sigaction is plain data; the handler only formats on the stack and makes
    // async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_compile_for_this_arch() {
        let filters = Filters::compile().unwrap();
        assert!(!filters.main.is_empty());
        assert!(!filters.vcpu.is_empty());
        assert_ne!(filters.main, filters.vcpu);
    }

    #[test]
    fn the_memory_slot_ioctl_number_is_kvm_s() {
        // _IOW(type, nr, size): direction 1 (write) in bits 30-31, size in 16-29, type in 8-15.
        let size = std::mem::size_of::<kvm_bindings::kvm_userspace_memory_region>() as u64;
        assert_eq!(
            KVM_SET_USER_MEMORY_REGION,
            (1 << 30) | (size << 16) | (0xae << 8) | 0x46
        );
    }

    /// docs/seccomp.md lists every call a filter allows, and no longer claims that a filtered
    /// thread cannot create threads.
    #[test]
    fn the_seccomp_doc_names_every_allowed_call() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/seccomp.md"),
        )
        .unwrap();
        for kind in [ThreadKind::Main, ThreadKind::Vcpu] {
            for call in thread_rules(kind).unwrap().into_keys() {
                let name = syscall_name(call);
                let named =
                    doc.contains(&format!("`{name}`")) || doc.contains(&format!("`{name}("));
                assert!(named, "{name} is not in the doc");
            }
        }
        assert!(!doc.contains("forbids creating threads"));
    }

    #[test]
    fn syscall_names_follow_the_kernel_numbers() {
        assert_eq!(syscall_name(libc::SYS_read), "read");
        assert_eq!(syscall_name(libc::SYS_openat), "openat");
        assert_eq!(syscall_name(libc::SYS_socket), "socket");
        assert_eq!(syscall_name(libc::SYS_clone3), "clone3");
        assert_eq!(syscall_name(-1), "");
        assert_eq!(syscall_name(100_000), "");
    }

    #[test]
    fn violation_message_names_the_call_and_the_thread() {
        let mut out = MessageBuffer {
            bytes: [0; 256],
            len: 0,
        };
        violation_message(libc::SYS_socket, "vCPU", &mut out);
        assert_eq!(
            std::str::from_utf8(&out.bytes[..out.len]).unwrap(),
            "vmm: seccomp: the vCPU thread made the forbidden system call socket (41); \
             stopping (--seccomp off runs without the filter)\n"
        );
        let mut out = MessageBuffer {
            bytes: [0; 256],
            len: 0,
        };
        violation_message(9999, "main", &mut out);
        assert!(std::str::from_utf8(&out.bytes[..out.len])
            .unwrap()
            .contains("system call (9999)"));
    }

    /// Forks a child that installs the `kind` filter, then runs `body`; returns the child's exit
    /// status (or 1000 + signal) and what it wrote to stderr.
    fn in_filtered_child(kind: ThreadKind, body: impl FnOnce()) -> (i32, String) {
        let mut pipe = [0; 2];
        // SAFETY: pipe fills the two descriptors.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child makes raw system calls, compiles and installs the filter (which
        // allocates: glibc's malloc is usable after fork), then runs `body`, and leaves with
        // _exit; the parent waits for it. The filter is compiled in the child because it names
        // the process's own thread group.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: plain descriptor calls on the pipe made above.
            unsafe {
                libc::dup2(pipe[1], libc::STDERR_FILENO);
                libc::close(pipe[0]);
            }
            let program = compile(kind);
            let installed = program.as_ref().is_ok_and(|program| {
                install_violation_handler().is_ok() && apply(program, kind).is_ok()
            });
            if !installed {
                // SAFETY: _exit ends the child.
                unsafe { libc::_exit(99) };
            }
            // A panic must not unwind into the test harness's copy in the child.
            let status = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
                Ok(()) => 0,
                Err(_) => 98,
            };
            // SAFETY: _exit ends the child.
            unsafe { libc::_exit(status) };
        }
        // SAFETY: the parent's copy of the write end is closed so that reading sees EOF.
        unsafe { libc::close(pipe[1]) };
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let mut output = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            // SAFETY: reads into a local buffer of its length.
            let n = unsafe { libc::read(pipe[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            output.extend_from_slice(&buf[..n as usize]);
        }
        // SAFETY: closes the read end.
        unsafe { libc::close(pipe[0]) };
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            1000 + libc::WTERMSIG(status)
        };
        (code, String::from_utf8_lossy(&output).into_owned())
    }

    #[test]
    fn a_forbidden_call_is_reported_by_name_and_exits_with_the_violation_status() {
        fn open_socket() {
            // SAFETY: socket(2) with constant arguments; the filter forbids it.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        }
        for kind in [ThreadKind::Main, ThreadKind::Vcpu] {
            let (status, stderr) = in_filtered_child(kind, open_socket);
            assert_eq!(status, VIOLATION_EXIT_STATUS, "{kind:?}: {stderr}");
            assert_eq!(
                stderr.trim_end(),
                format!(
                    "vmm: seccomp: the {} thread made the forbidden system call socket (41); \
                     stopping (--seccomp off runs without the filter)",
                    kind.name()
                )
            );
        }
    }

    #[test]
    fn running_programs_creating_processes_and_executable_memory_are_forbidden() {
        fn run_program() {
            let argv = [c"true".as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: execve with a constant path and NULL-terminated argument and environment
            // arrays; the filter refuses it before anything is replaced.
            unsafe { libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        }
        fn map_executable() {
            // SAFETY: an anonymous mapping; the filter refuses PROT_EXEC before it is made.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
        }
        fn fork_again() {
            // SAFETY: the filter refuses the clone before a process exists.
            unsafe { libc::fork() };
        }
        for (body, call) in [
            (run_program as fn(), "execve"),
            (map_executable, "mmap"),
            (fork_again, "clone"),
        ] {
            let (status, stderr) = in_filtered_child(ThreadKind::Main, body);
            assert_eq!(status, VIOLATION_EXIT_STATUS, "{call}: {stderr}");
            assert!(
                stderr.contains(&format!("system call {call} (")),
                "{stderr}"
            );
        }
    }

    /// Opening a file fails with EACCES on every kind of filtered thread, and on a lane
    /// thread it starts, and the thread carries on: the C library opens files on its own
    /// (glibc's malloc reads /proc/sys/vm/overcommit_memory the first time it trims a thread's
    /// arena) and copes with the failure, where the trap stopped vmm (#16).
    #[test]
    fn opening_a_file_fails_with_eacces_and_the_thread_carries_on() {
        fn open_everything() {
            let attempt = || {
                let path = c"/proc/sys/vm/overcommit_memory";
                // SAFETY: openat with a constant, NUL-terminated path; the result is checked.
                let at = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
                let at_errno = std::io::Error::last_os_error().raw_os_error();
                // SAFETY: open(2) the same way, as a raw system call.
                let open = unsafe { libc::syscall(libc::SYS_open, path.as_ptr(), libc::O_RDONLY) };
                let open_errno = std::io::Error::last_os_error().raw_os_error();
                // struct open_how { u64 flags, mode, resolve }
                let how = [libc::O_RDONLY as u64, 0, 0];
                // SAFETY: openat2 reads the 24-byte struct open_how from `how`, alive here.
                let at2 = unsafe {
                    libc::syscall(
                        libc::SYS_openat2,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        how.as_ptr(),
                        std::mem::size_of_val(&how),
                    )
                };
                let at2_errno = std::io::Error::last_os_error().raw_os_error();
                let std_open = std::fs::File::open("/dev/null").map_err(|e| e.raw_os_error());
                let eacces = Some(libc::EACCES);
                assert_eq!((at, at_errno), (-1, eacces), "openat");
                assert_eq!((open, open_errno), (-1, eacces), "open");
                assert_eq!((at2, at2_errno), (-1, eacces), "openat2");
                assert_eq!(std_open.map(|_| ()), Err(eacces), "File::open");
            };
            attempt();
            std::thread::scope(|scope| {
                std::thread::Builder::new()
                    .name("zoned-lane".into())
                    .spawn_scoped(scope, attempt)
                    .unwrap()
                    .join()
                    .unwrap();
            });
        }
        for kind in [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Virtiofs] {
            let (status, stderr) = in_filtered_child(kind, open_everything);
            assert_eq!(status, 0, "{kind:?}: {stderr}");
        }
    }

    #[test]
    fn abort_may_signal_vmm_itself_and_no_other_process() {
        // A process to aim at: the filter used to let any process be sent SIGABRT.
        let mut target = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let other = target.id() as libc::pid_t;
        let signal_other = move || {
            // SAFETY: tgkill with integer arguments; the filter must refuse it.
            unsafe { libc::syscall(libc::SYS_tgkill, other, other, libc::SIGABRT) };
        };
        let (status, stderr) = in_filtered_child(ThreadKind::Main, signal_other);
        let alive = target.try_wait().unwrap().is_none();
        let _ = target.kill();
        let _ = target.wait();
        assert_eq!(status, VIOLATION_EXIT_STATUS, "{stderr}");
        assert!(stderr.contains("system call tgkill ("), "{stderr}");
        assert!(alive, "the other process got the signal");
        // An abort in vmm itself still aborts.
        for kind in [ThreadKind::Main, ThreadKind::Vcpu] {
            let (status, stderr) = in_filtered_child(kind, || std::process::abort());
            assert_eq!(status, 1000 + libc::SIGABRT, "{kind:?}: {stderr}");
        }
    }

    #[test]
    fn what_the_threads_do_is_allowed() {
        for kind in [ThreadKind::Main, ThreadKind::Vcpu] {
            // Made before the filter, like every descriptor of vmm.
            let event = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let steady_state_work = move || {
                // Allocation of all sizes (brk, mmap, mremap), an eventfd round trip, a lock,
                // the clock, a close.
                let mut small: Vec<u8> = vec![1; 100];
                let mut large: Vec<u8> = vec![2; 64 << 20];
                large.resize(128 << 20, 3);
                small.extend_from_slice(&large[..1 << 20]);
                event.write(1).unwrap();
                assert_eq!(event.read().unwrap(), 1);
                let lock = std::sync::Mutex::new(small.len() + large.len());
                drop(lock.lock().unwrap());
                let _ = std::time::Instant::now();
                drop(event);
                // A lane thread of a zoned batch: named, scoped, joined.
                std::thread::scope(|scope| {
                    std::thread::Builder::new()
                        .name("zoned-lane".into())
                        .spawn_scoped(scope, || lock.lock().map(|n| *n).unwrap_or(0))
                        .unwrap()
                        .join()
                        .unwrap();
                });
            };
            let (status, stderr) = in_filtered_child(kind, steady_state_work);
            assert_eq!(status, 0, "{kind:?}: {stderr}");
        }
    }
}
