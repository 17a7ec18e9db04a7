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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio as regs;
use vm_memory::{Bytes, GuestAddress};

use super::driver::{Buffer, SplitRing};
use super::{guest_memory, layout, write_request_header, CountingInterrupt, Input, MemoryBackend};
use crate::block::{request_type, Block, QUEUE_SIZE, SECTOR_SIZE};
use crate::virtio::mmio::IrqTrigger;
use crate::virtio::{status, GuestMemoryMmap, MmioTransport, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::zoned::image::{crc32, slot_crc, ImageFile, StorageOp};
use crate::zoned::state::{WritePlan, ZoneOpPlan};
use crate::zoned::wire::request as zone_request;
use crate::zoned::{
    geometry::MAX_ZONES, FailWrite, FaultInjection, GeometryOverrides, ImageError, ZoneCondition,
    ZoneOp, ZoneSet, ZonedDisk, ZonedExecutor, ZonedGeometry, ZonedImage,
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
    let parts: Vec<Buffer> = (0..count).map(|_| decode_part(input)).collect();
    ring.add_chain(&parts).expect(RINGS_IN_MEMORY);
}

/// One descriptor of a chain: kind byte (bit 0 device-writable, bits 1-3 where, bits 4-5 how
/// long), then the arguments those pick.
fn decode_part(input: &mut Input) -> Buffer {
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
    Buffer {
        addr: GuestAddress(addr),
        len,
        device_writable: kind & 1 != 0,
    }
}

/// Every ring access of the harness lies in [`guest_memory`]: from the [`layout::RINGS`], any
/// descriptor index and the ring entries of any queue size stay inside the low region.
const RINGS_IN_MEMORY: &str = "the layout rings lie in guest memory";

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
            ring: SplitRing::new(memory, layout::RINGS, queue_size),
            event_idx,
            interrupt: Arc::new(CountingInterrupt::default()),
        };
        device.activate();
        device
    }

    fn activate(&mut self) {
        if let Ok(queue) = self.ring.queue(QUEUE_SIZE, self.event_idx) {
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
        self.ring.clear().expect(RINGS_IN_MEMORY);
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
                    self.ring
                        .write_descriptor(index, addr, len, flags, next)
                        .expect(RINGS_IN_MEMORY);
                }
                op::PUBLISH => self.ring.publish(input.u16()).expect(RINGS_IN_MEMORY),
                op::AVAIL_IDX => self.ring.set_avail_idx(input.u16()).expect(RINGS_IN_MEMORY),
                op::MEMORY => write_memory(input, &self.memory),
                op::NOTIFY => self.notify(),
                op::AVAIL_FLAGS => self
                    .ring
                    .set_avail_flags(input.u16())
                    .expect(RINGS_IN_MEMORY),
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

/// The zoned device. The first byte picks the mode (modulo 6): 0, requests from a hostile
/// driver through the queue; odd, the zone state machine alone ([`zone_state_machine`]); 2,
/// well-formed requests against a model of what must survive, on failing storage
/// ([`storage_model`]); 4, huge geometries ([`huge_geometry`]).
///
/// Requests: a geometry (`decode_geometry`, 9 bytes), faults (`decode_faults`, up to 4
/// bytes), then the input of [`virtio_blk_chain`] from its queue-size byte on; its disk-size
/// byte is the prefill byte (`prefill`: data written and flushed before the faults are
/// injected) and its flags byte is ignored. The device is `Block` with a `ZonedExecutor` over
/// a `ZonedImage` in a scratch file. Afterwards the image must reopen (a guest cannot make an
/// image unreadable), with zones that keep the invariants, and the READ_ONLY and OFFLINE
/// zones must hold their prefilled state and data: nothing a guest does reaches them.
pub fn zoned_requests(data: &[u8]) {
    let mut input = Input::new(data);
    match input.u8() % 6 {
        1 | 3 | 5 => return zone_state_machine(&mut input),
        2 => {
            storage_model(&mut input);
            return;
        }
        4 => return huge_geometry(&mut input),
        _ => {}
    }
    let geometry = decode_geometry(&mut input);
    let faults = decode_faults(&mut input, &geometry);
    let size = queue_size(input.u8());
    let prefill_byte = input.u8();
    input.u8();
    let scratch = Scratch(scratch_path("zoned"));
    let mut disk = ZonedImage::create(&scratch.0, geometry).expect("a fresh scratch image");
    let prefilled = prefill(&mut disk, prefill_byte);
    let executor = ZonedExecutor::with_faults(disk, &faults).expect("faults on sequential zones");
    let block = Block::with_executor(Box::new(executor), "fuzz-zoned");
    let memory = guest_memory();
    let mut device = DeviceUnderTest::new(block, &memory, size, false);
    let shape = DiskShape {
        capacity_sectors: geometry.capacity,
        zone_sectors: geometry.zone_size,
    };
    device.run(&mut input, shape);
    drop(device);
    let mut reopened = ZonedImage::open(&scratch.0, &GeometryOverrides::default())
        .unwrap_or_else(|error| panic!("the image does not reopen after guest I/O: {error}"));
    check_zone_invariants(reopened.zones());
    for &zone in faults.read_only_zones.iter().chain(&faults.offline_zones) {
        let zone = zone as usize;
        let start = geometry.zone_start(zone);
        let written = prefilled[zone];
        assert_eq!(
            reopened.zones().saved_state(zone).1,
            start + written,
            "zone {zone}, READ_ONLY or OFFLINE in the run, lost its write pointer"
        );
        for sector in start..start + written {
            assert!(
                read_sector(&mut reopened, sector) == sector_pattern(sector, 0),
                "zone {zone}, READ_ONLY or OFFLINE in the run, lost its data at sector {sector}"
            );
        }
    }
}

/// What sector `sector` holds after the write of version `version` (the prefill is version 0).
fn sector_pattern(sector: u64, version: u32) -> Vec<u8> {
    let mut bytes = vec![(sector as u8) ^ (version as u8) ^ 0x5a; SECTOR_SIZE as usize];
    bytes[..8].copy_from_slice(&sector.to_le_bytes());
    bytes[8..12].copy_from_slice(&version.to_le_bytes());
    bytes
}

fn read_sector(disk: &mut ZonedImage, sector: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; SECTOR_SIZE as usize];
    disk.read(sector, &mut bytes)
        .unwrap_or_else(|error| panic!("sector {sector} of the reopened image: {error}"));
    bytes
}

