//! The bodies of the fuzz targets in `fuzz/fuzz_targets/`, one function each, taking the
//! fuzzer's bytes. Each decodes its input with [`Input`] into what a hostile guest (or a hostile
//! image file) could do, drives the real device code, and panics only when a device broke a
//! promise: a panic inside the device, a backend access the device should have refused, a zone
//! state that breaks the state machine's invariants, an image that changed on open.
//!
//! The input formats are documented on each function; [`seeds`] builds valid inputs in them
//! (the files in `fuzz/seeds/`).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio as regs;
use vm_memory::{Bytes, GuestAddress};

use super::{
    guest_memory, layout, write_request_header, CountingInterrupt, Input, MemoryBackend, SplitRing,
};
use crate::block::{request_type, Block, QUEUE_SIZE, SECTOR_SIZE};
use crate::virtio::mmio::IrqTrigger;
use crate::virtio::{status, GuestMemoryMmap, MmioTransport, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::zoned::image::{crc32, slot_crc, ImageFile};
use crate::zoned::state::{WritePlan, ZoneOpPlan};
use crate::zoned::wire::request as zone_request;
use crate::zoned::{
    FailWrite, FaultInjection, GeometryOverrides, ZoneCondition, ZoneOp, ZoneSet, ZonedDisk,
    ZonedGeometry, ZonedHandler, ZonedImage,
};

/// Request types a chain picks by index (an index past the table reads a raw type).
pub const REQUEST_TYPES: [u32; 13] = [
    request_type::IN,
    request_type::OUT,
    request_type::FLUSH,
    request_type::GET_ID,
    zone_request::ZONE_APPEND,
    zone_request::ZONE_REPORT,
    zone_request::ZONE_OPEN,
    zone_request::ZONE_CLOSE,
    zone_request::ZONE_FINISH,
    zone_request::ZONE_RESET,
    zone_request::ZONE_RESET_ALL,
    2,
    11,
];

/// Opcodes of the request stream shared by the chain targets (see [`virtio_blk_chain`]).
pub mod op {
    pub const CHAIN: u8 = 0;
    pub const DESCRIPTOR: u8 = 1;
    pub const PUBLISH: u8 = 2;
    pub const AVAIL_IDX: u8 = 3;
    pub const MEMORY: u8 = 4;
    pub const NOTIFY: u8 = 5;
    pub const AVAIL_FLAGS: u8 = 6;
    pub const RESTART: u8 = 7;
    pub const COUNT: u8 = 8;
}

/// What the stream decoder needs to know to aim sectors at interesting places.
#[derive(Clone, Copy, Debug)]
struct DiskShape {
    capacity_sectors: u64,
    zone_sectors: u64,
}

impl DiskShape {
    fn sector(&self, input: &mut Input) -> u64 {
        match input.u8() % 4 {
            0 => input.u64(),
            1 => {
                let zones = self.capacity_sectors.div_ceil(self.zone_sectors).max(1);
                let zone = u64::from(input.u8()) % zones;
                zone * self.zone_sectors + u64::from(input.u8())
            }
            2 => self.capacity_sectors.wrapping_sub(u64::from(input.u8())),
            _ => u64::from(input.u8()),
        }
    }
}

/// Reads one chain (header values and parts) and writes it into the ring.
fn decode_chain(
    input: &mut Input,
    ring: &mut SplitRing,
    memory: &GuestMemoryMmap,
    shape: DiskShape,
) {
    let type_index = usize::from(input.u8());
    let request_type = match REQUEST_TYPES.get(type_index) {
        Some(&known) => known,
        None => input.u32(),
    };
    let sector = shape.sector(input);
    write_request_header(memory, layout::HEADER, request_type, sector);
    let count = input.u8();
    let count = if count & 0x80 != 0 {
        9 + usize::from(count & 0x7f) * 4
    } else {
        usize::from(count % 9)
    };
    let parts: Vec<(u64, u32, bool)> = (0..count).map(|_| decode_part(input)).collect();
    ring.add_chain(&parts);
}

/// One descriptor of a chain: kind byte (bit 0 device-writable, bits 1-3 where, bits 4-5 how
/// long), then the arguments those pick.
fn decode_part(input: &mut Input) -> (u64, u32, bool) {
    let kind = input.u8();
    let addr = match (kind >> 1) & 7 {
        0 => layout::HEADER + u64::from(input.u8() % 32),
        1 => layout::DATA + u64::from(input.u16()) * 16,
        2 => layout::STATUS + u64::from(input.u8()),
        3 => input.u64(),
        4 => layout::LOW_SIZE - u64::from(input.u16()),
        5 => layout::HIGH_START + u64::from(input.u16()),
        6 => layout::LOW_SIZE + u64::from(input.u16()),
        _ => layout::DESC_TABLE + u64::from(input.u16()),
    };
    let len = match (kind >> 4) & 3 {
        0 => u32::from(input.u16()),
        1 => u32::from(input.u8() % 17) * SECTOR_SIZE as u32,
        2 => input.u32(),
        _ => u32::from(input.u8()),
    };
    (addr, len, kind & 1 != 0)
}

/// A block device (plain or zoned) activated on a [`SplitRing`], as the chain targets drive it.
struct DeviceUnderTest {
    block: Block,
    memory: GuestMemoryMmap,
    ring: SplitRing,
    event_idx: bool,
    interrupt: Arc<CountingInterrupt>,
}

impl DeviceUnderTest {
    fn new(block: Block, memory: &GuestMemoryMmap, queue_size: u16, event_idx: bool) -> Self {
        let mut device = DeviceUnderTest {
            block,
            memory: memory.clone(),
            ring: SplitRing::new(memory, queue_size),
            event_idx,
            interrupt: Arc::new(CountingInterrupt::default()),
        };
        device.activate();
        device
    }

    fn activate(&mut self) {
        if let Some(queue) = self.ring.queue(QUEUE_SIZE, self.event_idx) {
            let interrupt = self.interrupt.clone();
            // As a transport does at FEATURES_OK.
            self.block.set_acked_features(self.block.avail_features());
            // A queue size the queue refused leaves an invalid queue: the device must cope.
            let _ = self
                .block
                .activate(self.memory.clone(), vec![queue], interrupt);
        }
    }

    fn notify(&mut self) {
        if self.block.is_activated() {
            // A broken ring is an error the transport turns into DEVICE_NEEDS_RESET; calling
            // again afterwards must still be harmless.
            let _ = self.block.process_queue(0);
        }
    }

    fn restart(&mut self) {
        self.block.reset();
        self.ring.clear();
        self.activate();
    }

    /// Runs the request stream of [`virtio_blk_chain`] until the input is used up.
    fn run(&mut self, input: &mut Input, shape: DiskShape) {
        while !input.is_empty() {
            match input.u8() % op::COUNT {
                op::CHAIN => {
                    decode_chain(input, &mut self.ring, &self.memory, shape);
                    self.notify();
                }
                op::DESCRIPTOR => {
                    let (index, addr, len) = (input.u16(), input.u64(), input.u32());
                    let (flags, next) = (input.u16(), input.u16());
                    self.ring.write_descriptor(index, addr, len, flags, next);
                }
                op::PUBLISH => self.ring.publish(input.u16()),
                op::AVAIL_IDX => self.ring.set_avail_idx(input.u16()),
                op::MEMORY => write_memory(input, &self.memory),
                op::NOTIFY => self.notify(),
                op::AVAIL_FLAGS => self.ring.set_avail_flags(input.u16()),
                _ => self.restart(),
            }
        }
        self.notify();
    }
}

/// Up to 64 bytes of input written anywhere in the low region.
fn write_memory(input: &mut Input, memory: &GuestMemoryMmap) {
    let addr = u64::from(input.u32()) % layout::LOW_SIZE;
    let len = usize::from(input.u8() % 64);
    let bytes = input.bytes(len);
    let _ = memory.write_slice(bytes, GuestAddress(addr));
}

/// The queue size byte: a power of two from 1 to 256, or (top bit set) any value, which the
/// queue refuses.
fn queue_size(byte: u8) -> u16 {
    if byte & 0x80 != 0 {
        u16::from(byte & 0x7f) * 3
    } else {
        1 << (byte % 9)
    }
}

/// Plain virtio-blk: descriptor chains from a hostile driver into [`Block`] over a strict
/// in-memory backend.
///
/// Input: queue-size byte (see `queue_size`), disk-size byte (0 to 64 sectors), flags byte
/// (bit 0 read-only disk, bit 1 a size that is not whole sectors, bit 2 EVENT_IDX), then a
/// stream of operations until the input ends, each an opcode byte ([`op`], modulo
/// `op::COUNT`) with its arguments:
/// - CHAIN: type index byte (past [`REQUEST_TYPES`]: a raw le32 type follows), a sector
///   (kind byte, then le64 / zone byte + offset byte / byte below capacity / small byte), a
///   count byte (< 128: count % 9 parts; else 9 + 4 * (count & 0x7f), longer than any queue)
///   and the parts (`decode_part`); the header goes to `layout::HEADER`, the chain into
///   consecutive descriptors, its head is published and the queue notified.
/// - DESCRIPTOR: le16 index, le64 addr, le32 len, le16 flags, le16 next, written raw.
/// - PUBLISH: le16 head index into the available ring. AVAIL_IDX / AVAIL_FLAGS: raw le16.
/// - MEMORY: le32 address, length byte (% 64), bytes. NOTIFY. RESTART: reset and reactivate.
pub fn virtio_blk_chain(data: &[u8]) {
    let mut input = Input::new(data);
    let size = queue_size(input.u8());
    let sectors = u64::from(input.u8() % 65);
    let flags = input.u8();
    let bytes = sectors * SECTOR_SIZE + if flags & 2 != 0 { 100 } else { 0 };
    let backend = MemoryBackend::strict(bytes as usize, flags & 1 != 0);
    let block = Block::new(Box::new(backend), "fuzz-serial-0123456789");
    let memory = guest_memory();
    let mut device = DeviceUnderTest::new(block, &memory, size, flags & 4 != 0);
    let shape = DiskShape {
        capacity_sectors: sectors,
        zone_sectors: 8,
    };
    device.run(&mut input, shape);
}

/// A geometry decoded from 9 bytes: small zones (8 to 64 sectors), 1 to 12 of them, any
/// zone capacity, conventional zones, limits, append size, write granularity and (the top bit
/// of the granularity byte, with a 4 KiB granularity) 4096-byte logical blocks. A combination
/// the geometry refuses becomes `FALLBACK_GEOMETRY`.
fn decode_geometry(input: &mut Input) -> ZonedGeometry {
    let zone_size = 8u64 << (input.u8() % 4);
    let granularity_byte = input.u8();
    let granularity = 512u32 << (granularity_byte % 3);
    let logical_block_size = if granularity_byte & 0x80 != 0 && granularity == 4096 {
        4096
    } else {
        512
    };
    let gran_sectors = u64::from(granularity) / SECTOR_SIZE;
    let nr_zones = 1 + u64::from(input.u8() % 12);
    let short_last = (u64::from(input.u8()) % zone_size) & !(gran_sectors - 1);
    let zone_capacity = zone_size - ((u64::from(input.u8()) % zone_size) & !(gran_sectors - 1));
    let conventional_zones = u32::from(input.u8()) % nr_zones as u32;
    let max_open = u32::from(input.u8() % 5);
    let max_active = u32::from(input.u8() % 6);
    let max_append_sectors = 1 + u32::from(input.u8()) % (2 * zone_size as u32);
    ZonedGeometry::new(ZonedGeometry {
        capacity: nr_zones * zone_size - short_last,
        zone_size,
        zone_capacity,
        conventional_zones,
        max_open,
        max_active,
        max_append_sectors,
        write_granularity: granularity,
        logical_block_size,
    })
    .unwrap_or(FALLBACK_GEOMETRY)
}

/// Eight zones of 16 sectors, one conventional, limits 2 open / 3 active.
pub const FALLBACK_GEOMETRY: ZonedGeometry = ZonedGeometry {
    capacity: 8 * 16,
    zone_size: 16,
    zone_capacity: 16,
    conventional_zones: 1,
    max_open: 2,
    max_active: 3,
    max_append_sectors: 8,
    write_granularity: 512,
    logical_block_size: 512,
};

/// Faults decoded from a flags byte and three argument bytes, on sequential zones only.
fn decode_faults(input: &mut Input, geometry: &ZonedGeometry) -> FaultInjection {
    let flags = input.u8();
    let conventional = u64::from(geometry.conventional_zones);
    let sequential = geometry.nr_zones() - conventional;
    let mut zone = || conventional + u64::from(input.u8()) % sequential;
    let mut faults = FaultInjection::default();
    if flags & 1 != 0 {
        faults.read_only_zones.push(zone());
    }
    if flags & 2 != 0 {
        faults.offline_zones.push(zone());
    }
    if flags & 4 != 0 {
        faults.fail_write = Some(FailWrite {
            zone: zone(),
            nth: 1 + u64::from(flags >> 4),
            status: 1 + ((flags >> 3) & 1) * 3,
        });
    }
    faults
}

/// A fresh path for a scratch image: in /dev/shm when there is one (no disk syncs), unique
/// per process and call so that parallel tests do not collide.
fn scratch_path(what: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("vmm-fuzz-{what}-{}-{n}.img", std::process::id()))
}

