//! The zone trace, driven as a guest drives the disk: a whole virtio-blk device over an image,
//! through a split virtqueue (`testing::driver`), and each line read back with serde_json.

use std::sync::Arc;

use serde_json::Value;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::block::{request_type, Block, Completion, Executor, Segment};
use crate::testing::driver::{Buffer, SplitQueueDriver};
use crate::virtio::{GuestMemoryMmap, InterruptSignal, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::zoned::geometry::{FailWrite, FaultInjection};
use crate::zoned::lanes::PARALLEL_MIN_BYTES;
use crate::zoned::wire::{self, request as zone_request};
use crate::zoned::{ZonedExecutor, ZonedGeometry, ZonedImage};

/// 1 MiB zones: zone 0 conventional, zones 1..8 sequential.
const ZONE: u64 = 2048;
const HEADER: u64 = 0x1000;
const STATUS: u64 = 0x2000;
const DATA: u64 = 0x10_0000;

struct NoInterrupt;

impl InterruptSignal for NoInterrupt {
    fn signal_used_queue(&self, _queue_index: u16) -> io::Result<()> {
        Ok(())
    }
    fn signal_config_change(&self) -> io::Result<()> {
        Ok(())
    }
}

fn geometry() -> ZonedGeometry {
    ZonedGeometry {
        capacity: 8 * ZONE,
        zone_size: ZONE,
        zone_capacity: ZONE,
        conventional_zones: 1,
        max_open: 2,
        max_active: 3,
        max_append_sectors: 256,
        write_granularity: 512,
        logical_block_size: 512,
    }
}

/// A fresh image's executor with `faults`, tracing into `trace`.
fn traced_executor(
    image: &TempFile,
    faults: &FaultInjection,
    trace: ZoneTrace,
) -> ZonedExecutor<crate::zoned::image::ImageFile> {
    let path = image.as_path().to_path_buf();
    let _ = std::fs::remove_file(&path);
    let disk = ZonedImage::create(&path, geometry()).unwrap();
    let _ = std::fs::remove_file(&path);
    ZonedExecutor::with_faults(disk, faults)
        .unwrap()
        .with_trace(trace)
}

/// A zoned device as the guest sees it, with its trace.
struct Rig {
    memory: GuestMemoryMmap,
    block: Block,
    driver: SplitQueueDriver,
    trace: TempFile,
    _image: TempFile,
}

impl Rig {
    fn new(faults: &FaultInjection) -> Self {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let trace = TempFile::new().unwrap();
        let image = TempFile::new().unwrap();
        let executor = traced_executor(&image, faults, ZoneTrace::create(trace.as_path()).unwrap());
        let mut block = Block::with_executor(Box::new(executor), "traced");
        block.set_acked_features(VIRTIO_F_VERSION_1 | 1 << wire::VIRTIO_BLK_F_ZONED);
        let (driver, queue) = SplitQueueDriver::new(&memory, GuestAddress(0), 16).unwrap();
        block
            .activate(memory.clone(), vec![queue], Arc::new(NoInterrupt))
            .unwrap();
        Rig {
            memory,
            block,
            driver,
            trace,
            _image: image,
        }
    }

    /// Makes `buffers` one chain, lets the device serve it, and returns the status byte.
    fn chain(&mut self, buffers: &[Buffer]) -> u8 {
        self.memory.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        self.driver.add_chain(buffers).unwrap();
        self.block.process_queue(0).unwrap();
        assert_eq!(self.driver.take_used().unwrap().len(), 1);
        self.memory.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// One request: a header, `readable` data bytes or `writable` reply bytes, the status.
    fn submit(&mut self, kind: u32, sector: u64, readable: u32, writable: u32) -> u8 {
        crate::testing::write_request_header(&self.memory, HEADER, kind, sector);
        let mut buffers = vec![Buffer::readable(GuestAddress(HEADER), 16)];
        if readable > 0 {
            buffers.push(Buffer::readable(GuestAddress(DATA), readable));
        }
        if writable > 0 {
            buffers.push(Buffer::writable(GuestAddress(DATA), writable));
        }
        buffers.push(Buffer::writable(GuestAddress(STATUS), 1));
        self.chain(&buffers)
    }

    /// The trace so far (the device flushed as at exit), one JSON object per line.
    fn lines(&mut self) -> Vec<Value> {
        self.block.flush().unwrap();
        parse_lines(self.trace.as_path())
    }
}

fn parse_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'));
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect()
}

/// The fields of a line that do not depend on time, as JSON.
fn fields(line: &Value) -> Value {
    let mut line = line.clone();
    let object = line.as_object_mut().unwrap();
    assert!(object.remove("t").unwrap().is_u64());
    line
}

fn expect(
    op: &str,
    zone: Option<u64>,
    sector: Option<u64>,
    len: Option<u64>,
    wp: (Option<u64>, Option<u64>),
    st: &str,
) -> Value {
    serde_json::json!({
        "op": op, "zone": zone, "sector": sector, "len": len, "wp0": wp.0, "wp1": wp.1, "st": st,
    })
}

/// Every request type gets its line, with the write pointer of its zone before and after, in
/// the order served, with times that never go back.
#[test]
fn every_request_type_has_a_line_with_its_write_pointers() {
    let mut rig = Rig::new(&FaultInjection::default());
    let z1 = ZONE;
    let ok = wire::status::OK;
    assert_eq!(rig.submit(request_type::OUT, z1, 4096, 0), ok);
    assert_eq!(rig.submit(zone_request::ZONE_APPEND, z1, 4096, 8), ok);
    assert_eq!(rig.submit(request_type::IN, z1, 0, 8192), ok);
    assert_eq!(
        rig.submit(request_type::OUT, z1 + 100, 512, 0),
        wire::status::ZONE_UNALIGNED_WP
    );
    assert_eq!(rig.submit(zone_request::ZONE_REPORT, 0, 0, 4096), ok);
    assert_eq!(rig.submit(zone_request::ZONE_OPEN, 2 * ZONE, 0, 0), ok);
    assert_eq!(rig.submit(zone_request::ZONE_CLOSE, 2 * ZONE, 0, 0), ok);
    assert_eq!(rig.submit(zone_request::ZONE_FINISH, z1, 0, 0), ok);
    assert_eq!(rig.submit(zone_request::ZONE_RESET, z1, 0, 0), ok);
    assert_eq!(rig.submit(request_type::OUT, 8, 1024, 0), ok);
    assert_eq!(rig.submit(request_type::FLUSH, 0, 0, 0), ok);
    assert_eq!(rig.submit(zone_request::ZONE_RESET_ALL, 0, 0, 0), ok);
    assert_eq!(rig.submit(request_type::GET_ID, 0, 0, 20), ok);
    assert_eq!(rig.submit(99, 5, 0, 0), wire::status::UNSUPP);
    // A zone operation on the conventional zone, past the disk: their errors.
    assert_eq!(
        rig.submit(zone_request::ZONE_RESET, 0, 0, 0),
        wire::status::ZONE_INVALID_CMD
    );
    assert_eq!(
        rig.submit(request_type::IN, 8 * ZONE, 0, 512),
        wire::status::IOERR
    );
    let lines = rig.lines();
    let got: Vec<Value> = lines.iter().map(fields).collect();
    let s = Some;
    let expected = vec![
        expect("write", s(1), s(z1), s(8), (s(z1), s(z1 + 8)), "OK"),
        expect("append", s(1), s(z1), s(8), (s(z1 + 8), s(z1 + 16)), "OK"),
        expect("read", s(1), s(z1), s(16), (s(z1 + 16), s(z1 + 16)), "OK"),
        expect(
            "write",
            s(1),
            s(z1 + 100),
            s(1),
            (s(z1 + 16), s(z1 + 16)),
            "UNALIGNED_WP",
        ),
        expect("report", s(0), s(0), None, (None, None), "OK"),
        expect(
            "open",
            s(2),
            s(2 * ZONE),
            None,
            (s(2 * ZONE), s(2 * ZONE)),
            "OK",
        ),
        expect(
            "close",
            s(2),
            s(2 * ZONE),
            None,
            (s(2 * ZONE), s(2 * ZONE)),
            "OK",
        ),
        // FULL: a report gives the zone end.
        expect("finish", s(1), s(z1), None, (s(z1 + 16), s(2 * ZONE)), "OK"),
        expect("reset", s(1), s(z1), None, (s(2 * ZONE), s(z1)), "OK"),
        // The conventional zone has no write pointer.
        expect("write", s(0), s(8), s(2), (None, None), "OK"),
        expect("flush", None, None, None, (None, None), "OK"),
        expect("reset_all", None, None, None, (None, None), "OK"),
        expect("get_id", None, None, None, (None, None), "OK"),
        {
            let mut unknown = expect("unknown", s(0), s(5), None, (None, None), "UNSUPP");
            unknown["type"] = 99.into();
            unknown
        },
        expect("reset", s(0), s(0), None, (None, None), "INVALID_CMD"),
        expect("read", None, s(8 * ZONE), s(1), (None, None), "IOERR"),
    ];
    assert_eq!(got, expected);
    let times: Vec<u64> = lines.iter().map(|l| l["t"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

/// An injected write failure: IOERR in `st`, and the write pointer where it was.
#[test]
fn a_failed_write_shows_its_status_and_an_unmoved_write_pointer() {
    let faults = FaultInjection {
        fail_write: Some(FailWrite {
            zone: 1,
            nth: 2,
            status: wire::status::IOERR,
        }),
        ..FaultInjection::default()
    };
    let mut rig = Rig::new(&faults);
    assert_eq!(
        rig.submit(request_type::OUT, ZONE, 4096, 0),
        wire::status::OK
    );
    assert_eq!(
        rig.submit(request_type::OUT, ZONE + 8, 4096, 0),
        wire::status::IOERR
    );
    assert_eq!(
        rig.submit(request_type::OUT, ZONE + 8, 4096, 0),
        wire::status::OK
    );
    let got: Vec<Value> = rig.lines().iter().map(fields).collect();
    let s = Some;
    assert_eq!(
        got,
        vec![
            expect("write", s(1), s(ZONE), s(8), (s(ZONE), s(ZONE + 8)), "OK"),
            expect(
                "write",
                s(1),
                s(ZONE + 8),
                s(8),
                (s(ZONE + 8), s(ZONE + 8)),
                "IOERR"
            ),
            expect(
                "write",
                s(1),
                s(ZONE + 8),
                s(8),
                (s(ZONE + 8), s(ZONE + 16)),
                "OK"
            ),
        ]
    );
}

/// Chains that are not requests get a line each: `why` names the problem, `st` is IOERR, or
/// NONE for a chain without a status byte, which is returned unanswered.
#[test]
fn malformed_chains_have_lines() {
    let mut rig = Rig::new(&FaultInjection::default());
    // Eight bytes of header.
    assert_eq!(
        rig.chain(&[
            Buffer::readable(GuestAddress(HEADER), 8),
            Buffer::writable(GuestAddress(STATUS), 1),
        ]),
        wire::status::IOERR
    );
    // Nothing device-writable: no status byte.
    assert_eq!(
        rig.chain(&[Buffer::readable(GuestAddress(HEADER), 16)]),
        0xee
    );
    let lines = rig.lines();
    let got: Vec<Value> = lines.iter().map(fields).collect();
    let mut short = expect("malformed", None, None, None, (None, None), "IOERR");
    short["why"] = "short_header".into();
    let mut dropped = expect("malformed", None, None, None, (None, None), "NONE");
    dropped["why"] = "no_status".into();
    assert_eq!(got, vec![short, dropped]);
}

fn request(kind: u32, sector: u64, readable: &[(u64, u32)], writable: &[(u64, u32)]) -> Request {
    let seg = |&(addr, len): &(u64, u32)| Segment {
        addr: GuestAddress(addr),
        len,
    };
    Request {
        kind: RequestType::from_raw(kind),
        sector,
        readable: readable.iter().map(seg).collect(),
        writable: writable.iter().map(seg).collect(),
        status: GuestAddress(STATUS),
    }
}

/// Writes to two zones in one batch, large enough to run on two lane threads: each line still
/// has its own request's write pointers, in the order of the batch.
#[test]
fn requests_served_in_parallel_lanes_have_their_own_write_pointers() {
    let trace_file = TempFile::new().unwrap();
    let image = TempFile::new().unwrap();
    let mut executor = traced_executor(
        &image,
        &FaultInjection::default(),
        ZoneTrace::create(trace_file.as_path()).unwrap(),
    );
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let quarter = (PARALLEL_MIN_BYTES / 4) as u32;
    let step = u64::from(quarter) / 512;
    let batch = [
        request(request_type::OUT, ZONE, &[(DATA, quarter)], &[]),
        request(request_type::OUT, 2 * ZONE, &[(DATA, quarter)], &[]),
        request(request_type::OUT, ZONE + step, &[(DATA, quarter)], &[]),
        request(request_type::OUT, 2 * ZONE + step, &[(DATA, quarter)], &[]),
    ];
    let mut completions = Vec::new();
    executor.execute(&batch, &memory, &mut completions);
    assert_eq!(completions, vec![Completion::ok(0); 4]);
    executor.flush().unwrap();
    let got: Vec<Value> = parse_lines(trace_file.as_path())
        .iter()
        .map(fields)
        .collect();
    let s = Some;
    let line = |zone: u64, at: u64| {
        let start = zone * ZONE + at * step;
        expect(
            "write",
            s(zone),
            s(start),
            s(step),
            (s(start), s(start + step)),
            "OK",
        )
    };
    assert_eq!(got, vec![line(1, 0), line(2, 0), line(1, 1), line(2, 1)]);
}

/// A trace file that cannot be written (disk full) stops the trace; the guest's requests,
/// the FLUSH that found the failure included, complete as if there were none.
#[test]
fn a_trace_that_cannot_be_written_stops_and_the_disk_carries_on() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let image = TempFile::new().unwrap();
    let mut executor = traced_executor(
        &image,
        &FaultInjection::default(),
        ZoneTrace::to_file(full, Path::new("/dev/full")),
    );
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let mut completions = Vec::new();
    let write = |n: u64| request(request_type::OUT, ZONE + 8 * n, &[(DATA, 4096)], &[]);
    executor.execute(&[write(0), write(1)], &memory, &mut completions);
    assert_eq!(completions, vec![Completion::ok(0); 2]);
    assert!(executor.trace().unwrap().is_tracing());
    // The FLUSH writes the buffered lines, which fails: the trace stops, the FLUSH succeeds.
    completions.clear();
    executor.execute(
        &[request(request_type::FLUSH, 0, &[], &[])],
        &memory,
        &mut completions,
    );
    assert_eq!(completions, vec![Completion::ok(0)]);
    assert!(!executor.trace().unwrap().is_tracing());
    // More than a buffer's worth of requests afterwards: nothing is written or buffered.
    for n in 2..200 {
        completions.clear();
        executor.execute(&[write(n)], &memory, &mut completions);
        assert_eq!(completions, vec![Completion::ok(0)]);
    }
    assert_eq!(executor.disk().zones().zone(1).unwrap().wp, ZONE + 8 * 200);
    executor.flush().unwrap();
}

/// A trace FILE that cannot be created is an error naming it.
#[test]
fn a_trace_that_cannot_be_created_is_an_error_naming_it() {
    let error = ZoneTrace::create(Path::new("/nonexistent/dir/trace.jsonl")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "zoned disk trace /nonexistent/dir/trace.jsonl: cannot create it: No such file or \
         directory (os error 2)"
    );
}