/// Writes data (version 0 of [`sector_pattern`]) from the start of every zone, an amount the
/// byte picks (none for 0), and flushes; returns the sectors written per zone. A write the
/// open or active limits refuse is left out.
fn prefill(disk: &mut ZonedImage, byte: u8) -> Vec<u64> {
    let geometry = *disk.geometry();
    let gran = geometry.granularity_sectors();
    let mut written = vec![0u64; geometry.nr_zones() as usize];
    if byte == 0 {
        return written;
    }
    for (zone, written) in written.iter_mut().enumerate() {
        let room = geometry.zone_capacity_of(zone);
        let sectors = ((u64::from(byte) * (zone as u64 + 1)) % (room + 1)) & !(gran - 1);
        let start = geometry.zone_start(zone);
        let data: Vec<u8> = (start..start + sectors)
            .flat_map(|sector| sector_pattern(sector, 0))
            .collect();
        if sectors > 0 && disk.write(start, &data).is_ok() {
            *written = sectors;
        }
    }
    disk.flush().expect("the prefill flushes");
    written
}

/// Opcodes of [`storage_model`]'s request stream.
pub mod model_op {
    pub const WRITE: u8 = 0;
    pub const APPEND: u8 = 1;
    pub const READ: u8 = 2;
    pub const FLUSH: u8 = 3;
    pub const OPEN: u8 = 4;
    pub const CLOSE: u8 = 5;
    pub const FINISH: u8 = 6;
    pub const RESET: u8 = 7;
    pub const RESET_ALL: u8 = 8;
    pub const COUNT: u8 = 9;
}

/// Flags of [`storage_model`]'s failure byte.
pub mod model_flags {
    /// Arm an injected EIO (the kind in bits 0-1, see `StorageOp::ALL`).
    pub const FAIL: u8 = 0x80;
    /// End the run with a clean shutdown (the device's final flush) instead of a crash.
    pub const SHUTDOWN: u8 = 0x40;
}

/// What the model knows about one sector: the versions that may be stored there, oldest
/// first, each with whether the device acknowledged its write.
type Candidates = Vec<(u32, bool)>;

/// What a zone must look like after a reopen, from what the device acknowledged.
#[derive(Clone, Debug)]
struct ZoneModel {
    /// The write pointer the device acknowledged (end of the zone for conventional zones).
    acked: u64,
    /// At least this write pointer survives: what a completed flush or reset made durable.
    durable: u64,
    /// At most this one: the furthest acknowledged since the last durable reset.
    furthest: u64,
    /// A reset of this zone failed since the last completed flush: until the next one, a
    /// crash may show it reset (docs/zoned-image-format.md, failing storage).
    maybe_reset: bool,
    /// READ_ONLY or OFFLINE in this run: nothing may change it.
    kept: bool,
}

/// The device of [`storage_model`] with its model.
struct ModelRun {
    device: DeviceUnderTest,
    geometry: ZonedGeometry,
    zones: Vec<ZoneModel>,
    sectors: Vec<Candidates>,
    version: u32,
    /// Raised when the injected storage failure fired.
    fired: Arc<AtomicBool>,
    acknowledged: u32,
    failed: u32,
}

/// Where [`ModelRun::request`] puts device-writable data.
const MODEL_REPLY: u64 = layout::DATA + 0x8_0000;