/// Removes a scratch file when dropped, also when the body panics.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The zoned device. The first byte picks the mode: even, requests through the queue; odd,
/// the zone state machine alone ([`zone_state_machine`]).
///
/// Requests: a geometry (`decode_geometry`, 9 bytes), faults (`decode_faults`, up to 4
/// bytes), then the input of [`virtio_blk_chain`] from its queue-size byte on (the disk-size
/// and read-only bits are ignored). The device is `Block` with a `ZonedHandler` over a
/// `ZonedImage` in a scratch file. Afterwards the image must reopen (a guest cannot make an
/// image unreadable), with zones that keep the invariants.
pub fn zoned_requests(data: &[u8]) {
    let mut input = Input::new(data);
    if input.u8() & 1 != 0 {
        zone_state_machine(&mut input);
        return;
    }
    let geometry = decode_geometry(&mut input);
    let faults = decode_faults(&mut input, &geometry);
    let scratch = Scratch(scratch_path("zoned"));
    let disk = ZonedImage::create(&scratch.0, geometry).expect("a fresh scratch image");
    let handler = ZonedHandler::with_faults(disk, &faults).expect("faults on sequential zones");
    let block = Block::with_handler(
        Box::new(handler.capacity_backend()),
        "fuzz-zoned",
        Box::new(handler),
    );
    let size = queue_size(input.u8());
    let _ = (input.u8(), input.u8());
    let memory = guest_memory();
    let mut device = DeviceUnderTest::new(block, &memory, size, false);
    let shape = DiskShape {
        capacity_sectors: geometry.capacity,
        zone_sectors: geometry.zone_size,
    };
    device.run(&mut input, shape);
    drop(device);
    let reopened = ZonedImage::open(&scratch.0, &GeometryOverrides::default())
        .unwrap_or_else(|error| panic!("the image does not reopen after guest I/O: {error}"));
    check_zone_invariants(reopened.zones());
}

