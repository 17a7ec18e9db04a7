//! `vmm image`: zoned images on the host, without a guest. `create` makes an image with the
//! geometry options of `--zoned-disk`, `report` lists its zones as util-linux's `blkzone
//! report` does (or as one JSON document), `check` verifies it. `report` and `check` open the
//! image read-only and never change it; the reading and checking is
//! `devices::zoned::inspect`, this module is the command line and the output.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{value_parser, Arg, ArgAction, ArgMatches, Command};
use devices::zoned::geometry::{GeometryOption, GeometryOverrides, ZonedGeometry, SECTOR_SIZE};
use devices::zoned::image::FORMAT_VERSION;
use devices::zoned::inspect::{self, CheckReport, InspectedImage};
use devices::zoned::{ImageError, Zone, ZoneCondition, ZoneType, ZonedImage};

/// Exit statuses of `vmm image`.
pub mod exit {
    /// Done; for `check`, the image is clean.
    pub const OK: u8 = 0;
    /// `check`: the image is sound, but with warnings (data above write pointers).
    pub const WARNINGS: u8 = 1;
    /// Bad usage, or the file cannot be read as an image at all (one line on stderr), as for
    /// vmm itself.
    pub const FAILED: u8 = 2;
    /// `check`: the image is damaged (one line per problem on stdout).
    pub const CORRUPT: u8 = 3;
}

/// What each geometry option of `create` means (the defaults are `--zoned-disk`'s).
fn option_help(option: GeometryOption) -> &'static str {
    match option {
        GeometryOption::Size => {
            "Disk size; need not be a multiple of the zone size (a smaller last zone) [default: 4G]"
        }
        GeometryOption::ZoneSize => "Zone size, a power of two [default: 64M]",
        GeometryOption::ZoneCapacity => {
            "Writable part of each sequential zone, at most the zone size [default: the zone size]"
        }
        GeometryOption::ConventionalZones => {
            "Conventional zones at the start of the disk [default: 0]"
        }
        GeometryOption::MaxOpen => "Open zone limit, 0 = unlimited [default: 0]",
        GeometryOption::MaxActive => {
            "Active (open or closed) zone limit, 0 = unlimited; at least max-open [default: 0]"
        }
        GeometryOption::MaxAppend => {
            "Largest ZONE_APPEND, at most 65024K [default: 1M, at most the zone size]"
        }
        GeometryOption::WriteGranularity => {
            "Write alignment in sequential zones, a power-of-two multiple of 512, at least the \
             logical block size [default: the logical block size]"
        }
        GeometryOption::LogicalBlockSize => "512, or 4096 for a 4Kn disk [default: 512]",
    }
}

fn image_arg() -> Arg {
    Arg::new("IMG")
        .required(true)
        .value_parser(value_parser!(PathBuf))
        .help("The image file")
}

/// The `vmm image` command line.
pub fn command() -> Command {
    let mut create = Command::new("create")
        .about(
            "Create a zoned image with the geometry options of --zoned-disk (the same names, \
             defaults and sizes); refuses to overwrite an existing file",
        )
        .after_help(
            "Sizes are bytes, or a number with a binary suffix K, M, G or T (also KiB, MiB, \
             GiB, TiB; any case), as for --zoned-disk.",
        )
        .arg(image_arg());
    for option in GeometryOption::ALL {
        create = create.arg(
            Arg::new(option.key())
                .long(option.key())
                .value_name(if option.is_size() { "SIZE" } else { "N" })
                .help(option_help(option)),
        );
    }
    let report = Command::new("report")
        .about(
            "List the zones as blkzone report does (512-byte sectors, hex; write pointers \
             relative to the zone start), read-only",
        )
        .arg(image_arg())
        .arg(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help(
                    "One JSON document instead: the geometry and, per zone, absolute sectors \
                     (fields in the README, \"Inspecting images on the host\")",
                ),
        )
        .arg(
            Arg::new("zone")
                .long("zone")
                .value_name("N")
                .value_parser(value_parser!(u64))
                .help("Start at zone N (counted from 0) [default: 0]"),
        )
        .arg(
            Arg::new("count")
                .long("count")
                .value_name("M")
                .value_parser(value_parser!(u64).range(1..))
                .help("List at most M zones [default: all]"),
        );
    let check = Command::new("check")
        .about(
            "Verify the header, both table slots of every zone, the zones' states and that no \
             data is stored above a write pointer, read-only",
        )
        .after_help(
            "Prints one line per problem, then a summary. Exit status: 0 clean; 1 sound but \
             with warnings (data above write pointers: unreclaimed space, which reads as \
             zeros); 2 not checked (bad usage, a missing file, not an image, another version, \
             in use by vmm); 3 damaged.",
        )
        .arg(image_arg());
    Command::new("image")
        .bin_name("vmm image")
        .about("Zoned images on the host, without a guest: create, report and check them")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(create)
        .subcommand(report)
        .subcommand(check)
}