impl ModelRun {
    /// One well-formed request; returns its status and its device-writable bytes. Checks that
    /// it completed, and that a request during which the injected failure fired failed.
    fn request(
        &mut self,
        request_type: u32,
        sector: u64,
        data: &[u8],
        reply_len: u32,
    ) -> (u8, Vec<u8>) {
        let memory = self.device.memory.clone();
        write_request_header(&memory, layout::HEADER, request_type, sector);
        let mut parts = vec![Buffer::readable(GuestAddress(layout::HEADER), 16)];
        if !data.is_empty() {
            memory
                .write_slice(data, GuestAddress(layout::DATA))
                .expect("request data fits the data area");
            parts.push(Buffer::readable(
                GuestAddress(layout::DATA),
                data.len() as u32,
            ));
        }
        if reply_len > 0 {
            parts.push(Buffer::writable(GuestAddress(MODEL_REPLY), reply_len));
        }
        parts.push(Buffer::writable(GuestAddress(layout::STATUS), 1));
        memory
            .write_obj(0xffu8, GuestAddress(layout::STATUS))
            .expect("the status byte is in memory");
        let fired_before = self.fired.load(Ordering::SeqCst);
        let used = self.device.ring.used_idx().expect(RINGS_IN_MEMORY);
        self.device.ring.add_chain(&parts).expect(RINGS_IN_MEMORY);
        self.device.notify();
        assert_eq!(
            self.device.ring.used_idx().expect(RINGS_IN_MEMORY),
            used.wrapping_add(1),
            "request type {request_type} at {sector} did not complete"
        );
        let status: u8 = memory
            .read_obj(GuestAddress(layout::STATUS))
            .expect("the status byte is in memory");
        assert!(
            status <= 6,
            "request type {request_type} at {sector}: status {status}"
        );
        if !fired_before && self.fired.load(Ordering::SeqCst) {
            assert_ne!(
                status,
                crate::block::request_status::OK,
                "request type {request_type} at {sector} met an EIO and succeeded"
            );
        }
        if status == crate::block::request_status::OK {
            self.acknowledged += 1;
        } else {
            self.failed += 1;
        }
        let mut reply = vec![0u8; reply_len as usize];
        memory
            .read_slice(&mut reply, GuestAddress(MODEL_REPLY))
            .expect("the reply area is in memory");
        (status, reply)
    }

    fn cap_end(&self, zone: usize) -> u64 {
        self.geometry.zone_start(zone) + self.geometry.zone_capacity_of(zone)
    }

    /// Writes (or appends, landing at `sector`) `nr` sectors of a new version and records it.
    fn write(&mut self, zone: usize, sector: u64, nr: u64, append: bool) {
        self.version += 1;
        let version = self.version;
        let data: Vec<u8> = (sector..sector + nr)
            .flat_map(|s| sector_pattern(s, version))
            .collect();
        let (request_type, target, reply) = if append {
            let start = self.geometry.zone_start(zone);
            (zone_request::ZONE_APPEND, start, 8)
        } else {
            (request_type::OUT, sector, 0)
        };
        let (status, landed) = self.request(request_type, target, &data, reply);
        let ok = status == crate::block::request_status::OK;
        // A write at a FULL zone's write pointer is one at the start of the next zone.
        let zone = match self.geometry.zone_index(sector) {
            Some(index) if !append => index,
            Some(_) => zone,
            None => {
                assert!(
                    !ok,
                    "a write at {sector}, past the end of the disk, succeeded"
                );
                return;
            }
        };
        let conventional = self.geometry.is_conventional(zone);
        let end = sector + nr;
        if ok {
            let model = &self.zones[zone];
            assert!(
                !model.kept,
                "a write to READ_ONLY/OFFLINE zone {zone} succeeded"
            );
            if append {
                let landed = u64::from_le_bytes(landed[..8].try_into().expect("8 bytes"));
                assert_eq!(
                    landed, model.acked,
                    "append to zone {zone} landed elsewhere"
                );
            }
            if conventional {
                let last = self.geometry.zone_index(end - 1).expect("inside the disk");
                assert!(
                    (zone..=last).all(|z| self.geometry.is_conventional(z)),
                    "a write from conventional zone {zone} into sequential ones succeeded"
                );
            } else {
                assert_eq!(
                    sector, model.acked,
                    "a write off zone {zone}'s write pointer"
                );
                assert!(
                    end <= self.cap_end(zone),
                    "a write past zone {zone}'s capacity"
                );
                let model = &mut self.zones[zone];
                model.acked = end;
                model.furthest = model.furthest.max(end);
            }
        }
        let capacity = self.sectors.len() as u64;
        for s in sector..end.min(capacity) {
            self.sectors[s as usize].push((version, ok));
        }
    }

    /// After a completed flush, everything acknowledged is durable.
    fn flushed(&mut self) {
        for model in &mut self.zones {
            model.durable = model.acked;
            model.maybe_reset = false;
        }
        for candidates in &mut self.sectors {
            if let Some(last) = candidates.iter().rposition(|&(_, ok)| ok) {
                candidates.drain(..last);
            }
        }
    }

    /// A reset of `zone` completed (durable) or failed.
    fn reset(&mut self, zone: usize, ok: bool) {
        let start = self.geometry.zone_start(zone);
        let len = self.geometry.zone_len(zone);
        let model = &mut self.zones[zone];
        if !ok {
            model.maybe_reset = true;
            return;
        }
        assert!(
            !model.kept,
            "a reset of READ_ONLY/OFFLINE zone {zone} succeeded"
        );
        *model = ZoneModel {
            acked: start,
            durable: start,
            furthest: start,
            maybe_reset: false,
            kept: false,
        };
        for s in start..start + len {
            self.sectors[s as usize].clear();
        }
    }