/// A plan kept back to be committed later, after other operations made it stale.
enum HeldPlan {
    Write(WritePlan),
    ZoneOp(ZoneOpPlan),
}

/// The zone state machine driven directly. Input after the mode byte: a geometry
/// (`decode_geometry`), then operations of 6 bytes and more: zone byte, sector kind byte
/// (zone start, write pointer, le16, le64), length kind byte (granularity multiple, byte,
/// le64), plan byte (1 in 8: the plan is held back instead of committed, as when the backend's
/// I/O fails, and a later HOLD commits it stale), and the operation byte. After every
/// operation the zones must keep [`check_zone_invariants`].
fn zone_state_machine(input: &mut Input) {
    let geometry = decode_geometry(input);
    let mut zones = ZoneSet::new(geometry);
    let mut held: Option<HeldPlan> = None;
    let gran = geometry.granularity_sectors();
    while !input.is_empty() {
        let zone = usize::from(input.u8()) % zones.len();
        let start = geometry.zone_start(zone);
        let sector = match input.u8() % 4 {
            0 => start,
            1 => zones.saved_state(zone).1,
            2 => u64::from(input.u16()),
            _ => input.u64(),
        };
        let nr_sectors = match input.u8() % 3 {
            0 => gran * u64::from(input.u8() % 5),
            1 => u64::from(input.u8()),
            _ => input.u64(),
        };
        let hold = input.u8() % 8 == 0;
        match input.u8() % 12 {
            0 | 1 => {
                if let Ok(plan) = zones.prepare_write(sector, nr_sectors) {
                    if hold {
                        held = Some(HeldPlan::Write(plan));
                    } else {
                        zones
                            .commit_write(plan)
                            .expect("a fresh write plan commits");
                    }
                }
            }
            2 => {
                if let Ok(plan) = zones.prepare_append(sector, nr_sectors) {
                    assert_eq!(plan.sector, zones.saved_state(zone_of(&zones, sector)).1);
                    if hold {
                        held = Some(HeldPlan::Write(plan));
                    } else {
                        zones
                            .commit_write(plan)
                            .expect("a fresh append plan commits");
                    }
                }
            }
            code @ 3..=6 => {
                let op = [ZoneOp::Open, ZoneOp::Close, ZoneOp::Finish, ZoneOp::Reset]
                    [usize::from(code - 3)];
                if let Ok(plan) = zones.prepare_zone_op(op, sector) {
                    if hold {
                        held = Some(HeldPlan::ZoneOp(plan));
                    } else {
                        zones
                            .commit_zone_op(plan)
                            .expect("a fresh zone plan commits");
                    }
                }
            }
            7 => {
                let plan = zones.prepare_reset_all();
                zones
                    .commit_zone_op(plan)
                    .expect("a fresh reset-all commits");
            }
            8 => {
                let cond = if hold {
                    ZoneCondition::Offline
                } else {
                    ZoneCondition::ReadOnly
                };
                if nr_sectors & 1 == 0 {
                    let _ = zones.set_zone_condition(sector, cond);
                } else {
                    let _ = zones.inject_condition(sector, cond);
                }
            }
            9 => check_read_covers(&zones, sector, nr_sectors),
            10 => check_report(&zones, sector, nr_sectors),
            _ => {
                // A stale plan may commit only if nothing changed since it was made; either
                // way the invariants below must hold.
                let _ = match held.take() {
                    Some(HeldPlan::Write(plan)) => zones.commit_write(plan),
                    Some(HeldPlan::ZoneOp(plan)) => zones.commit_zone_op(plan),
                    None => {
                        zones.clear_changed();
                        Ok(())
                    }
                };
            }
        }
        check_zone_invariants(&zones);
    }
}

fn zone_of(zones: &ZoneSet, sector: u64) -> usize {
    zones
        .geometry()
        .zone_index(sector)
        .expect("an accepted append targets a zone")
}

