//! A thread that frees large buffers makes glibc open no file once vmm has asked for one malloc
//! arena (`vmm::host::seccomp::use_one_malloc_arena`), so the seccomp filters never see that open.
//!
//! Each case runs in a fresh copy of this program (no test harness: it must be the first to
//! start a thread), under a filter that kills it with SIGSYS if it opens anything.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use seccompiler::{SeccompAction, SeccompFilter, TargetArch};

const CASE: &str = "VMM_MALLOC_ARENA_CASE";

/// In a new thread, what zoned lanes did per request: allocate page-aligned buffers as large as
/// the request, use them, free them. Freeing a 1 MiB buffer (mmapped) raises glibc's mmap
/// threshold to about 1 MiB and its trim threshold to twice that; smaller buffers then come from
/// the thread's arena, and freeing 3 MiB of them trims it.
fn lane_like_thread() {
    fn buffer(len: usize) -> (*mut u8, Layout) {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: the layout has a non-zero size; the buffer is checked and written here,
        // and freed by the caller with the same layout.
        unsafe {
            let ptr = std::alloc::alloc(layout);
            assert!(!ptr.is_null());
            ptr.write(1);
            (ptr, layout)
        }
    }
    let free = |buffers: Vec<(*mut u8, Layout)>| {
        for (ptr, layout) in buffers {
            // SAFETY: allocated by `buffer` with this layout, freed once.
            unsafe { std::alloc::dealloc(ptr, layout) };
        }
    };
    std::thread::spawn(move || {
        free(vec![buffer(1 << 20)]);
        free((0..4).map(|_| buffer(768 << 10)).collect());
    })
    .join()
    .unwrap();
}

/// Default allow; any open ends the process with SIGSYS (no handler is installed).
fn forbid_opens() {
    let opens: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        [libc::SYS_open, libc::SYS_openat, libc::SYS_openat2]
            .into_iter()
            .map(|call| (call, Vec::new()))
            .collect();
    let arch: TargetArch = std::env::consts::ARCH.try_into().unwrap();
    let filter =
        SeccompFilter::new(opens, SeccompAction::Allow, SeccompAction::Trap, arch).unwrap();
    let program: seccompiler::BpfProgram = filter.try_into().unwrap();
    seccompiler::apply_filter(&program).unwrap();
}

fn run_case(case: &str) -> std::process::ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .env(CASE, case)
        .status()
        .unwrap()
}

fn main() {
    match std::env::var(CASE).as_deref() {
        Ok("one-arena") => {
            vmm::host::seccomp::use_one_malloc_arena();
            forbid_opens();
            lane_like_thread();
            return;
        }
        Ok("default") => {
            forbid_opens();
            lane_like_thread();
            return;
        }
        _ => {}
    }
    // Without the setting, the same thread opens /proc/sys/vm/overcommit_memory (glibc 2.26
    // and later): the check that the case below tests something. Other C libraries may not.
    let default = run_case("default");
    if default.signal() != Some(libc::SIGSYS) {
        eprintln!("note: here a thread arena's trim opens no file ({default}); the test below proves less");
    }
    let one_arena = run_case("one-arena");
    assert!(
        one_arena.success(),
        "with one malloc arena, the lane-like thread still opened a file: {one_arena}"
    );
    println!("malloc_arena: ok");
}