    fn step(&mut self, input: &mut Input) {
        let op = input.u8();
        let zone = usize::from(input.u8()) % self.zones.len();
        let start = self.geometry.zone_start(zone);
        let gran = self.geometry.granularity_sectors();
        let conventional = self.geometry.is_conventional(zone);
        let ok = |status: u8| status == crate::block::request_status::OK;
        match op % model_op::COUNT {
            code @ (model_op::WRITE | model_op::APPEND) => {
                let nr = gran * (1 + u64::from(input.u8()) % (self.geometry.zone_size / gran * 2));
                let offset = input.u8();
                let sector = if code == model_op::APPEND {
                    self.zones[zone].acked
                } else if conventional {
                    start + (u64::from(offset) * gran) % self.geometry.zone_len(zone)
                } else if offset >= 0xf0 {
                    // Off the write pointer: must fail.
                    self.zones[zone].acked + u64::from(offset & 0xf)
                } else {
                    self.zones[zone].acked
                };
                self.write(zone, sector, nr, code == model_op::APPEND);
            }
            model_op::READ => {
                let len = self.geometry.zone_len(zone);
                let (status, data) =
                    self.request(request_type::IN, start, &[], (len * SECTOR_SIZE) as u32);
                if ok(status) {
                    let acked = self.zones[zone].acked;
                    for (s, bytes) in (start..).zip(data.chunks_exact(SECTOR_SIZE as usize)) {
                        if s >= acked {
                            assert!(bytes.iter().all(|&b| b == 0), "sector {s} above the wp");
                        } else {
                            // Running: what the last acknowledged write (or a later one) left.
                            let candidates = &self.sectors[s as usize];
                            let from = candidates.iter().rposition(|&(_, ok)| ok);
                            if let Some(from) = from {
                                check_sector(s, bytes, &candidates[from..]);
                            }
                        }
                    }
                }
            }
            model_op::FLUSH => {
                if ok(self.request(request_type::FLUSH, 0, &[], 0).0) {
                    self.flushed();
                }
            }
            code @ (model_op::OPEN | model_op::CLOSE) => {
                let request_type = if code == model_op::OPEN {
                    zone_request::ZONE_OPEN
                } else {
                    zone_request::ZONE_CLOSE
                };
                self.request(request_type, start, &[], 0);
            }
            model_op::FINISH => {
                // A FULL zone keeps its write pointer where its data ends (the image stores
                // it so), so a finish moves nothing the model tracks.
                if ok(self.request(zone_request::ZONE_FINISH, start, &[], 0).0) {
                    let model = &self.zones[zone];
                    assert!(
                        !model.kept,
                        "a finish of READ_ONLY/OFFLINE zone {zone} succeeded"
                    );
                }
            }
            model_op::RESET => {
                let status = self.request(zone_request::ZONE_RESET, start, &[], 0).0;
                if !conventional && !self.zones[zone].kept {
                    self.reset(zone, ok(status));
                } else {
                    assert!(!ok(status), "a reset of zone {zone} succeeded");
                }
            }
            _ => {
                let status = self.request(zone_request::ZONE_RESET_ALL, 0, &[], 0).0;
                for zone in 0..self.zones.len() {
                    if !self.geometry.is_conventional(zone) && !self.zones[zone].kept {
                        self.reset(zone, ok(status));
                    }
                }
            }
        }
    }

    /// Reopens the image and checks every zone against the model.
    fn check_reopened(&self, path: &Path, crashed: bool) {
        // Another test of this process that forks a child at this moment (the fuzz script
        // test) gives the child a copy of every descriptor, flock included, until the child
        // execs: wait out that window rather than fail. A lock that lasts is still an error.
        let mut tries = 0;
        let mut disk = loop {
            match ZonedImage::open(path, &GeometryOverrides::default()) {
                Err(ImageError::InUse(_)) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => {
                    break opened
                        .unwrap_or_else(|error| panic!("the image does not reopen: {error}"))
                }
            }
        };
        check_zone_invariants(disk.zones());
        for (zone, model) in self.zones.iter().enumerate() {
            let start = self.geometry.zone_start(zone);
            let len = self.geometry.zone_len(zone);
            let (cond, wp) = disk.zones().saved_state(zone);
            let what = || format!("zone {zone} {cond:?} wp {wp}, model {model:?}");
            if !self.geometry.is_conventional(zone) {
                let may_be_reset = crashed && model.maybe_reset && wp == start;
                assert!(
                    wp >= model.durable || may_be_reset,
                    "{}: acknowledged and flushed data lost",
                    what()
                );
                assert!(
                    wp <= model.furthest,
                    "{}: past what was acknowledged",
                    what()
                );
            }
            let below = if self.geometry.is_conventional(zone) {
                start + len
            } else {
                wp
            };
            for s in start..below {
                let candidates = &self.sectors[s as usize];
                if candidates.iter().any(|&(_, ok)| ok) {
                    check_sector(s, &read_sector(&mut disk, s), candidates);
                }
            }
        }
    }
}

