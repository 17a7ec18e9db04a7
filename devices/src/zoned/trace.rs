//! The zone trace of one run (`--zoned-disk ...,trace=FILE`): one JSON object per line for every
//! request the disk completed, with the zone's write pointer before and after it. The format is
//! docs/zone-trace.md; this module owns it.
//!
//! Cost: each line is formatted into one buffer kept from line to line and goes out through a
//! `BufWriter`, written when it fills, when the guest flushes the disk, when the disk is idle and
//! at exit; nothing is allocated per request. A failed write of the file (disk full) never fails
//! guest I/O: the trace stops, with one warning.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use log::warn;

use super::state::{ZoneCondition, ZoneSet};
use super::wire::status;
use crate::block::{ParseError, Request, RequestType, SECTOR_SIZE};

/// Bytes buffered before the trace goes to its file: a few hundred lines.
const BUFFER_BYTES: usize = 64 << 10;

/// What every `t` counts from: the moment the first trace of the process was opened, which vmm
/// does while it sets up its devices, before the guest runs.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// A trace FILE that cannot be created.
#[derive(Debug, thiserror::Error)]
#[error("zoned disk trace {}: cannot create it: {source}", path.display())]
pub struct TraceError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// What a traced request did to its zone, seen where it was served (on a lane thread too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// When the request completed.
    pub done: Instant,
    /// The zone's write pointer before and after it (see [`write_pointer`]).
    pub wp_before: Option<u64>,
    pub wp_after: Option<u64>,
}

/// The write pointer of zone `index` as a zone report gives it (the zone end when FULL), or
/// `None` for a zone that has none: conventional, READ_ONLY, OFFLINE, or past the disk.
pub fn write_pointer(zones: &ZoneSet, index: Option<usize>) -> Option<u64> {
    let zone = zones.zone(index?)?;
    match zone.cond {
        ZoneCondition::NotWritePointer | ZoneCondition::ReadOnly | ZoneCondition::Offline => None,
        _ => Some(zone.wp),
    }
}

/// The name of a request type in the trace's `op`.
fn op_name(kind: RequestType) -> &'static str {
    match kind {
        RequestType::In => "read",
        RequestType::Out => "write",
        RequestType::Flush => "flush",
        RequestType::GetId => "get_id",
        RequestType::ZoneAppend => "append",
        RequestType::ZoneReport => "report",
        RequestType::ZoneOpen => "open",
        RequestType::ZoneClose => "close",
        RequestType::ZoneFinish => "finish",
        RequestType::ZoneReset => "reset",
        RequestType::ZoneResetAll => "reset_all",
        RequestType::Unsupported(_) => "unknown",
    }
}

/// The name of a status byte in the trace's `st` (virtio-blk's names without VIRTIO_BLK_S_ and
/// ZONE_).
pub fn status_name(code: u8) -> &'static str {
    match code {
        status::OK => "OK",
        status::IOERR => "IOERR",
        status::UNSUPP => "UNSUPP",
        status::ZONE_INVALID_CMD => "INVALID_CMD",
        status::ZONE_UNALIGNED_WP => "UNALIGNED_WP",
        status::ZONE_OPEN_RESOURCE => "OPEN_RESOURCE",
        status::ZONE_ACTIVE_RESOURCE => "ACTIVE_RESOURCE",
        _ => "OTHER",
    }
}

/// The short name of why a chain is not a request, for the trace's `why`.
fn parse_error_name(error: &ParseError) -> &'static str {
    match error {
        ParseError::NoStatus => "no_status",
        ParseError::TooManyDescriptors => "too_many_descriptors",
        ParseError::OutsideMemory => "outside_memory",
        ParseError::ReadableAfterWritable => "readable_after_writable",
        ParseError::ShortHeader => "short_header",
        ParseError::TooLarge => "too_large",
        ParseError::HeaderUnreadable(_) => "header_unreadable",
    }
}

/// The trace file of one zoned disk. `None` inside once tracing has stopped.
pub struct ZoneTrace {
    out: Option<BufWriter<File>>,
    path: PathBuf,
    epoch: Instant,
    /// The line being formatted, kept to reuse its room.
    line: Vec<u8>,
}

impl std::fmt::Debug for ZoneTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneTrace")
            .field("path", &self.path)
            .field("tracing", &self.out.is_some())
            .finish_non_exhaustive()
    }
}