/// A read plan covers exactly the requested range, in order, with data only below write
/// pointers.
fn check_read_covers(zones: &ZoneSet, sector: u64, nr_sectors: u64) {
    let Ok(segments) = zones.check_read(sector, nr_sectors) else {
        return;
    };
    let mut at = sector;
    for segment in segments {
        assert_eq!(segment.sector, at, "read segments are contiguous");
        assert!(segment.nr_sectors > 0);
        let geometry = zones.geometry();
        let index = zone_of(zones, segment.sector);
        let zone_end = geometry.zone_start(index) + geometry.zone_len(index);
        if segment.has_data && segment.sector + segment.nr_sectors <= zone_end {
            assert!(segment.sector + segment.nr_sectors <= zones.saved_state(index).1);
        }
        at += segment.nr_sectors;
    }
    assert_eq!(at, sector + nr_sectors, "the read is covered");
}

/// A report lists consecutive zones from the one holding `sector`, at most `max` of them.
fn check_report(zones: &ZoneSet, sector: u64, max: u64) {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let Ok(report) = zones.report(sector, max) else {
        assert!(sector >= zones.geometry().capacity);
        return;
    };
    let first = zones
        .geometry()
        .zone_index(sector)
        .expect("inside the disk");
    let mut count = 0;
    for (offset, zone) in report.enumerate() {
        let expected = zones.zone(first + offset).expect("a reported zone exists");
        assert_eq!(zone, expected);
        count += 1;
    }
    assert!(count <= max);
}

/// What must hold for any zone state reachable by requests: conditions fit the zone type,
/// write pointers stay inside their zone's writable part (an EMPTY zone's at its start, an
/// open or closed zone's below its capacity), the resource counters match the conditions and
/// stay within the open and active limits, and the reported view matches.
pub fn check_zone_invariants(zones: &ZoneSet) {
    let g = *zones.geometry();
    assert_eq!(zones.len() as u64, g.nr_zones());
    let (mut open, mut active, mut implicit) = (0u32, 0u32, 0u32);
    for i in 0..zones.len() {
        let (cond, wp) = zones.saved_state(i);
        let start = g.zone_start(i);
        let end = start + g.zone_len(i);
        let cap_end = start + g.zone_capacity_of(i);
        let what = format!("zone {i} {cond:?} wp {wp} (start {start}, capacity end {cap_end})");
        if g.is_conventional(i) {
            assert!(
                matches!(
                    cond,
                    ZoneCondition::NotWritePointer
                        | ZoneCondition::ReadOnly
                        | ZoneCondition::Offline
                ),
                "{what}"
            );
            assert_eq!(wp, end, "{what}");
        } else {
            assert_ne!(cond, ZoneCondition::NotWritePointer, "{what}");
            assert!(start <= wp && wp <= cap_end, "{what}");
            match cond {
                ZoneCondition::Empty => assert_eq!(wp, start, "{what}"),
                ZoneCondition::ImplicitOpen | ZoneCondition::Closed => {
                    assert!(start < wp && wp < cap_end, "{what}")
                }
                ZoneCondition::ExplicitOpen => assert!(wp < cap_end, "{what}"),
                _ => {}
            }
        }
        open += u32::from(cond.is_open());
        active += u32::from(cond.is_active());
        implicit += u32::from(cond == ZoneCondition::ImplicitOpen);
        let reported = zones.zone(i).expect("every zone is reported");
        assert_eq!(
            (reported.start, reported.len, reported.cond),
            (start, end - start, cond)
        );
    }
    assert!(zones.zone(zones.len()).is_none());
    assert_eq!(zones.open_zones(), open, "open count");
    assert_eq!(zones.active_zones(), active, "active count");
    assert_eq!(zones.implicit_open_zones(), implicit, "implicit-open count");
    assert!(g.max_open == 0 || open <= g.max_open, "{open} open zones");
    assert!(
        g.max_active == 0 || active <= g.max_active,
        "{active} active zones"
    );
}

/// An interrupt line nobody listens to.
struct NoIrq;

impl IrqTrigger for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Registers a write or read op picks by index.
pub const REGISTERS: [u32; 20] = [
    regs::VIRTIO_MMIO_MAGIC_VALUE,
    regs::VIRTIO_MMIO_DEVICE_FEATURES,
    regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    regs::VIRTIO_MMIO_DRIVER_FEATURES,
    regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    regs::VIRTIO_MMIO_QUEUE_SEL,
    regs::VIRTIO_MMIO_QUEUE_NUM_MAX,
    regs::VIRTIO_MMIO_QUEUE_NUM,
    regs::VIRTIO_MMIO_QUEUE_READY,
    regs::VIRTIO_MMIO_QUEUE_NOTIFY,
    regs::VIRTIO_MMIO_INTERRUPT_STATUS,
    regs::VIRTIO_MMIO_INTERRUPT_ACK,
    regs::VIRTIO_MMIO_STATUS,
    regs::VIRTIO_MMIO_QUEUE_DESC_LOW,
    regs::VIRTIO_MMIO_QUEUE_DESC_HIGH,
    regs::VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    regs::VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    regs::VIRTIO_MMIO_QUEUE_USED_LOW,
    regs::VIRTIO_MMIO_QUEUE_USED_HIGH,
    regs::VIRTIO_MMIO_CONFIG_GENERATION,
];

/// Opcodes of [`mmio_registers`].
pub mod mmio_op {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    pub const WRITE_REGISTER: u8 = 2;
    pub const READ_REGISTER: u8 = 3;
    pub const MEMORY: u8 = 4;
    pub const NOTIFY: u8 = 5;
    pub const PROBE: u8 = 6;
    pub const CHAIN: u8 = 7;
    pub const COUNT: u8 = 8;
}

fn read32(transport: &mut MmioTransport, offset: u32) -> u32 {
    let mut data = [0u8; 4];
    transport.read(u64::from(offset), &mut data);
    u32::from_le_bytes(data)
}

fn write32(transport: &mut MmioTransport, offset: u32, value: u32) {
    transport.write(u64::from(offset), &value.to_le_bytes());
}