/// `bytes` must be one of the `candidates` versions of sector `sector`.
fn check_sector(sector: u64, bytes: &[u8], candidates: &[(u32, bool)]) {
    let stored = u32::from_le_bytes(bytes[8..12].try_into().expect("a whole sector"));
    assert!(
        candidates.iter().any(|&(version, _)| version == stored)
            && bytes == sector_pattern(sector, stored).as_slice(),
        "sector {sector} holds {:02x?}..., not one of the versions {candidates:?}",
        &bytes[..12]
    );
}

/// Well-formed requests into the zoned device on storage that may fail, against a model of
/// what the device acknowledged. Input after the mode byte: a geometry (`decode_geometry`),
/// faults (`decode_faults`), the prefill byte (`prefill`), a failure byte ([`model_flags`])
/// and, when it arms a failure, a byte saying how many operations of that kind succeed
/// before the one that fails; then requests until the input ends: an opcode byte
/// ([`model_op`]), a zone byte, and for WRITE and APPEND a length byte (granularity
/// multiples, up to two zones) and an offset byte (conventional zones: where; sequential
/// ones: 0xf0 and above miss the write pointer).
///
/// Checked: every request completes; a request during which the EIO fired fails; an
/// acknowledged write was at the write pointer and an append landed there; reads return
/// the acknowledged data and zeros above the write pointer. After a crash (or a clean
/// shutdown) the image reopens; no write pointer is behind what a completed flush or reset
/// made durable (after a crash, a zone whose reset failed may come back reset), or past
/// what was acknowledged; every sector below it holds a version that was written there.
pub fn storage_model(input: &mut Input) -> ModelSummary {
    let geometry = decode_geometry(input);
    let faults = decode_faults(input, &geometry);
    let prefill_byte = input.u8();
    let failure = input.u8();
    let scratch = Scratch(scratch_path("model"));
    let mut disk = ZonedImage::create(&scratch.0, geometry).expect("a fresh scratch image");
    let prefilled = prefill(&mut disk, prefill_byte);
    let fired = if failure & model_flags::FAIL != 0 {
        let kind = StorageOp::ALL[usize::from(failure & 3)];
        disk.storage_mut()
            .fail_storage_op(kind, u32::from(input.u8()))
    } else {
        Arc::new(AtomicBool::new(false))
    };
    let mut sectors = vec![Candidates::new(); geometry.capacity as usize];
    let zones = (0..geometry.nr_zones() as usize)
        .map(|zone| {
            let start = geometry.zone_start(zone);
            for s in start..start + prefilled[zone] {
                sectors[s as usize].push((0, true));
            }
            let acked = if geometry.is_conventional(zone) {
                start + geometry.zone_len(zone)
            } else {
                start + prefilled[zone]
            };
            let kept = faults
                .read_only_zones
                .iter()
                .chain(&faults.offline_zones)
                .any(|&z| z as usize == zone);
            ZoneModel {
                acked,
                durable: acked,
                furthest: acked,
                maybe_reset: false,
                kept,
            }
        })
        .collect();
    let executor = ZonedExecutor::with_faults(disk, &faults).expect("faults on sequential zones");
    let block = Block::with_executor(Box::new(executor), "fuzz-zoned");
    let memory = guest_memory();
    let mut run = ModelRun {
        device: DeviceUnderTest::new(block, &memory, 16, false),
        geometry,
        zones,
        sectors,
        version: 0,
        fired,
        acknowledged: 0,
        failed: 0,
    };
    while !input.is_empty() {
        run.step(input);
    }
    // A clean shutdown flushes; one whose flush failed is as good as a crash.
    let clean = failure & model_flags::SHUTDOWN != 0 && run.device.block.flush().is_ok();
    if clean {
        run.flushed();
    }
    drop(std::mem::replace(
        &mut run.device.block,
        Block::new(Box::new(MemoryBackend::new(0)), "dropped"),
    ));
    run.check_reopened(&scratch.0, !clean);
    ModelSummary {
        acknowledged: run.acknowledged,
        failed: run.failed,
        fired: run.fired.load(Ordering::SeqCst),
    }
}

/// What a [`storage_model`] run did, for tests of its seeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSummary {
    /// Requests completed OK, and with an error.
    pub acknowledged: u32,
    pub failed: u32,
    /// Whether the injected EIO fired.
    pub fired: bool,
}

/// Most sectors of a huge geometry's disk: 2 TiB.
const HUGE_MAX_SECTORS: u64 = (2 << 40) / SECTOR_SIZE;

/// Most zones [`huge_geometry`] creates an image with: 2 TiB in 2 GiB zones. Each zone
/// costs a few tens of microseconds under coverage instrumentation (slot checksums at
/// creation and open), and an iteration should stay within tens of milliseconds.
const HUGE_MAX_CREATED_ZONES: u64 = 1 << 10;

