//! device-bench: the virtio-blk device model (plain and zoned) with its file backends, driven
//! through a real split virtqueue in in-memory guest memory, against the raw limit: plain
//! `pwrite`/`pread` of the same sizes on the same file system, measured in the same repetition.
//! No guest and no KVM. `resources/bench/run` turns the JSON it writes into the report.
//!
//!   device-bench [--quick] [--reps N] [--dir DIR] [--only TEXT] --out FILE.json
//!
//! `--only TEXT` runs only the steps whose description contains TEXT (e.g. `reset-all`).

mod rig;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use devices::block::{request_type, Block, RawFile};
use devices::zoned::wire::request as zone_request;
use devices::zoned::{ZoneTrace, ZonedExecutor, ZonedGeometry, ZonedImage};

use rig::{Op, Rig};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const SECTOR: u64 = 512;
/// Requests in flight for the data benchmarks, as the guest's fio runs use (QD32).
const QUEUE_DEPTH: usize = 32;
/// Zone size of the zoned disks that take data (a common SMR/ZNS size).
const DATA_ZONE_BYTES: u64 = 64 * MIB;
/// The zone count of the report and reset-all benchmarks.
const MANY_ZONES: u64 = 100_000;
/// Zone size of the many-zones disk: 1 MiB, so the sparse image is ~98 GiB.
const MANY_ZONES_ZONE_BYTES: u64 = MIB;
/// Every Nth zone of the many-zones disk gets data before a reset-all.
const RESET_ALL_EVERY: u64 = 10;

struct Settings {
    quick: bool,
    reps: usize,
    dir: PathBuf,
    out: PathBuf,
    /// Run only the steps whose description contains this text (for profiling one of them).
    only: Option<String>,
}

/// One measured series: per repetition, the device's figure and (where there is one) the raw
/// baseline's figure from the same repetition.
struct Case {
    name: String,
    unit: &'static str,
    /// What the device is compared with ("" when the figure stands alone).
    baseline: &'static str,
    /// The target, in words, for the report.
    target: &'static str,
    device: Vec<f64>,
    raw: Vec<f64>,
}

impl Case {
    fn new(name: &str, unit: &'static str, baseline: &'static str, target: &'static str) -> Self {
        Case {
            name: name.to_string(),
            unit,
            baseline,
            target,
            device: Vec::new(),
            raw: Vec::new(),
        }
    }

    fn summary(&self) -> String {
        let mut line = format!(
            "{:<34} {:>10.1} {}",
            self.name,
            median(&self.device),
            self.unit
        );
        if !self.raw.is_empty() {
            let ratios: Vec<f64> = self
                .device
                .iter()
                .zip(&self.raw)
                .map(|(d, r)| d / r)
                .collect();
            line += &format!(
                "   raw {:>10.1} {}   ratio {:.2} (min {:.2}, max {:.2})",
                median(&self.raw),
                self.unit,
                median(&ratios),
                ratios.iter().cloned().fold(f64::INFINITY, f64::min),
                ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
            );
        }
        line
    }