impl ZoneTrace {
    /// Creates (or truncates) `path`; done before the seccomp filters, which allow writing to
    /// it but not opening it.
    pub fn create(path: &Path) -> Result<Self, TraceError> {
        let file = File::create(path).map_err(|source| TraceError {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::to_file(file, path))
    }

    /// A trace into `file`, already open (`path` names it in the warning if writing fails).
    pub fn to_file(file: File, path: &Path) -> Self {
        ZoneTrace {
            out: Some(BufWriter::with_capacity(BUFFER_BYTES, file)),
            path: path.to_path_buf(),
            epoch: *EPOCH.get_or_init(Instant::now),
            line: Vec::with_capacity(256),
        }
    }

    /// Whether lines still go to the file (false once a write failed).
    pub fn is_tracing(&self) -> bool {
        self.out.is_some()
    }

    /// Writes the buffered lines to the file (a guest FLUSH, idle time, exit).
    pub fn flush(&mut self) {
        if let Some(out) = self.out.as_mut() {
            if let Err(error) = out.flush() {
                self.stop(&error);
            }
        }
    }

    /// The line of a request an executor served: `geometry` places it, `observed` says what it
    /// did to its zone (`None`: nothing seen, as for a flush).
    pub fn request(
        &mut self,
        zones: &ZoneSet,
        request: &Request,
        status: u8,
        observed: Option<Observed>,
    ) {
        if self.out.is_none() {
            return;
        }
        let kind = request.kind;
        let geometry = zones.geometry();
        // Where the request points: a sector for everything but FLUSH, RESET_ALL and GET_ID
        // (whose header sector means nothing), a length for the data requests.
        let addressed = !matches!(
            kind,
            RequestType::Flush | RequestType::ZoneResetAll | RequestType::GetId
        );
        let sector = addressed.then_some(request.sector);
        let zone = sector.and_then(|sector| geometry.zone_index(sector));
        let data_bytes = match kind {
            RequestType::In => Some(request.writable_len()),
            RequestType::Out | RequestType::ZoneAppend => Some(request.readable_len()),
            _ => None,
        };
        let sectors = data_bytes.map(|bytes| bytes.div_ceil(SECTOR_SIZE));
        let done = observed.map_or_else(Instant::now, |o| o.done);
        let line = Line {
            done,
            op: op_name(kind),
            raw_type: match kind {
                RequestType::Unsupported(raw) => Some(raw),
                _ => None,
            },
            zone,
            sector,
            sectors,
            wp_before: observed.and_then(|o| o.wp_before),
            wp_after: observed.and_then(|o| o.wp_after),
            status: Some(status),
            why: None,
        };
        self.write(&line);
    }

    /// The line of a chain that is not a request; `answered` says whether it got IOERR (a
    /// chain without a usable status byte is returned unanswered: `st` is `NONE`).
    pub fn malformed(&mut self, error: &ParseError, answered: bool) {
        if self.out.is_none() {
            return;
        }
        self.write(&Line {
            done: Instant::now(),
            op: "malformed",
            raw_type: None,
            zone: None,
            sector: None,
            sectors: None,
            wp_before: None,
            wp_after: None,
            status: answered.then_some(status::IOERR),
            why: Some(parse_error_name(error)),
        });
    }

    fn write(&mut self, line: &Line) {
        self.line.clear();
        // Writing into a Vec cannot fail.
        let _ = line.format(self.epoch, &mut self.line);
        let Some(out) = self.out.as_mut() else {
            return;
        };
        if let Err(error) = out.write_all(&self.line) {
            self.stop(&error);
        }
    }

    /// Stops tracing after a failed write, with the one warning.
    fn stop(&mut self, error: &io::Error) {
        warn!(
            "zoned disk trace {}: cannot write it ({error}); tracing stops, the disk carries on",
            self.path.display()
        );
        // The buffered lines are dropped with the writer; dropping it would try them again.
        if let Some(out) = self.out.take() {
            let (_file, _unwritten) = out.into_parts();
        }
    }
}

/// One line's fields.
struct Line {
    done: Instant,
    op: &'static str,
    raw_type: Option<u32>,
    zone: Option<usize>,
    sector: Option<u64>,
    sectors: Option<u64>,
    wp_before: Option<u64>,
    wp_after: Option<u64>,
    /// `None`: no status was written (a dropped chain).
    status: Option<u8>,
    why: Option<&'static str>,
}

/// A number, or `null`.
struct Maybe<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Maybe<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("null"),
        }
    }
}

impl Line {
    /// `{"t":..,"op":"..",["type":N,]"zone":..,"sector":..,"len":..,"wp0":..,"wp1":..,"st":".."[,"why":".."]}`
    /// and a newline. Every string is one of this module's names, so nothing needs escaping.
    fn format(&self, epoch: Instant, out: &mut Vec<u8>) -> io::Result<()> {
        let micros = self.done.saturating_duration_since(epoch).as_micros();
        let micros = u64::try_from(micros).unwrap_or(u64::MAX);
        write!(out, "{{\"t\":{micros},\"op\":\"{}\"", self.op)?;
        if let Some(raw) = self.raw_type {
            write!(out, ",\"type\":{raw}")?;
        }
        write!(
            out,
            ",\"zone\":{},\"sector\":{},\"len\":{},\"wp0\":{},\"wp1\":{},\"st\":\"{}\"",
            Maybe(self.zone),
            Maybe(self.sector),
            Maybe(self.sectors),
            Maybe(self.wp_before),
            Maybe(self.wp_after),
            self.status.map_or("NONE", status_name),
        )?;
        if let Some(why) = self.why {
            write!(out, ",\"why\":\"{why}\"")?;
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