/// A geometry of up to 2 TiB and about [`MAX_ZONES`] zones (or more, which must be refused),
/// not validated: zone-size shift byte, zone-count kind byte and its argument, capacity kind
/// byte and its argument, le16 zone-capacity shortfall, conventional-zone byte, limits byte,
/// le16 max-append, granularity byte.
fn decode_huge_geometry(input: &mut Input) -> ZonedGeometry {
    let zone_size = 1u64 << (input.u8() % 24);
    let nr_zones = match input.u8() % 4 {
        0 => MAX_ZONES - u64::from(input.u16()),
        1 => MAX_ZONES + u64::from(input.u8()),
        2 => u64::from(input.u32()),
        _ => 1 << (input.u8() % 22),
    };
    let capacity = match input.u8() % 4 {
        0 => nr_zones.saturating_mul(zone_size),
        1 => nr_zones
            .saturating_mul(zone_size)
            .saturating_sub(u64::from(input.u16())),
        2 => HUGE_MAX_SECTORS - u64::from(input.u16()),
        _ => input.u64(),
    };
    let zone_capacity = zone_size.saturating_sub(u64::from(input.u16()));
    let conventional_zones = match input.u8() {
        0xff => nr_zones.min(u64::from(u32::MAX)) as u32,
        byte => u32::from(byte % 4),
    };
    let limits = input.u8();
    ZonedGeometry {
        capacity,
        zone_size,
        zone_capacity,
        conventional_zones,
        max_open: u32::from(limits & 7),
        max_active: u32::from(limits >> 4),
        max_append_sectors: 1 + u32::from(input.u16()),
        write_granularity: 512 << (input.u8() % 4),
        // The byte layout predates 4Kn geometries (seeds depend on it); the other decoders
        // cover 4 KiB blocks.
        logical_block_size: 512,
    }
}