/// Runs `vmm image` with the arguments after `image`.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = std::iter::once(OsString::from("vmm image")).chain(args);
    let matches = match command().try_get_matches_from(args) {
        Ok(matches) => matches,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(exit::FAILED);
        }
        Err(e) => return fail(crate::config::clap_error_line(&e)),
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    let result = run(&matches, &mut out);
    let result = result.and_then(|status| out.flush().map(|()| status).map_err(Failure::from));
    match result {
        Ok(status) => ExitCode::from(status),
        // Whoever reads the output stopped (`| head`): not an error of the image.
        Err(Failure::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Output(e)) => fail(format!("cannot write the output: {e}")),
        Err(Failure::Message(message)) => fail(message),
    }
}

/// Runs the subcommand `matches` holds, writing its output to `out`; returns the exit status.
fn run(matches: &ArgMatches, out: &mut impl Write) -> Result<u8, Failure> {
    match matches.subcommand() {
        Some(("create", m)) => create(m, out),
        Some(("report", m)) => report(m, out),
        Some(("check", m)) => check(image_path(m), out),
        _ => Err(Failure::Message("no such subcommand".into())),
    }
}

/// Why a subcommand stopped: a one-line message, or its output could not be written.
#[derive(Debug)]
enum Failure {
    Message(String),
    Output(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Output(e)
    }
}

fn failure(e: impl std::fmt::Display) -> Failure {
    Failure::Message(e.to_string())
}

fn fail(message: String) -> ExitCode {
    eprintln!("vmm: {message}");
    ExitCode::from(exit::FAILED)
}

fn image_path(m: &ArgMatches) -> &Path {
    // Required by the parser.
    m.get_one::<PathBuf>("IMG")
        .map_or(Path::new(""), PathBuf::as_path)
}

/// A byte size as an option string writes it: the largest binary suffix that divides it.
fn size_option(bytes: u64) -> String {
    for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A geometry as a `--zoned-disk` option string would give it, every option spelled out.
pub fn geometry_options(geometry: &ZonedGeometry) -> String {
    let options: Vec<String> = GeometryOption::ALL
        .into_iter()
        .map(|option| {
            let value = option.value_of(geometry);
            let value = if option.is_size() {
                size_option(value)
            } else {
                value.to_string()
            };
            format!("{}={value}", option.key())
        })
        .collect();
    options.join(",")
}

fn create(m: &ArgMatches, out: &mut impl Write) -> Result<u8, Failure> {
    let path = image_path(m);
    let mut overrides = GeometryOverrides::default();
    for option in GeometryOption::ALL {
        if let Some(value) = m.get_one::<String>(option.key()) {
            overrides.set_text(option, value).map_err(failure)?;
        }
    }
    let geometry = overrides
        .geometry()
        .map_err(|source| ImageError::Geometry {
            path: path.to_path_buf(),
            source,
        })
        .map_err(failure)?;
    drop(ZonedImage::create(path, geometry).map_err(failure)?);
    writeln!(
        out,
        "created {}: {} ({} zones)",
        path.display(),
        geometry_options(&geometry),
        geometry.nr_zones()
    )?;
    Ok(exit::OK)
}

/// The zones `--zone` and `--count` select, as a range of indices.
fn selected_zones(m: &ArgMatches, nr_zones: u64) -> Result<std::ops::Range<usize>, Failure> {
    let first = m.get_one::<u64>("zone").copied().unwrap_or(0);
    if first >= nr_zones {
        return Err(Failure::Message(format!(
            "--zone {first} is past the last zone ({} zones, 0 to {})",
            nr_zones,
            nr_zones - 1
        )));
    }
    let count = m.get_one::<u64>("count").copied().unwrap_or(nr_zones);
    let end = first.saturating_add(count).min(nr_zones);
    // At most MAX_ZONES, so both fit.
    Ok(first as usize..end as usize)
}

fn report(m: &ArgMatches, out: &mut impl Write) -> Result<u8, Failure> {
    let path = image_path(m);
    let image = InspectedImage::open(path).map_err(failure)?;
    let zones = selected_zones(m, image.geometry().nr_zones())?;
    if m.get_flag("json") {
        write_json(out, path, &image, zones)?;
    } else {
        for zone in zones.filter_map(|i| image.zones().zone(i)) {
            writeln!(out, "{}", blkzone_line(&zone))?;
        }
    }
    Ok(exit::OK)
}

/// blkzone's two-letter abbreviation of a condition.
fn condition_abbreviation(cond: ZoneCondition) -> &'static str {
    match cond {
        ZoneCondition::NotWritePointer => "nw",
        ZoneCondition::Empty => "em",
        ZoneCondition::ImplicitOpen => "oi",
        ZoneCondition::ExplicitOpen => "oe",
        ZoneCondition::Closed => "cl",
        ZoneCondition::ReadOnly => "ro",
        ZoneCondition::Full => "fu",
        ZoneCondition::Offline => "of",
    }
}