/// The Linux probe sequence with fuzzer-chosen features, queue size and ring addresses (the
/// [`layout`] rings when the flag byte says so).
fn probe(
    input: &mut Input,
    transport: &mut MmioTransport,
    ring: &mut SplitRing,
    memory: &GuestMemoryMmap,
) {
    let flags = input.u8();
    let offered = transport.device().avail_features();
    let features = if flags & 1 != 0 {
        input.u64()
    } else {
        offered & (input.u64() | VIRTIO_F_VERSION_1)
    };
    let size = queue_size(input.u8());
    for value in [0, status::ACKNOWLEDGE, status::ACKNOWLEDGE | status::DRIVER] {
        write32(transport, regs::VIRTIO_MMIO_STATUS, value);
    }
    for page in 0..2u32 {
        write32(transport, regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL, page);
        write32(
            transport,
            regs::VIRTIO_MMIO_DRIVER_FEATURES,
            (features >> (32 * page)) as u32,
        );
    }
    let negotiated = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    write32(transport, regs::VIRTIO_MMIO_STATUS, negotiated);
    write32(
        transport,
        regs::VIRTIO_MMIO_QUEUE_SEL,
        u32::from((flags >> 4) & 1),
    );
    write32(transport, regs::VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
    let rings = [
        (regs::VIRTIO_MMIO_QUEUE_DESC_LOW, layout::DESC_TABLE),
        (regs::VIRTIO_MMIO_QUEUE_AVAIL_LOW, layout::AVAIL_RING),
        (regs::VIRTIO_MMIO_QUEUE_USED_LOW, layout::USED_RING),
    ];
    for (low, default) in rings {
        let address = if flags & 2 != 0 { input.u64() } else { default };
        write32(transport, low, address as u32);
        write32(transport, low + 4, (address >> 32) as u32);
    }
    *ring = SplitRing::new(memory, size);
    ring.clear();
    write32(
        transport,
        regs::VIRTIO_MMIO_QUEUE_READY,
        u32::from(flags & 4 == 0),
    );
    write32(
        transport,
        regs::VIRTIO_MMIO_STATUS,
        negotiated | status::DRIVER_OK,
    );
}

/// The virtio-mmio transport over a plain block device: any sequence of register accesses
/// of any offset and width, notifications of any queue, and queue setups with garbage.
///
/// Input: disk-size byte, then operations until the input ends ([`mmio_op`], modulo COUNT):
/// READ (le16 offset, or with the top bit of the width byte a le64 one; width byte picking 0,
/// 1, 2, 3, 4, 8 or 16 bytes), WRITE (the same, then a le64 value), WRITE_REGISTER /
/// READ_REGISTER (index byte into [`REGISTERS`], le32 value), MEMORY (as in
/// [`virtio_blk_chain`]), NOTIFY (le32 queue index), PROBE (flags byte, le64 features, queue
/// size byte, maybe three le64 ring addresses: the Linux probe sequence), CHAIN (a chain as in
/// [`virtio_blk_chain`] into the `layout` rings, then a QueueNotify write).
///
/// Checked after every operation: the identification registers read right, and the device is
/// active exactly when the status says DRIVER_OK (after FEATURES_OK) without NEEDS_RESET, or
/// NEEDS_RESET came after activation.
pub fn mmio_registers(data: &[u8]) {
    let mut input = Input::new(data);
    let sectors = u64::from(input.u8() % 65);
    let backend = MemoryBackend::strict((sectors * SECTOR_SIZE) as usize, false);
    let block = Block::new(Box::new(backend), "fuzz-mmio");
    let memory = guest_memory();
    let mut transport = MmioTransport::new(memory.clone(), Box::new(block), Box::new(NoIrq))
        .expect("the block device's queue size is valid");
    let mut ring = SplitRing::new(&memory, QUEUE_SIZE);
    let shape = DiskShape {
        capacity_sectors: sectors,
        zone_sectors: 8,
    };
    while !input.is_empty() {
        match input.u8() % mmio_op::COUNT {
            code @ (mmio_op::READ | mmio_op::WRITE) => {
                let width_byte = input.u8();
                let offset = if width_byte & 0x80 != 0 {
                    input.u64()
                } else {
                    u64::from(input.u16() % 0x200)
                };
                let width = [0usize, 1, 2, 3, 4, 8, 16][usize::from(width_byte & 0x7f) % 7];
                let mut buffer = [0u8; 16];
                if code == mmio_op::READ {
                    transport.read(offset, &mut buffer[..width]);
                } else {
                    buffer[..8].copy_from_slice(&input.u64().to_le_bytes());
                    transport.write(offset, &buffer[..width]);
                }
            }
            mmio_op::WRITE_REGISTER => {
                let register = input.pick(&REGISTERS);
                write32(&mut transport, register, input.u32());
            }
            mmio_op::READ_REGISTER => {
                let register = input.pick(&REGISTERS);
                read32(&mut transport, register);
            }
            mmio_op::MEMORY => write_memory(&mut input, &memory),
            mmio_op::NOTIFY => transport.notify_queue(input.u32()),
            mmio_op::PROBE => probe(&mut input, &mut transport, &mut ring, &memory),
            _ => {
                decode_chain(&mut input, &mut ring, &memory, shape);
                write32(&mut transport, regs::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
            }
        }
        check_transport(&mut transport);
    }
}

fn check_transport(transport: &mut MmioTransport) {
    assert_eq!(
        read32(transport, regs::VIRTIO_MMIO_MAGIC_VALUE),
        0x7472_6976
    );
    assert_eq!(read32(transport, regs::VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read32(transport, regs::VIRTIO_MMIO_DEVICE_ID), 2);
    let device_status = transport.device_status();
    assert_eq!(read32(transport, regs::VIRTIO_MMIO_STATUS), device_status);
    if device_status & status::DRIVER_OK != 0 {
        assert_ne!(device_status & status::FEATURES_OK, 0, "{device_status:#x}");
    }
    if transport.device().is_activated() {
        assert_ne!(device_status & status::DRIVER_OK, 0, "{device_status:#x}");
    } else if device_status & status::DRIVER_OK != 0 {
        assert_ne!(
            device_status & status::DEVICE_NEEDS_RESET,
            0,
            "{device_status:#x}"
        );
    }
    let offered = transport.device().avail_features();
    assert_eq!(transport.device().acked_features() & !offered, 0);
}

/// Flags of [`image_header`]'s first byte.
pub mod image_flags {
    /// The rest of the input is the first 128 header bytes, then the zone table (at 4096).
    pub const SPLIT: u8 = 1;
    /// Store the right header CRC.
    pub const FIX_HEADER_CRC: u8 = 2;
    /// Store the right CRC in every zone table slot.
    pub const FIX_SLOT_CRCS: u8 = 4;
    /// Extend the file (sparse) to the size the header's layout asks for.
    pub const FIT_SIZE: u8 = 8;
}

/// Header bytes that carry fields (the CRC covers 0..124 and sits at 124).
const HEADER_FIELDS: usize = 128;
/// Largest file the FIT_SIZE flag creates (sparse), and most zones it allows.
const FIT_MAX_BYTES: u64 = 1 << 40;
const FIT_MAX_ZONES: u64 = 1 << 16;

/// Builds the scratch file for [`image_header`] from its input.
fn image_file_bytes(flags: u8, rest: &[u8]) -> (Vec<u8>, u64) {
    let header_size = crate::zoned::image::HEADER_SIZE as usize;
    let mut bytes = if flags & image_flags::SPLIT != 0 {
        let (header, table) = rest.split_at(rest.len().min(HEADER_FIELDS));
        let mut bytes = header.to_vec();
        if !table.is_empty() {
            bytes.resize(header_size, 0);
            bytes.extend_from_slice(table);
        }
        bytes
    } else {
        rest.to_vec()
    };
    if flags & image_flags::FIX_HEADER_CRC != 0 && bytes.len() >= HEADER_FIELDS {
        let crc = crc32(&bytes[..HEADER_FIELDS - 4]);
        bytes[HEADER_FIELDS - 4..HEADER_FIELDS].copy_from_slice(&crc.to_le_bytes());
    }
    if flags & image_flags::FIX_SLOT_CRCS != 0 && bytes.len() > header_size {
        for (i, slot) in bytes[header_size..].chunks_exact_mut(16).enumerate() {
            let crc = slot_crc(i / 2, slot);
            slot[12..].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let mut len = bytes.len() as u64;
    if flags & image_flags::FIT_SIZE != 0 && bytes.len() >= HEADER_FIELDS {
        let field = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let zones = u64::from(u32::from_le_bytes(
            bytes[60..64].try_into().unwrap_or([0; 4]),
        ));
        let wanted = field(16)
            .checked_mul(SECTOR_SIZE)
            .and_then(|data| data.checked_add(field(72)));
        if let Some(wanted) = wanted.filter(|&w| w <= FIT_MAX_BYTES && zones <= FIT_MAX_ZONES) {
            len = wanted;
        }
    }
    (bytes, len)
}

/// A zoned image file's open path with arbitrary file contents: it must open, or fail with a
/// one-line error, and never change the file. An image that opens must hold zones that keep
/// [`check_zone_invariants`].
///
/// Input: a flags byte ([`image_flags`]), then the file's bytes (laid out per SPLIT); the
/// flags can repair checksums and set the file length, so that the fuzzer reaches the checks
/// behind them.
pub fn image_header(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let (bytes, len) = image_file_bytes(flags, input.bytes(data.len()));
    let scratch = Scratch(scratch_path("image"));
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&scratch.0)
            .expect("a fresh scratch file");
        file.write_all(&bytes).expect("the scratch file is written");
        file.set_len(len).expect("the scratch file is sized");
    }
    let before = snapshot(&scratch.0, &bytes);
    match ZonedDisk::<ImageFile>::open(&scratch.0, &GeometryOverrides::default()) {
        Ok(disk) => {
            check_zone_invariants(disk.zones());
            let mut reply = vec![0u8; 64 * 16];
            let _ = disk.report_into(0, &mut reply);
        }
        Err(error) => {
            let message = error.to_string();
            assert!(
                !message.is_empty() && !message.contains('\n'),
                "{message:?}"
            );
        }
    }
    assert!(
        snapshot(&scratch.0, &bytes) == before,
        "opening changed the image"
    );
}

/// What opening may not change: the length, the modification time and the bytes written.
fn snapshot(path: &Path, written: &[u8]) -> (u64, std::time::SystemTime, Vec<u8>) {
    let file = std::fs::File::open(path).expect("the scratch file exists");
    let metadata = file.metadata().expect("scratch metadata");
    let len = metadata.len();
    let mut bytes = vec![0u8; written.len().min(len as usize)];
    file.read_exact_at(&mut bytes, 0)
        .expect("the scratch file reads");
    let modified = metadata.modified().expect("a modification time");
    (len, modified, bytes)
}

/// Valid inputs for each target, to seed the fuzzer's corpus (the files in `fuzz/seeds/`).
pub mod seeds {
    use super::*;

    /// Named inputs of one target.
    pub type Seeds = Vec<(&'static str, Vec<u8>)>;

    /// Builds inputs in the formats above.
    #[derive(Default)]
    pub struct Encoder(pub Vec<u8>);

    /// A chain part as the seeds use them.
    #[derive(Clone, Copy)]
    pub enum Part {
        /// The 16-byte header at `layout::HEADER`.
        Header,
        /// `sectors` sectors at data offset `unit * 16`, device-writable or not.
        Data {
            unit: u16,
            sectors: u8,
            writable: bool,
        },
        /// `len` device-writable bytes at data offset `unit * 16` (report and append replies).
        Reply { unit: u16, len: u16 },
        /// One status byte at `layout::STATUS`.
        Status,
    }

    impl Encoder {
        fn u8(&mut self, value: u8) -> &mut Self {
            self.0.push(value);
            self
        }

        fn u16(&mut self, value: u16) -> &mut Self {
            self.0.extend_from_slice(&value.to_le_bytes());
            self
        }

        fn u64(&mut self, value: u64) -> &mut Self {
            self.0.extend_from_slice(&value.to_le_bytes());
            self
        }

        /// A CHAIN of type `REQUEST_TYPES[type_index]` at a raw `sector`.
        pub fn chain(&mut self, type_index: u8, sector: u64, parts: &[Part]) -> &mut Self {
            self.u8(op::CHAIN).u8(type_index).u8(0).u64(sector);
            self.u8(parts.len() as u8);
            for part in parts {
                match *part {
                    Part::Header => self.u8(0).u8(0).u16(16),
                    Part::Data {
                        unit,
                        sectors,
                        writable,
                    } => self.u8(0x12 | u8::from(writable)).u16(unit).u8(sectors),
                    Part::Reply { unit, len } => self.u8(0x03).u16(unit).u16(len),
                    Part::Status => self.u8(0x35).u8(0).u8(1),
                };
            }
            self
        }

        /// Raw bytes, e.g. an operation the encoder has no helper for.
        pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
            self.0.extend_from_slice(bytes);
            self
        }

        pub fn finish(&mut self) -> Vec<u8> {
            std::mem::take(&mut self.0)
        }
    }

    use Part::{Header, Status};

    fn data(unit: u16, sectors: u8, writable: bool) -> Part {
        Part::Data {
            unit,
            sectors,
            writable,
        }
    }

    /// (name, input) pairs for [`virtio_blk_chain`].
    pub fn virtio_blk_chain() -> Seeds {
        let mut e = Encoder::default();
        // Queue of 16, 64 sectors, writable: write, read back, flush, GET_ID, an unknown type.
        e.raw(&[4, 64, 0]);
        e.chain(1, 3, &[Header, data(0, 2, false), Status]);
        e.chain(0, 3, &[Header, data(0x100, 2, true), Status]);
        e.chain(2, 0, &[Header, Status]);
        e.chain(3, 0, &[Header, Part::Reply { unit: 0, len: 20 }, Status]);
        e.chain(11, 0, &[Header, Status]);
        let io = e.finish();
        // A read-only disk of odd size with EVENT_IDX, a queue of 256, and raw ring traffic.
        e.raw(&[8, 7, 7]);
        e.chain(1, 0, &[Header, data(0, 1, false), Status]);
        e.chain(0, 6, &[Header, data(0, 2, true), Status]);
        e.raw(&[op::DESCRIPTOR, 5, 0])
            .u64(layout::HEADER)
            .raw(&[16, 0, 0, 0, 1, 0, 5, 0]);
        e.raw(&[
            op::PUBLISH,
            5,
            0,
            op::NOTIFY,
            op::RESTART,
            op::AVAIL_IDX,
            0xff,
            0xff,
            op::NOTIFY,
        ]);
        let read_only = e.finish();
        vec![("io", io), ("read-only-raw", read_only)]
    }

    /// (name, input) pairs for [`zoned_requests`].
    pub fn zoned_requests() -> Seeds {
        let mut e = Encoder::default();
        // Requests: 16-sector zones, 512-byte granularity, 8 zones, 1 conventional, 2 open /
        // 3 active, 8-sector appends; no faults; queue of 32.
        e.raw(&[0, 1, 0, 7, 0, 0, 1, 2, 3, 7, 0, 5, 0, 0]);
        e.chain(1, 16, &[Header, data(0, 4, false), Status]);
        e.chain(
            4,
            32,
            &[
                Header,
                data(0, 2, false),
                Part::Reply { unit: 0x80, len: 8 },
                Status,
            ],
        );
        e.chain(
            5,
            0,
            &[
                Header,
                Part::Reply {
                    unit: 0x100,
                    len: 64 * 9,
                },
                Status,
            ],
        );
        e.chain(0, 16, &[Header, data(0x200, 8, true), Status]);
        e.chain(6, 48, &[Header, Status]);
        e.chain(6, 64, &[Header, Status]);
        e.chain(6, 80, &[Header, Status]);
        e.chain(7, 48, &[Header, Status]);
        e.chain(8, 64, &[Header, Status]);
        e.chain(2, 0, &[Header, Status]);
        e.chain(9, 16, &[Header, Status]);
        e.chain(10, 0, &[Header, Status]);
        let requests = e.finish();
        // Faults: zone 2 read-only, zone 3 offline, the first write to zone 4 fails.
        e.raw(&[0, 1, 0, 7, 0, 0, 1, 2, 3, 7, 0b111, 1, 2, 3, 4, 0, 0]);
        e.chain(1, 32, &[Header, data(0, 1, false), Status]);
        e.chain(1, 64, &[Header, data(0, 1, false), Status]);
        e.chain(
            5,
            0,
            &[
                Header,
                Part::Reply {
                    unit: 0x100,
                    len: 64 * 9,
                },
                Status,
            ],
        );
        let faults = e.finish();
        // The state machine alone: writes, an append, opens, a finish, a held plan.
        e.raw(&[1, 1, 0, 7, 0, 0, 1, 2, 3, 7]);
        for (zone, sector_kind, len_kind, len, hold, code) in [
            (1u8, 0u8, 0u8, 2u8, 1u8, 0u8),
            (1, 1, 0, 1, 1, 0),
            (2, 0, 0, 3, 1, 2),
            (3, 0, 0, 0, 1, 3),
            (4, 0, 0, 0, 1, 3),
            (5, 0, 0, 1, 1, 0),
            (6, 0, 0, 1, 0, 0),
            (2, 0, 0, 0, 1, 5),
            (1, 0, 0, 4, 1, 9),
            (0, 0, 1, 9, 1, 10),
            (6, 1, 0, 1, 1, 11),
            (3, 0, 0, 0, 1, 6),
            (0, 0, 0, 0, 1, 7),
        ] {
            e.raw(&[zone, sector_kind, len_kind, len, hold, code]);
        }
        let state = e.finish();
        vec![
            ("requests", requests),
            ("faults", faults),
            ("state-machine", state),
        ]
    }

    /// (name, input) pairs for [`mmio_registers`].
    pub fn mmio_registers() -> Seeds {
        let mut e = Encoder::default();
        // 64 sectors; probe with the default rings and a queue of 16, then I/O and a reset.
        e.raw(&[64, mmio_op::PROBE, 0]).u64(u64::MAX).u8(4);
        let mut chain = Encoder::default();
        chain.chain(1, 2, &[Header, data(0, 1, false), Status]);
        e.u8(mmio_op::CHAIN).raw(&chain.finish()[1..]);
        chain.chain(0, 2, &[Header, data(0x10, 1, true), Status]);
        e.u8(mmio_op::CHAIN).raw(&chain.finish()[1..]);
        e.raw(&[
            mmio_op::READ_REGISTER,
            10,
            mmio_op::WRITE_REGISTER,
            11,
            1,
            0,
            0,
            0,
        ]);
        e.raw(&[mmio_op::READ, 4]).u16(0x100);
        e.raw(&[mmio_op::WRITE_REGISTER, 12, 0, 0, 0, 0]);
        let probe = e.finish();
        // Garbage queue setup: a queue size of 0, rings outside memory, then notifications.
        e.raw(&[8, mmio_op::PROBE, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]);
        e.u64(1 << 40).u64(u64::MAX).u64(layout::LOW_SIZE - 8);
        e.raw(&[mmio_op::NOTIFY, 0, 0, 0, 0, mmio_op::NOTIFY, 1, 0, 0, 0]);
        e.raw(&[mmio_op::WRITE, 0x85]).u64(0x70).u64(7);
        let garbage = e.finish();
        vec![("probe-io", probe), ("garbage-queue", garbage)]
    }

    /// (name, input) pairs for [`image_header`]: a real image's header and zone table, and
    /// the same with a broken table.
    pub fn image_header() -> Seeds {
        let scratch = Scratch(scratch_path("seed"));
        let mut disk = ZonedImage::create(&scratch.0, FALLBACK_GEOMETRY).expect("seed image");
        disk.write(16, &[1; 1024]).expect("seed write");
        disk.zone_op(ZoneOp::Open, 32).expect("seed open");
        disk.flush().expect("seed flush");
        drop(disk);
        let file = std::fs::File::open(&scratch.0).expect("seed image opens");
        let header_size = crate::zoned::image::HEADER_SIZE as usize;
        let zones = FALLBACK_GEOMETRY.nr_zones() as usize;
        let mut header = vec![0u8; HEADER_FIELDS];
        let mut table = vec![0u8; zones * 32];
        file.read_exact_at(&mut header, 0).expect("seed header");
        file.read_exact_at(&mut table, header_size as u64)
            .expect("seed table");
        let flags = image_flags::SPLIT | image_flags::FIT_SIZE;
        let mut valid = vec![flags];
        valid.extend_from_slice(&header);
        valid.extend_from_slice(&table);
        let mut torn = valid.clone();
        torn[0] |= image_flags::FIX_SLOT_CRCS;
        torn[1 + HEADER_FIELDS + 8] = 0x63;
        vec![("valid", valid), ("repaired-slots", torn)]
    }

    /// Every target's seeds, by target name.
    pub fn all() -> Vec<(&'static str, Seeds)> {
        vec![
            ("virtio_blk_chain", virtio_blk_chain()),
            ("zoned_requests", zoned_requests()),
            ("mmio_registers", mmio_registers()),
            ("image_header", image_header()),
        ]
    }
}

/// The body of the target called `name`, if there is one.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    Some(match name {
        "virtio_blk_chain" => virtio_blk_chain,
        "zoned_requests" => zoned_requests,
        "mmio_registers" => mmio_registers,
        "image_header" => image_header,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds")
    }

    /// `make fuzz` in a fresh clone (no build/ yet), with cargo-fuzz missing: the script gets
    /// as far as running a target. A fake cargo on PATH stands in for the toolchain.
    #[test]
    fn the_fuzz_script_runs_in_a_fresh_clone() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("vmm-fresh-clone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("fuzz/seeds/virtio_blk_chain")).unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/run.sh");
        std::fs::copy(script, root.join("fuzz/run.sh")).unwrap();
        // No cargo-fuzz and no nightly; everything else (install, build, run) succeeds.
        let cargo = root.join("bin/cargo");
        std::fs::write(
            &cargo,
            "#!/bin/sh\ncase \"$1 $2\" in \"fuzz --version\"|\"+nightly --version\") exit 1;; esac\nexit 0\n",
        )
        .unwrap();
        std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            root.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = std::process::Command::new("bash")
            .arg(root.join("fuzz/run.sh"))
            .env("PATH", path)
            .env("FUZZ_TARGETS", "virtio_blk_chain")
            .env("FUZZ_SECONDS", "1")
            .env_remove("FUZZ_TOOLCHAIN")
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&root);
        assert!(
            output.status.success(),
            "{:?}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The committed seeds are what the generators make (`VMM_WRITE_SEEDS=1` rewrites them),
    /// and every file under fuzz/seeds/ and fuzz/regressions/ replays without a panic.
    #[test]
    fn committed_seeds_are_current_and_every_target_survives_them() {
        let write = std::env::var_os("VMM_WRITE_SEEDS").is_some();
        for (name, seeds) in seeds::all() {
            let dir = seeds_dir().join(name);
            if write {
                std::fs::create_dir_all(&dir).unwrap();
            }
            for (seed, bytes) in seeds {
                let path = dir.join(seed);
                if write {
                    std::fs::write(&path, &bytes).unwrap();
                }
                let committed =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(
                    committed == bytes,
                    "{} is stale: VMM_WRITE_SEEDS=1 cargo test",
                    path.display()
                );
            }
        }
        let mut replayed = 0;
        for top in ["seeds", "regressions"] {
            let Ok(targets) = std::fs::read_dir(seeds_dir().join("..").join(top)) else {
                continue;
            };
            for target_dir in targets {
                let target_dir = target_dir.unwrap().path();
                let name = target_dir
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let body = target(&name).unwrap_or_else(|| panic!("no fuzz target {name}"));
                for file in std::fs::read_dir(&target_dir).unwrap() {
                    body(&std::fs::read(file.unwrap().path()).unwrap());
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= 9, "only {replayed} seeds replayed");
    }

    /// The seeds reach what they are meant to: I/O completes, zones change, the transport
    /// activates, the image opens. (A seed that silently decodes to nothing would seed
    /// nothing.)
    #[test]
    fn seeds_reach_the_devices() {
        let memory = guest_memory();
        let (_, io) = &seeds::virtio_blk_chain()[0];
        let mut input = Input::new(io);
        let size = queue_size(input.u8());
        let sectors = u64::from(input.u8());
        input.u8();
        let backend = MemoryBackend::strict((sectors * SECTOR_SIZE) as usize, false);
        let mut device =
            DeviceUnderTest::new(Block::new(Box::new(backend), "x"), &memory, size, false);
        let shape = DiskShape {
            capacity_sectors: sectors,
            zone_sectors: 8,
        };
        device.run(&mut input, shape);
        assert_eq!(device.ring.used_idx(), 5);
        let status =
            |memory: &GuestMemoryMmap| memory.read_obj::<u8>(GuestAddress(layout::STATUS)).unwrap();
        // The last request was of an unknown type.
        assert_eq!(status(&memory), crate::block::request_status::UNSUPP);
        assert_eq!(
            device.ring.used_len(1),
            1024 + 1,
            "the read returned its data"
        );

        let (_, image) = &seeds::image_header()[0];
        let (bytes, len) = image_file_bytes(image[0], &image[1..]);
        let scratch = Scratch(scratch_path("seed-check"));
        std::fs::write(&scratch.0, &bytes).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&scratch.0)
            .unwrap()
            .set_len(len)
            .unwrap();
        let disk = ZonedImage::open(&scratch.0, &GeometryOverrides::default()).unwrap();
        assert_eq!(disk.zones().saved_state(1), (ZoneCondition::Closed, 18));
    }
}
