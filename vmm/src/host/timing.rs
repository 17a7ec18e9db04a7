//! Boot-time milestones, measured from the start of `main`: the first KVM_RUN and the guest's
//! userspace marker (a write to the marker port, see `legacy::GuestControl`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();
static FIRST_RUN_NS: AtomicU64 = AtomicU64::new(0);
static USERSPACE_NS: AtomicU64 = AtomicU64::new(0);

/// Marks the process start; call first thing in `main`.
pub fn start() {
    let _ = START.get_or_init(Instant::now);
}

/// How long ago `main` started.
pub fn elapsed() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}

fn since_start() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos().max(1) as u64
}

fn record(slot: &AtomicU64) {
    let _ = slot.compare_exchange(0, since_start(), Ordering::Relaxed, Ordering::Relaxed);
}

pub fn record_first_run() {
    record(&FIRST_RUN_NS);
}

pub fn record_userspace() {
    record(&USERSPACE_NS);
}

fn get(slot: &AtomicU64) -> Option<Duration> {
    match slot.load(Ordering::Relaxed) {
        0 => None,
        ns => Some(Duration::from_nanos(ns)),
    }
}

pub fn first_run() -> Option<Duration> {
    get(&FIRST_RUN_NS)
}

pub fn userspace() -> Option<Duration> {
    get(&USERSPACE_NS)
}

/// One line for `--boot-time`.
pub fn report() -> String {
    let ms = |d: Option<Duration>| match d {
        Some(d) => format!("{:.2} ms", d.as_secs_f64() * 1e3),
        None => "never".to_string(),
    };
    format!(
        "vmm: boot time: first KVM_RUN {}, guest userspace {}, exit {}",
        ms(first_run()),
        ms(userspace()),
        ms(Some(Duration::from_nanos(since_start())))
    )
}