/// Huge geometries (up to 2 TiB, up to and past [`MAX_ZONES`] zones): validation, creating a
/// sparse image, a few requests at its far end, and the reopen. Input after the mode byte:
/// the geometry (`decode_huge_geometry`), then a flags byte (bit 1: end with a RESET_ALL).
/// Images are created only for up to `HUGE_MAX_CREATED_ZONES` zones, so that an iteration
/// stays fast.
///
/// Checked: a geometry with more than `MAX_ZONES` zones is refused, and an accepted one has
/// at most that many; a refused creation leaves no file; an image that was created takes no
/// data blocks, serves the requests, and reopens with the state they left.
pub fn huge_geometry(input: &mut Input) {
    let wanted = decode_huge_geometry(input);
    let flags = input.u8();
    let geometry = match ZonedGeometry::new(wanted) {
        Ok(geometry) => geometry,
        Err(error) => {
            let message = error.to_string();
            assert!(!message.contains('\n'), "{message:?}");
            let zones = wanted.capacity.div_ceil(wanted.zone_size.max(1));
            if wanted.zone_size.is_power_of_two() && zones <= MAX_ZONES {
                assert!(
                    !matches!(
                        error,
                        crate::zoned::geometry::GeometryError::TooManyZones(_)
                    ),
                    "{zones} zones refused as too many"
                );
            }
            return;
        }
    };
    let nr_zones = geometry.nr_zones();
    assert!(nr_zones <= MAX_ZONES, "{nr_zones} zones accepted");
    // Creating and reopening a million zones takes most of a second (with a sanitizer): the
    // bound itself is checked above, and by image_header's crafted headers.
    if nr_zones > HUGE_MAX_CREATED_ZONES {
        return;
    }
    let scratch = Scratch(scratch_path("huge"));
    let mut disk = match ZonedImage::create(&scratch.0, geometry) {
        Ok(disk) => disk,
        Err(error) => {
            // Too large for the file system, say: refused, and nothing is left.
            let message = error.to_string();
            assert!(!message.contains('\n'), "{message:?}");
            assert!(!scratch.0.exists(), "a refused image was left: {message}");
            return;
        }
    };
    {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(&scratch.0).expect("the image exists");
        let table = nr_zones * 32;
        assert!(
            metadata.blocks() * 512 <= (table + (2 << 20)).next_multiple_of(1 << 20),
            "the image is not sparse: {} blocks",
            metadata.blocks()
        );
    }
    let last = nr_zones as usize - 1;
    let middle = (geometry.conventional_zones as usize + last) / 2;
    let gran = geometry.granularity_sectors();
    let data = vec![0xa5u8; (gran * SECTOR_SIZE) as usize];
    let _ = disk.write(geometry.zone_start(last), &data);
    let _ = disk.append(geometry.zone_start(middle), &data);
    let _ = disk.zone_op(ZoneOp::Finish, geometry.zone_start(middle));
    let mut reply = vec![0u8; 64 + 64 * 4];
    let _ = disk.report_into(geometry.zone_start(last.saturating_sub(2)), &mut reply);
    disk.flush().expect("a flush of a huge image");
    if flags & 2 != 0 {
        disk.reset_all().expect("a reset-all of a huge image");
    }
    let expected: Vec<(ZoneCondition, u64)> = [0, middle, last]
        .iter()
        .map(|&zone| disk.zones().saved_state(zone))
        .collect();
    drop(disk);
    let reopened = ZonedImage::open(&scratch.0, &GeometryOverrides::default())
        .unwrap_or_else(|error| panic!("a huge image does not reopen: {error}"));
    check_zone_invariants(reopened.zones());
    for (&zone, &(cond, wp)) in [0, middle, last].iter().zip(&expected) {
        let (reopened_cond, reopened_wp) = reopened.zones().saved_state(zone);
        assert_eq!(reopened_wp, wp, "zone {zone}");
        if !cond.is_open() {
            assert_eq!(reopened_cond, cond, "zone {zone}");
        }
    }
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
        let hold = input.u8().is_multiple_of(8);
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
        // Formatted only for a failure: a huge disk has a million zones.
        let what = || format!("zone {i} {cond:?} wp {wp} (start {start}, capacity end {cap_end})");
        if g.is_conventional(i) {
            assert!(
                matches!(
                    cond,
                    ZoneCondition::NotWritePointer
                        | ZoneCondition::ReadOnly
                        | ZoneCondition::Offline
                ),
                "{}",
                what()
            );
            assert_eq!(wp, end, "{}", what());
        } else {
            assert_ne!(cond, ZoneCondition::NotWritePointer, "{}", what());
            assert!(start <= wp && wp <= cap_end, "{}", what());
            match cond {
                ZoneCondition::Empty => assert_eq!(wp, start, "{}", what()),
                ZoneCondition::ImplicitOpen | ZoneCondition::Closed => {
                    assert!(start < wp && wp < cap_end, "{}", what())
                }
                ZoneCondition::ExplicitOpen => assert!(wp < cap_end, "{}", what()),
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
    *ring = SplitRing::new(memory, layout::RINGS, size);
    ring.clear().expect(RINGS_IN_MEMORY);
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
    let mut ring = SplitRing::new(&memory, layout::RINGS, QUEUE_SIZE);
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
/// Largest file the FIT_SIZE flag creates (sparse): 2 TiB of data and the largest zone
/// table; and most zones it allows, past [`MAX_ZONES`] so that the fuzzer sees the bound.
const FIT_MAX_BYTES: u64 = (2 << 40) + (64 << 20);
const FIT_MAX_ZONES: u64 = 2 * MAX_ZONES;

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
        // RESET_ALL with data in every zone, zone 3 READ_ONLY and zone 4 OFFLINE between
        // written zones: no open or active limits, prefill byte 5, queue of 16.
        e.raw(&[0, 1, 0, 7, 0, 0, 1, 0, 0, 7, 0b011, 2, 3, 4, 5, 0]);
        e.chain(10, 0, &[Header, Status]);
        e.chain(9, 48, &[Header, Status]);
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
        let reset_all_kept = e.finish();
        let mut seeds = vec![
            ("requests", requests),
            ("faults", faults),
            ("state-machine", state),
            ("reset-all-kept", reset_all_kept),
        ];
        seeds.extend(storage_model_seeds());
        seeds.extend(huge_geometry_seeds());
        seeds
    }

    /// Storage-model inputs (mode 2 of [`zoned_requests`]), one per kind of injected EIO.
    fn storage_model_seeds() -> Seeds {
        use model_op::*;
        // 8 zones of 16 sectors, 1 conventional, no limits; prefill byte 5.
        let geometry = [1, 0, 7, 0, 0, 1, 0, 0, 7];
        let mut e = Encoder::default();
        let mut seed = |faults: &[u8], failure: u8, skip: u8, ops: &[&[u8]]| {
            e.u8(2).raw(&geometry).raw(faults).u8(5).u8(failure);
            if failure & model_flags::FAIL != 0 {
                e.u8(skip);
            }
            for op in ops {
                e.raw(op);
            }
            e.finish()
        };
        let fail = |kind: StorageOp| model_flags::FAIL | kind as u8;
        let data_write = seed(
            &[0],
            fail(StorageOp::DataWrite),
            1,
            &[
                &[WRITE, 2, 1, 0],
                &[WRITE, 2, 1, 0],
                &[READ, 2],
                &[FLUSH, 0],
                &[APPEND, 3, 0, 0],
                &[WRITE, 0, 3, 5],
                &[FLUSH, 0],
                &[READ, 0],
            ],
        );
        let data_sync = seed(
            &[0],
            fail(StorageOp::DataSync),
            0,
            &[
                &[WRITE, 1, 1, 0],
                &[FLUSH, 0],
                &[RESET, 2],
                &[WRITE, 1, 0, 0],
                &[FLUSH, 0],
                &[READ, 1],
            ],
        );
        let table_write = seed(
            &[0b011, 2, 3],
            fail(StorageOp::TableWrite) | model_flags::SHUTDOWN,
            1,
            &[
                &[WRITE, 1, 0, 0],
                &[FINISH, 5],
                &[RESET_ALL, 0],
                &[FLUSH, 0],
                &[RESET_ALL, 0],
                &[WRITE, 2, 0, 0],
                &[OPEN, 6],
                &[CLOSE, 6],
            ],
        );
        let table_sync = seed(
            &[0b011, 1, 4],
            fail(StorageOp::TableSync),
            1,
            &[
                &[WRITE, 1, 0, 0],
                &[FLUSH, 0],
                &[RESET, 1],
                &[WRITE, 2, 0, 0xf1],
                &[RESET, 3],
                &[READ, 3],
            ],
        );
        vec![
            ("model-data-write-eio", data_write),
            ("model-data-sync-eio", data_sync),
            ("model-table-write-eio", table_write),
            ("model-table-sync-eio", table_sync),
        ]
    }

    /// Huge-geometry inputs (mode 4 of [`zoned_requests`]).
    fn huge_geometry_seeds() -> Seeds {
        let mut e = Encoder::default();
        // Exactly MAX_ZONES one-sector zones: accepted (too many to create here).
        e.raw(&[4, 0, 0])
            .u16(0)
            .u8(0)
            .u16(0)
            .raw(&[1, 0])
            .u16(7)
            .raw(&[0, 3]);
        let max_zones = e.finish();
        // One zone more than MAX_ZONES: refused.
        e.raw(&[4, 0, 1, 1, 0])
            .u16(0)
            .raw(&[1, 0])
            .u16(7)
            .raw(&[0, 1]);
        let too_many = e.finish();
        // 2 TiB in 2 GiB zones (1 Ki of them): a sparse image, written at its far end,
        // reset and reopened.
        e.raw(&[4, 22, 3, 10, 2])
            .u16(0)
            .u16(0)
            .raw(&[2, 0x21])
            .u16(255)
            .raw(&[3, 2]);
        let two_tib = e.finish();
        // 2 TiB in 4 KiB zones: 512 Mi zones, refused.
        e.raw(&[4, 3, 3, 21, 2])
            .u16(0)
            .u16(0)
            .raw(&[0, 0])
            .u16(7)
            .raw(&[0, 1]);
        let small_zones = e.finish();
        vec![
            ("huge-max-zones", max_zones),
            ("huge-too-many-zones", too_many),
            ("huge-2tib-sparse", two_tib),
            ("huge-2tib-small-zones", small_zones),
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
        // Headers of huge geometries (right CRC, sparse file of the size they ask for): the
        // MAX_ZONES one (its zeroed table is refused) and one zone more (refused before the
        // table is read).
        let huge = |zones: u64| {
            let mut h = vec![0u8; HEADER_FIELDS];
            h[0..8].copy_from_slice(&crate::zoned::image::MAGIC);
            h[8..12].copy_from_slice(&1u32.to_le_bytes());
            h[12..16].copy_from_slice(&(header_size as u32).to_le_bytes());
            h[16..24].copy_from_slice(&zones.to_le_bytes());
            h[24..32].copy_from_slice(&1u64.to_le_bytes());
            h[32..40].copy_from_slice(&1u64.to_le_bytes());
            h[52..56].copy_from_slice(&1u32.to_le_bytes());
            h[56..60].copy_from_slice(&512u32.to_le_bytes());
            h[60..64].copy_from_slice(&(zones as u32).to_le_bytes());
            h[64..72].copy_from_slice(&(header_size as u64).to_le_bytes());
            let data_offset = (header_size as u64 + zones * 32).next_multiple_of(1 << 20);
            h[72..80].copy_from_slice(&data_offset.to_le_bytes());
            let mut input = vec![image_flags::FIX_HEADER_CRC | image_flags::FIT_SIZE];
            input.extend_from_slice(&h);
            input
        };
        vec![
            ("valid", valid),
            ("repaired-slots", torn),
            ("huge-max-zones", huge(MAX_ZONES)),
            ("huge-too-many-zones", huge(MAX_ZONES + 1)),
        ]
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
        // bash by its full path: a program looked up in a changed PATH makes std fork the
        // whole test process (every other test's image descriptors and locks with it) rather
        // than posix_spawn it.
        let bash = ["/bin/bash", "/usr/bin/bash"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("bash");
        let output = std::process::Command::new(bash)
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

    /// The storage-model seeds meet their injected EIO, and requests succeed before and
    /// after it.
    #[test]
    fn storage_model_seeds_meet_their_failure() {
        for (name, seed) in seeds::zoned_requests() {
            if !name.starts_with("model-") {
                continue;
            }
            let summary = storage_model(&mut Input::new(&seed[1..]));
            assert!(summary.fired, "{name}: {summary:?}");
            assert!(
                summary.acknowledged >= 3 && summary.failed >= 1,
                "{name}: {summary:?}"
            );
        }
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
        assert_eq!(device.ring.used_idx().unwrap(), 5);
        let status =
            |memory: &GuestMemoryMmap| memory.read_obj::<u8>(GuestAddress(layout::STATUS)).unwrap();
        // The last request was of an unknown type.
        assert_eq!(status(&memory), crate::block::request_status::UNSUPP);
        assert_eq!(
            device.ring.used_element(1).unwrap().len,
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