    fn json(&self) -> String {
        let list = |values: &[f64]| {
            values
                .iter()
                .map(|v| format!("{v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{{\"name\": \"{}\", \"unit\": \"{}\", \"baseline\": \"{}\", \"target\": \"{}\", \"device\": [{}], \"raw\": [{}]}}",
            self.name,
            self.unit,
            self.baseline,
            self.target,
            list(&self.device),
            list(&self.raw)
        )
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

/// Non-zero, non-repeating-page data, so neither side profits from zero pages.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 12) as u8)
        .collect()
}

fn fresh_file(path: &Path, len: u64) -> Result<File, String> {
    let _ = std::fs::remove_file(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.set_len(len)
        .map_err(|e| format!("cannot size {}: {e}", path.display()))?;
    Ok(file)
}

/// The raw limit: `total` bytes written sequentially with `pwrite` calls of `block` bytes. The
/// data comes from as many buffers as the device has requests in flight, in turn, as the
/// device's does from its slots: one buffer written over and over would stay in the CPU cache,
/// which no guest's data does.
fn raw_write(path: &Path, block: u64, total: u64) -> Result<f64, String> {
    let file = fresh_file(path, total)?;
    let buffers: Vec<Vec<u8>> = (0..QUEUE_DEPTH).map(|_| pattern(block as usize)).collect();
    let start = Instant::now();
    for (offset, data) in (0..total)
        .step_by(block as usize)
        .zip(buffers.iter().cycle())
    {
        file.write_all_at(data, offset)
            .map_err(|e| format!("pwrite to {}: {e}", path.display()))?;
    }
    let rate = mib_per_s(total, start.elapsed());
    drop(file);
    let _ = std::fs::remove_file(path);
    Ok(rate)
}

/// The raw limit for reads: `total` bytes of `file` read sequentially with `pread`, into
/// `QUEUE_DEPTH` buffers in turn (see `raw_write`).
fn raw_read(file: &File, block: u64, total: u64) -> Result<f64, String> {
    let mut buffers = vec![vec![0u8; block as usize]; QUEUE_DEPTH];
    let start = Instant::now();
    for (offset, buffer) in (0..total)
        .step_by(block as usize)
        .zip((0..QUEUE_DEPTH).cycle())
    {
        file.read_exact_at(&mut buffers[buffer], offset)
            .map_err(|e| format!("pread: {e}"))?;
    }
    Ok(mib_per_s(total, start.elapsed()))
}

fn zoned_geometry(capacity_bytes: u64, zone_bytes: u64) -> ZonedGeometry {
    let zone = zone_bytes / SECTOR;
    ZonedGeometry {
        capacity: capacity_bytes.div_ceil(zone_bytes) * zone,
        zone_size: zone,
        zone_capacity: zone,
        conventional_zones: 0,
        max_open: 0,
        max_active: 0,
        max_append_sectors: (MIB / SECTOR) as u32,
        write_granularity: SECTOR as u32,
        logical_block_size: 512,
    }
}

fn zoned_block(path: &Path, geometry: ZonedGeometry) -> Result<Block, String> {
    traced_zoned_block(path, geometry, None)
}

/// A zoned disk, writing a zone trace (`trace=FILE`) to `trace` if given.
fn traced_zoned_block(
    path: &Path,
    geometry: ZonedGeometry,
    trace: Option<&Path>,
) -> Result<Block, String> {
    let _ = std::fs::remove_file(path);
    let disk = ZonedImage::create(path, geometry)
        .map_err(|e| format!("cannot create the zoned image {}: {e}", path.display()))?;
    let mut executor = ZonedExecutor::new(disk);
    if let Some(trace) = trace {
        executor = executor.with_trace(ZoneTrace::create(trace).map_err(|e| e.to_string())?);
    }
    Ok(Block::with_executor(Box::new(executor), "bench-zoned"))
}

fn plain_block(path: &Path, read_only: bool) -> Result<Block, String> {
    let backend = RawFile::open(path, read_only)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok(Block::new(Box::new(backend), "bench-plain"))
}

/// `total` bytes of sequential requests of `block` bytes: OUT (plain or zoned) or ZONE_APPEND.
fn device_write(block: Block, kind: u32, size: u64, total: u64) -> Result<f64, String> {
    let mut rig = Rig::new(block, QUEUE_DEPTH, size as u32)?;
    let count = total / size;
    let elapsed = rig.run(count, QUEUE_DEPTH, |i| {
        let offset = i * size;
        match kind {
            // Appends go to the start of the zone the data lands in.
            zone_request::ZONE_APPEND => Op::append(
                (offset / DATA_ZONE_BYTES) * DATA_ZONE_BYTES / SECTOR,
                size as u32,
            ),
            _ => Op::write(offset / SECTOR, size as u32),
        }
    })?;
    Ok(mib_per_s(total, elapsed))
}

fn device_read(rig: &mut Rig, size: u64, total: u64) -> Result<f64, String> {
    let elapsed = rig.run(total / size, QUEUE_DEPTH, |i| {
        Op::read(i * size / SECTOR, size as u32)
    })?;
    Ok(mib_per_s(total, elapsed))
}

/// Sequential writes of `size` bytes: raw, plain device, zoned device, zoned appends; at 4 KiB,
/// where the cost per request shows most, also the zoned device writing a zone trace.
fn write_cases(settings: &Settings, size: u64, total: u64) -> Result<Vec<Case>, String> {
    let label = format!("{} KiB", size / KIB);
    let target = if size >= 128 * KIB {
        ">= 0.90 of raw"
    } else {
        ">= 0.70 of raw"
    };
    let mut plain = Case::new(
        &format!("write {label} plain"),
        "MiB/s",
        "raw pwrite",
        target,
    );
    let mut zoned = Case::new(
        &format!("write {label} zoned"),
        "MiB/s",
        "raw pwrite",
        target,
    );
    let mut append = Case::new(&format!("zone append {label}"), "MiB/s", "raw pwrite", "");
    let mut traced = (size == 4 * KIB).then(|| {
        Case::new(
            &format!("write {label} zoned with trace"),
            "MiB/s",
            "raw pwrite",
            "",
        )
    });
    let trace_path = settings.dir.join("zoned-trace.jsonl");
    let raw_path = settings.dir.join("raw.img");
    let plain_path = settings.dir.join("plain.img");
    let zoned_path = settings.dir.join("zoned.img");
    let geometry = zoned_geometry(total, DATA_ZONE_BYTES);
    // Repetition 0 is a warm-up whose figures are dropped: the first write of `total` bytes into
    // memory the host has not handed this machine yet ran 10 times slower (400-650 MiB/s against
    // 5,000-5,900 here), whichever side of a pair it fell on.
    for rep in 0..=settings.reps {
        // Each device run is paired with a raw run right next to it, in alternating order, so
        // that drift in the machine's load shows in both figures of a ratio alike.
        let paired = |case: &mut Case, device: &dyn Fn() -> Result<f64, String>| {
            let (device, raw) = if rep % 2 == 0 {
                let raw = raw_write(&raw_path, size, total)?;
                (device()?, raw)
            } else {
                let device = device()?;
                (device, raw_write(&raw_path, size, total)?)
            };
            if rep > 0 {
                case.device.push(device);
                case.raw.push(raw);
            }
            Ok::<(), String>(())
        };
        paired(&mut plain, &|| {
            drop(fresh_file(&plain_path, total)?);
            device_write(
                plain_block(&plain_path, false)?,
                request_type::OUT,
                size,
                total,
            )
        })?;
        paired(&mut zoned, &|| {
            device_write(
                zoned_block(&zoned_path, geometry)?,
                request_type::OUT,
                size,
                total,
            )
        })?;
        paired(&mut append, &|| {
            device_write(
                zoned_block(&zoned_path, geometry)?,
                zone_request::ZONE_APPEND,
                size,
                total,
            )
        })?;
        if let Some(traced) = traced.as_mut() {
            paired(traced, &|| {
                device_write(
                    traced_zoned_block(&zoned_path, geometry, Some(&trace_path))?,
                    request_type::OUT,
                    size,
                    total,
                )
            })?;
        }
    }
    for path in [&plain_path, &zoned_path, &trace_path] {
        let _ = std::fs::remove_file(path);
    }
    Ok([plain, zoned, append].into_iter().chain(traced).collect())
}

/// Sequential reads of `size` bytes of data in the page cache: raw pread, plain, zoned.
fn read_cases(settings: &Settings, size: u64, total: u64) -> Result<Vec<Case>, String> {
    let label = format!("{} KiB", size / KIB);
    let mut plain = Case::new(&format!("read {label} plain"), "MiB/s", "raw pread", "");
    let mut zoned = Case::new(&format!("read {label} zoned"), "MiB/s", "raw pread", "");
    let plain_path = settings.dir.join("read-plain.img");
    let zoned_path = settings.dir.join("read-zoned.img");
    let file = fresh_file(&plain_path, total)?;
    let data = pattern(MIB as usize);
    for offset in (0..total).step_by(MIB as usize) {
        file.write_all_at(&data, offset)
            .map_err(|e| format!("pwrite: {e}"))?;
    }
    let mut plain_rig = Rig::new(plain_block(&plain_path, true)?, QUEUE_DEPTH, size as u32)?;
    // Slots of 1 MiB: the fill below writes 1 MiB at a time.
    let mut zoned_rig = Rig::new(
        zoned_block(&zoned_path, zoned_geometry(total, DATA_ZONE_BYTES))?,
        QUEUE_DEPTH,
        MIB as u32,
    )?;
    // The zoned disk reads as zeros above the write pointers: fill it first, in 1 MiB writes
    // as the raw file was, so that both files sit in the page cache alike (the size of the
    // writes decides the size of the cached folios, which reads then pay for).
    zoned_rig.run(total / MIB, QUEUE_DEPTH, |i| {
        Op::write(i * MIB / SECTOR, MIB as u32)
    })?;
    // Warm both page caches once before measuring.
    raw_read(&file, size, total)?;
    device_read(&mut zoned_rig, size, total)?;
    for _ in 0..settings.reps {
        let raw = raw_read(&file, size, total)?;
        plain.device.push(device_read(&mut plain_rig, size, total)?);
        plain.raw.push(raw);
        zoned.device.push(device_read(&mut zoned_rig, size, total)?);
        zoned.raw.push(raw);
    }
    drop((plain_rig, zoned_rig, file));
    for path in [&plain_path, &zoned_path] {
        let _ = std::fs::remove_file(path);
    }
    Ok(vec![plain, zoned])
}

/// A full ZONE_REPORT of 100,000 zones, and RESET_ALL with every 10th zone written.
fn many_zone_cases(settings: &Settings) -> Result<Vec<Case>, String> {
    let mut report = Case::new(&format!("report {MANY_ZONES} zones"), "ms", "", "< 20 ms");
    let mut reset_all = Case::new(
        &format!(
            "reset-all ({} of {MANY_ZONES} zones written)",
            MANY_ZONES / RESET_ALL_EVERY
        ),
        "ms",
        "",
        "< 10 ms",
    );
    let mut reclaim = Case::new("idle reclaim after that reset-all", "ms", "", "");
    let path = settings.dir.join("many-zones.img");
    let geometry = zoned_geometry(MANY_ZONES * MANY_ZONES_ZONE_BYTES, MANY_ZONES_ZONE_BYTES);
    let reply_bytes = 64 + MANY_ZONES * 64;
    let mut rig = Rig::new(zoned_block(&path, geometry)?, 1, reply_bytes as u32)?;
    let zone_sectors = MANY_ZONES_ZONE_BYTES / SECTOR;
    for _ in 0..settings.reps {
        let start = Instant::now();
        rig.run(1, 1, |_| Op::report(0, reply_bytes as u32))?;
        report.device.push(start.elapsed().as_secs_f64() * 1e3);
        let reported = rig.report_zone_count(0)?;
        if reported != MANY_ZONES {
            return Err(format!(
                "the zone report listed {reported} zones, not {MANY_ZONES}"
            ));
        }
    }
    let written = MANY_ZONES / RESET_ALL_EVERY;
    let mut writer = Rig::new(zoned_block(&path, geometry)?, QUEUE_DEPTH, 4 * KIB as u32)?;
    for _ in 0..settings.reps {
        writer.run(written, QUEUE_DEPTH, |i| {
            Op::write(i * RESET_ALL_EVERY * zone_sectors, 4 * KIB as u32)
        })?;
        // Only the reset is timed, not the write-back of the data written just now.
        writer.run(1, 1, |_| Op::zone_management(request_type::FLUSH))?;
        let start = Instant::now();
        writer.run(1, 1, |_| Op::zone_management(zone_request::ZONE_RESET_ALL))?;
        reset_all.device.push(start.elapsed().as_secs_f64() * 1e3);
        // The zones' blocks go back once the guest leaves the disk alone.
        let start = Instant::now();
        writer.idle();
        reclaim.device.push(start.elapsed().as_secs_f64() * 1e3);
    }
    drop((rig, writer));
    let _ = std::fs::remove_file(&path);
    Ok(vec![report, reset_all, reclaim])
}

fn parse_args() -> Result<Settings, String> {
    let mut settings = Settings {
        quick: false,
        reps: 0,
        dir: std::env::temp_dir(),
        out: PathBuf::new(),
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => settings.quick = true,
            "--reps" => {
                let text = value("--reps")?;
                settings.reps = text
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--reps {text}: not a positive number"))?;
            }
            "--dir" => settings.dir = PathBuf::from(value("--dir")?),
            "--out" => settings.out = PathBuf::from(value("--out")?),
            "--only" => settings.only = Some(value("--only")?),
            other => {
                return Err(format!(
                    "unknown argument {other} (usage: device-bench [--quick] [--reps N] [--dir DIR] [--only TEXT] --out FILE.json)"
                ))
            }
        }
    }
    if settings.out.as_os_str().is_empty() {
        return Err("--out FILE.json is required".to_string());
    }
    if settings.reps == 0 {
        settings.reps = if settings.quick { 3 } else { 7 };
    }
    Ok(settings)
}

/// One step of the suite: a description and what measures it.
type Step<'a> = Box<dyn Fn() -> Result<Vec<Case>, String> + 'a>;

fn run(settings: &Settings) -> Result<(), String> {
    std::fs::create_dir_all(&settings.dir)
        .map_err(|e| format!("cannot create {}: {e}", settings.dir.display()))?;
    let (big_total, small_total) = if settings.quick {
        (64 * MIB, 16 * MIB)
    } else {
        (256 * MIB, 64 * MIB)
    };
    let mut cases = Vec::new();
    let steps: [(&str, Step); 5] = [
        (
            "sequential writes, 128 KiB",
            Box::new(|| write_cases(settings, 128 * KIB, big_total)),
        ),
        (
            "sequential writes, 4 KiB",
            Box::new(|| write_cases(settings, 4 * KIB, small_total)),
        ),
        (
            "sequential reads, 128 KiB",
            Box::new(|| read_cases(settings, 128 * KIB, big_total)),
        ),
        (
            "sequential reads, 4 KiB",
            Box::new(|| read_cases(settings, 4 * KIB, small_total)),
        ),
        (
            "zone report and reset-all, 100,000 zones",
            Box::new(|| many_zone_cases(settings)),
        ),
    ];
    for (what, step) in steps {
        if settings
            .only
            .as_ref()
            .is_some_and(|only| !what.contains(only.as_str()))
        {
            continue;
        }
        eprintln!("device-bench: {what} ({} repetitions)", settings.reps);
        for case in step()? {
            eprintln!("  {}", case.summary());
            cases.push(case);
        }
    }
    let json = format!(
        "{{\"quick\": {}, \"reps\": {}, \"queue_depth\": {QUEUE_DEPTH}, \"dir\": \"{}\", \"cases\": [\n  {}\n]}}\n",
        settings.quick,
        settings.reps,
        settings.dir.display(),
        cases.iter().map(Case::json).collect::<Vec<_>>().join(",\n  ")
    );
    std::fs::write(&settings.out, json)
        .map_err(|e| format!("cannot write {}: {e}", settings.out.display()))
}

fn main() -> ExitCode {
    match parse_args().and_then(|settings| run(&settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("device-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