/// One zone as util-linux's `blkzone report` prints what Linux reports for it: 512-byte
/// sectors in hex, the write pointer relative to the zone's start (0 for a conventional zone;
/// for a FULL zone its length, as Linux reports start + len), `reset` and `non-seq` 0 (virtio
/// has neither).
pub fn blkzone_line(zone: &Zone) -> String {
    let wptr = match zone.zone_type {
        ZoneType::Conventional => 0,
        // READ_ONLY and OFFLINE zones have no write pointer: Linux reports all ones, and
        // blkzone prints that minus the start, as here.
        ZoneType::SequentialWriteRequired => zone.wp.wrapping_sub(zone.start),
    };
    format!(
        "  start: 0x{:09x}, len 0x{:06x}, cap 0x{:06x}, wptr 0x{:06x} reset:0 non-seq:0, \
         zcond:{:2}({}) [type: {}({})]",
        zone.start,
        zone.len,
        zone.capacity,
        wptr,
        zone.cond as u8,
        condition_abbreviation(zone.cond),
        zone.zone_type as u8,
        inspect::type_name(zone.zone_type),
    )
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            c if u32::from(c) < 0x20 => quoted.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The report as one JSON document (fields in the README, "Inspecting images on the host"):
/// the image, its geometry and the selected zones, one per line.
pub fn write_json(
    out: &mut impl Write,
    path: &Path,
    image: &InspectedImage,
    zones: std::ops::Range<usize>,
) -> io::Result<()> {
    let g = image.geometry();
    writeln!(out, "{{")?;
    writeln!(
        out,
        "  \"image\": {},",
        json_string(&path.to_string_lossy())
    )?;
    writeln!(out, "  \"format_version\": {FORMAT_VERSION},")?;
    writeln!(out, "  \"sector_size\": {SECTOR_SIZE},")?;
    writeln!(
        out,
        "  \"geometry\": {{\"capacity\": {}, \"zone_size\": {}, \"zone_capacity\": {}, \
         \"nr_zones\": {}, \"conventional_zones\": {}, \"max_open\": {}, \"max_active\": {}, \
         \"max_append_sectors\": {}, \"write_granularity\": {}, \"logical_block_size\": {}}},",
        g.capacity,
        g.zone_size,
        g.zone_capacity,
        g.nr_zones(),
        g.conventional_zones,
        g.max_open,
        g.max_active,
        g.max_append_sectors,
        g.write_granularity,
        g.logical_block_size
    )?;
    writeln!(out, "  \"active_zones\": {},", image.zones().active_zones())?;
    writeln!(out, "  \"zones\": [")?;
    let last = zones.end.saturating_sub(1);
    for index in zones {
        let (Some(zone), Some((slot, generation))) =
            (image.zones().zone(index), image.current_slot(index))
        else {
            continue;
        };
        let (_, data_end) = image.zones().saved_state(index);
        let wp = match zone.cond {
            ZoneCondition::ReadOnly | ZoneCondition::Offline => "null".to_string(),
            _ => zone.wp.to_string(),
        };
        writeln!(
            out,
            "    {{\"index\": {index}, \"start\": {}, \"len\": {}, \"capacity\": {}, \"wp\": {wp}, \
             \"data_end\": {data_end}, \"type\": \"{}\", \"cond\": \"{}\", \"cond_code\": {}, \
             \"slot\": \"{slot}\", \"generation\": {generation}}}{}",
            zone.start,
            zone.len,
            zone.capacity,
            inspect::type_name(zone.zone_type),
            inspect::condition_name(zone.cond),
            zone.cond as u8,
            if index == last { "" } else { "," }
        )?;
    }
    writeln!(out, "  ]")?;
    writeln!(out, "}}")
}

fn check(path: &Path, out: &mut impl Write) -> Result<u8, Failure> {
    let report = inspect::check(path).map_err(failure)?;
    write_check(out, path, &report)?;
    Ok(if report.errors() > 0 {
        exit::CORRUPT
    } else if report.warnings() > 0 {
        exit::WARNINGS
    } else {
        exit::OK
    })
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The findings of `vmm image check`, one line each, and a summary line.
pub fn write_check(out: &mut impl Write, path: &Path, report: &CheckReport) -> io::Result<()> {
    for finding in &report.findings {
        writeln!(out, "{finding}")?;
    }
    let path = path.display();
    match report.geometry {
        Some(geometry) if report.findings.is_empty() => writeln!(
            out,
            "{path}: clean: header valid, {} zones with both slots valid (the current one A in \
             {}, B in {}), no data above a write pointer",
            geometry.nr_zones(),
            report.current_slots[0],
            report.current_slots[1]
        ),
        _ => writeln!(
            out,
            "{path}: {}, {}",
            plural(report.errors(), "error"),
            plural(report.warnings(), "warning")
        ),
    }
}

#[cfg(test)]
mod tests;
