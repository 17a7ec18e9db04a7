//! The zoned disk as the virtio-blk device's [`Executor`]: it offers VIRTIO_BLK_F_ZONED
//! (host-managed), fills the zoned config fields, and serves IN, OUT, FLUSH and every ZONE_*
//! request through a [`ZonedDisk`], so that every access obeys the zone state machine. Here:
//! admission (counting, injected write failures) and dispatch; data requests go to `lanes` and
//! `guest_io`, reports to `report`.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;

use super::disk::{ZoneStorage, ZonedDisk};
use super::faults::WriteFaults;
use super::geometry::FaultInjection;
use super::image::{PowerCut, PowerCutReport};
use super::lanes::{lane_of, Lanes};
use super::report;
use super::state::ZoneOpKind;
use super::trace::{write_pointer, Observed, ZoneTrace};
use super::wire::{self, status};
use crate::block::device::{config_offset, put, CONFIG_SIZE};
use crate::block::{Answered, Completion, Executor, Request, RequestType};
use crate::virtio::GuestMemoryMmap;

/// How many requests of each kind a zoned disk served, for the shutdown log line (and for tests
/// that must prove, say, that a file system really used ZONE_APPEND).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub reads: u64,
    pub writes: u64,
    pub appends: u64,
    pub reports: u64,
    pub zone_management: u64,
    pub flushes: u64,
}

/// Serves the requests of a host-managed zoned virtio-blk disk.
/// When a power cut comes (`--power-cut`), shared by the disks with a volatile write cache and
/// vmm: at the Nth FLUSH any of them gets, or when vmm decides (a timer, a signal). From the
/// cut on, those disks fail every request with IOERR without touching storage, the FLUSH that
/// met the cut included, so that nothing the guest does while the VM stops changes what the
/// cut then loses; `on_cut` (which stops the VM) runs once.
pub struct PowerCutTrigger {
    /// FLUSH requests still to come before the cut; 0 for a cut that does not count flushes.
    flushes_left: AtomicU64,
    cut: AtomicBool,
    on_cut: Box<dyn Fn() + Send + Sync>,
}

impl PowerCutTrigger {
    /// A cut just before the `at_flush`th FLUSH (counted from 1) completes, if given.
    pub fn new(at_flush: Option<u64>, on_cut: Box<dyn Fn() + Send + Sync>) -> Self {
        Self {
            flushes_left: AtomicU64::new(at_flush.unwrap_or(0)),
            cut: AtomicBool::new(false),
            on_cut,
        }
    }

    /// Cuts now (once; later calls do nothing).
    pub fn cut_now(&self) {
        if !self.cut.swap(true, Ordering::SeqCst) {
            (self.on_cut)();
        }
    }

    pub fn has_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// A FLUSH arrived: counts it, and cuts if it is the one. True if the power is cut.
    fn flush_arrives(&self) -> bool {
        let counted = self
            .flushes_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if counted == Ok(1) {
            self.cut_now();
        }
        self.has_cut()
    }
}

pub struct ZonedExecutor<S: ZoneStorage> {
    disk: ZonedDisk<S>,
    counts: RequestCounts,
    faults: WriteFaults,
    /// The run of lane requests (request index, zone) `execute` is collecting, kept between
    /// batches so that collecting it allocates nothing.
    run: Vec<(usize, usize)>,
    lanes: Lanes,
    /// Set on a disk with a volatile write cache when a power cut may come.
    power_cut: Option<Arc<PowerCutTrigger>>,
    /// The zone trace of this run (`trace=FILE`), if one is kept.
    trace: Option<ZoneTrace>,
    /// With a trace: what each request of the batch did to its zone, kept between batches.
    observed: Vec<Option<Observed>>,
}

impl<S: ZoneStorage> ZonedExecutor<S> {
    pub fn new(disk: ZonedDisk<S>) -> Self {
        Self {
            disk,
            counts: RequestCounts::default(),
            faults: WriteFaults::default(),
            run: Vec::new(),
            lanes: Lanes::new(),
            power_cut: None,
            trace: None,
            observed: Vec::new(),
        }
    }

    /// The executor, writing one line per request to `trace` (docs/zone-trace.md).
    pub fn with_trace(mut self, trace: ZoneTrace) -> Self {
        self.trace = Some(trace);
        self
    }

    /// The zone trace, if one is kept.
    pub fn trace(&self) -> Option<&ZoneTrace> {
        self.trace.as_ref()
    }

    /// What a request that changed nothing (an injected failure) left its zone at.
    fn unchanged(&self, request: &Request) -> Observed {
        let zone = self.disk.geometry().zone_index(request.sector);
        let wp = write_pointer(self.disk.zones(), zone);
        Observed {
            done: Instant::now(),
            wp_before: wp,
            wp_after: wp,
        }
    }

    /// This disk loses power when `trigger` says (see [`PowerCutTrigger`]).
    pub fn set_power_cut(&mut self, trigger: Arc<PowerCutTrigger>) {
        self.power_cut = Some(trigger);
    }

    /// An executor whose disk shows the injected `faults` for this run (nothing is stored).
    pub fn with_faults(mut disk: ZonedDisk<S>, faults: &FaultInjection) -> Result<Self, String> {
        let faults = WriteFaults::inject(&mut disk, faults)?;
        Ok(Self {
            faults,
            ..Self::new(disk)
        })
    }

    pub fn counts(&self) -> RequestCounts {
        self.counts
    }

    pub fn disk(&self) -> &ZonedDisk<S> {
        &self.disk
    }

    /// Counts the request and fails it if it is the injected write failure.
    fn admit(&mut self, request: &Request) -> Option<Completion> {
        let counts = &mut self.counts;
        match request.kind {
            RequestType::In => counts.reads += 1,
            RequestType::Out => counts.writes += 1,
            RequestType::Flush => counts.flushes += 1,
            RequestType::ZoneAppend => counts.appends += 1,
            RequestType::ZoneReport => counts.reports += 1,
            kind if wire::zone_op_of_request(kind).is_some() => counts.zone_management += 1,
            _ => {}
        }
        if let Some(trigger) = &self.power_cut {
            if trigger.has_cut() || (request.kind == RequestType::Flush && trigger.flush_arrives())
            {
                return Some(Completion::with_status(status::IOERR));
            }
        }
        if !matches!(request.kind, RequestType::Out | RequestType::ZoneAppend) {
            return None;
        }
        let zone = self.disk.geometry().zone_index(request.sector);
        self.faults
            .failure(zone, request.sector)
            .map(Completion::with_status)
    }

    /// Serves an admitted request that is not part of a lane run; with `observe`, also says
    /// what it did to the write pointer of the zone it addresses.
    fn serve_alone(
        &mut self,
        request: &Request,
        memory: &GuestMemoryMmap,
        observe: bool,
    ) -> (Completion, Option<Observed>)
    where
        S: Send,
    {
        let data = self.disk.storage().data_path();
        let kind = request.kind;
        let zone = self.disk.geometry().zone_index(request.sector);
        if matches!(
            kind,
            RequestType::In | RequestType::Out | RequestType::ZoneAppend
        ) {
            return self.lanes.serve_alone(
                &mut self.disk,
                data.as_ref(),
                memory,
                request,
                (zone, observe),
            );
        }
        let zone_op = wire::zone_op_of_request(kind);
        if !observe {
            return (self.serve_other(request, memory, zone_op), None);
        }
        // Only an operation on one zone has a write pointer to show.
        let zone = zone.filter(|_| matches!(zone_op, Some(ZoneOpKind::Single(_))));
        let wp_before = write_pointer(self.disk.zones(), zone);
        let completion = self.serve_other(request, memory, zone_op);
        let observed = Observed {
            done: Instant::now(),
            wp_before,
            wp_after: write_pointer(self.disk.zones(), zone),
        };
        (completion, Some(observed))
    }

    /// Serves a request other than IN, OUT and ZONE_APPEND.
    fn serve_other(
        &mut self,
        request: &Request,
        memory: &GuestMemoryMmap,
        zone_op: Option<ZoneOpKind>,
    ) -> Completion {
        let kind = request.kind;
        if !(kind == RequestType::Flush || kind == RequestType::ZoneReport || zone_op.is_some()) {
            return Completion::with_status(status::UNSUPP);
        }
        if !request.data_fits_type() {
            return Completion::with_status(status::IOERR);
        }
        match zone_op {
            Some(op) => Completion::with_status(wire::status_of(
                &self.disk.zone_management(op, request.sector),
            )),
            None if kind == RequestType::Flush => {
                Completion::with_status(wire::status_of(&self.disk.flush()))
            }
            None => report::serve(&self.disk, memory, request),
        }
    }
}

impl<S: ZoneStorage + Send> Executor for ZonedExecutor<S> {
    fn features(&self) -> u64 {
        1 << wire::VIRTIO_BLK_F_ZONED | 1 << wire::VIRTIO_BLK_F_TOPOLOGY
    }

    /// The model is always host-managed, which a driver without VIRTIO_BLK_F_ZONED cannot
    /// drive (virtio 1.3 5.2.5: the device must then refuse FEATURES_OK).
    fn required_features(&self) -> u64 {
        1 << wire::VIRTIO_BLK_F_ZONED
    }

    fn fill_config(&self, config: &mut [u8; CONFIG_SIZE]) {
        let geometry = self.disk.geometry();
        put(
            config,
            config_offset::CAPACITY,
            &geometry.capacity.to_le_bytes(),
        );
        wire::fill_zoned_config(geometry, self.disk.physical_block_size(), config);
    }

    /// Runs of reads, writes and appends confined to one zone are split into lanes by zone,
    /// which run in parallel when storage has a `DataPath`; every other request waits for the
    /// run before it and is served alone.
    fn execute(
        &mut self,
        requests: &[Request],
        memory: &GuestMemoryMmap,
        completions: &mut Vec<Completion>,
    ) {
        completions.resize(requests.len(), Completion::with_status(status::IOERR));
        let data = self.disk.storage().data_path();
        let mut run = std::mem::take(&mut self.run);
        run.clear();
        let tracing = self.trace.is_some();
        let mut observed = std::mem::take(&mut self.observed);
        if tracing {
            observed.clear();
            observed.resize(requests.len(), None);
        }
        for (index, request) in requests.iter().enumerate() {
            if let Some(failed) = self.admit(request) {
                completions[index] = failed;
                if tracing {
                    observed[index] = Some(self.unchanged(request));
                }
                continue;
            }
            match lane_of(self.disk.geometry(), request) {
                Some(zone) => run.push((index, zone)),
                None => {
                    self.lanes.serve(
                        &mut self.disk,
                        data.as_ref(),
                        &run,
                        requests,
                        memory,
                        completions,
                        tracing.then_some(&mut observed[..]),
                    );
                    run.clear();
                    let (completion, seen) = self.serve_alone(request, memory, tracing);
                    completions[index] = completion;
                    if tracing {
                        observed[index] = seen;
                    }
                }
            }
        }
        self.lanes.serve(
            &mut self.disk,
            data.as_ref(),
            &run,
            requests,
            memory,
            completions,
            tracing.then_some(&mut observed[..]),
        );
        self.run = run;
        if let Some(trace) = self.trace.as_mut() {
            let mut flushed = false;
            for ((request, completion), seen) in requests.iter().zip(&*completions).zip(&observed) {
                trace.request(self.disk.zones(), request, completion.status, *seen);
                flushed |= request.kind == RequestType::Flush;
            }
            // The guest's FLUSH is the disk's commit point, and the trace's.
            if flushed {
                trace.flush();
            }
        }
        self.observed = observed;
    }

    fn answered(&mut self, answer: Answered<'_>) {
        let Some(trace) = self.trace.as_mut() else {
            return;
        };
        match answer {
            Answered::Request { request, status } => {
                trace.request(self.disk.zones(), request, status, None)
            }
            Answered::Malformed { error, answered } => trace.malformed(error, answered),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let c = self.counts;
        log::info!(
            "zoned disk served {} reads, {} writes, {} appends, {} reports, {} zone management requests, {} flushes",
            c.reads, c.writes, c.appends, c.reports, c.zone_management, c.flushes
        );
        let flushed = self.disk.flush().map_err(|error| {
            warn!("zoned disk: flush at shutdown failed: {error}");
            io::Error::other(error.to_string())
        });
        // What the guest never left time for: the image shrinks before vmm exits.
        self.disk.reclaim(Duration::MAX);
        if let Some(trace) = self.trace.as_mut() {
            trace.flush();
        }
        flushed
    }

    fn idle(&mut self, budget: Duration) -> bool {
        if let Some(trace) = self.trace.as_mut() {
            trace.flush();
        }
        self.disk.reclaim(budget)
    }

    fn power_cut(&mut self, cut: PowerCut) -> io::Result<Option<PowerCutReport>> {
        if let Some(trace) = self.trace.as_mut() {
            trace.flush();
        }
        self.disk.power_cut(cut)
    }
}
#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::block::request_type;
    use crate::block::{Segment, MAX_REQUEST_DATA_BYTES};
    use crate::file_io::DataPath;
    use crate::zoned::geometry::{FailWrite, SECTOR_SIZE};
    use crate::zoned::lanes::PARALLEL_MIN_BYTES;
    use crate::zoned::state::ZoneCondition;
    use crate::zoned::wire::request as zone_request;
    use crate::zoned::{Zone, ZonedGeometry, ZonedImage};

    const ZONE: u64 = 2048; // 1 MiB zones

    struct Fixture {
        handler: ZonedExecutor<crate::zoned::image::ImageFile>,
        memory: GuestMemoryMmap,
        path: std::path::PathBuf,
    }

    /// Serves `requests` as one batch, as the device does.
    fn execute<S: ZoneStorage + Send>(
        executor: &mut ZonedExecutor<S>,
        requests: &[Request],
        memory: &GuestMemoryMmap,
    ) -> Vec<Completion> {
        let mut completions = Vec::new();
        executor.execute(requests, memory, &mut completions);
        assert_eq!(completions.len(), requests.len());
        completions
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn fixture(name: &str) -> Fixture {
        fixture_with_faults(name, &FaultInjection::default())
    }

    fn fixture_with_faults(name: &str, faults: &FaultInjection) -> Fixture {
        let path = std::env::temp_dir().join(format!(
            "vmm-zoned-virtio-{}-{name}.img",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let geometry = ZonedGeometry {
            capacity: 8 * ZONE,
            zone_size: ZONE,
            zone_capacity: ZONE,
            conventional_zones: 1,
            max_open: 2,
            max_active: 3,
            max_append_sectors: 256,
            write_granularity: 512,
            logical_block_size: 512,
        };
        let disk = ZonedImage::create(&path, geometry).unwrap();
        let handler = ZonedExecutor::with_faults(disk, faults).unwrap();
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        Fixture {
            handler,
            memory,
            path,
        }
    }

    fn request(
        request_type: u32,
        sector: u64,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
    ) -> Request {
        let seg = |&(addr, len): &(u64, u32)| Segment {
            addr: GuestAddress(addr),
            len,
        };
        Request {
            kind: RequestType::from_raw(request_type),
            sector,
            readable: readable.iter().map(seg).collect(),
            writable: writable.iter().map(seg).collect(),
            status: GuestAddress(0xf_fff0),
        }
    }

    impl Fixture {
        /// Serves `request` alone, a batch of one.
        fn run(&mut self, request: &Request) -> Completion {
            execute(
                &mut self.handler,
                std::slice::from_ref(request),
                &self.memory,
            )[0]
        }
    }

    #[test]
    fn offers_zoned_feature_and_config() {
        let f = fixture("config");
        // VIRTIO_BLK_F_ZONED and VIRTIO_BLK_F_TOPOLOGY.
        assert_eq!(f.handler.features(), 1 << 17 | 1 << 10);
        let mut config = [0u8; CONFIG_SIZE];
        f.handler.fill_config(&mut config);
        assert_eq!(
            u32::from_le_bytes(config[72..76].try_into().unwrap()),
            ZONE as u32
        );
        assert_eq!(u32::from_le_bytes(config[76..80].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(config[80..84].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(config[84..88].try_into().unwrap()), 256);
        assert_eq!(config[92], wire::MODEL_HOST_MANAGED);
        assert_eq!(
            u64::from_le_bytes(config[0..8].try_into().unwrap()) * 512,
            8 * ZONE * 512
        );
        // blk_size: 512-byte logical blocks.
        assert_eq!(u32::from_le_bytes(config[20..24].try_into().unwrap()), 512);
        // An image's physical blocks are the host's 4 KiB pages (physical_block_exp 3), so
        // tools that write in physical blocks (blktests' dd) do not send 512-byte requests.
        assert_eq!(config[24], 3);
    }

    /// A 4Kn disk says so in blk_size (VIRTIO_BLK_F_BLK_SIZE, which the plain device offers),
    /// and refuses requests that are not whole 4 KiB blocks, served alone or in a batch.
    #[test]
    fn a_4kn_disk_advertises_its_block_size_and_refuses_partial_blocks() {
        let path =
            std::env::temp_dir().join(format!("vmm-zoned-virtio-{}-4kn.img", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let geometry = ZonedGeometry {
            capacity: 4 * ZONE,
            zone_size: ZONE,
            zone_capacity: ZONE,
            conventional_zones: 1,
            max_open: 0,
            max_active: 0,
            max_append_sectors: 256,
            write_granularity: 4096,
            logical_block_size: 4096,
        };
        let mut handler = ZonedExecutor::new(ZonedImage::create(&path, geometry).unwrap());
        std::fs::remove_file(&path).unwrap();
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let block = crate::block::Block::with_executor(
            Box::new(ZonedExecutor::new(
                ZonedImage::create(&path, geometry).unwrap(),
            )),
            "z",
        );
        std::fs::remove_file(&path).unwrap();
        let mut blk_size = [0u8; 4];
        crate::virtio::VirtioDevice::read_config(&block, 20, &mut blk_size);
        assert_eq!(u32::from_le_bytes(blk_size), 4096);
        assert_ne!(
            crate::virtio::VirtioDevice::avail_features(&block) & crate::block::feature::BLK_SIZE,
            0
        );
        let requests = [
            // Conventional zone 0: a sector inside a block, and half a block.
            request(request_type::OUT, 1, &[(0x1000, 4096)], &[]),
            request(request_type::OUT, 8, &[(0x1000, 512)], &[]),
            request(request_type::IN, 4, &[], &[(0x4000, 4096)]),
            request(request_type::IN, ZONE, &[], &[(0x4000, 2048)]),
            // Sequential zone 1: the write granularity's status.
            request(request_type::OUT, ZONE, &[(0x1000, 512)], &[]),
            request(
                zone_request::ZONE_APPEND,
                ZONE,
                &[(0x1000, 1024)],
                &[(0x8000, 8)],
            ),
            // Whole blocks are fine.
            request(request_type::OUT, 8, &[(0x1000, 4096)], &[]),
            request(request_type::IN, 8, &[], &[(0x4000, 4096)]),
            request(request_type::OUT, ZONE, &[(0x1000, 8192)], &[]),
        ];
        let statuses = [
            status::IOERR,
            status::IOERR,
            status::IOERR,
            status::IOERR,
            status::ZONE_UNALIGNED_WP,
            status::ZONE_UNALIGNED_WP,
            status::OK,
            status::OK,
            status::OK,
        ];
        let alone: Vec<u8> = requests
            .iter()
            .map(|r| execute(&mut handler, std::slice::from_ref(r), &memory)[0].status)
            .collect();
        assert_eq!(alone, statuses);
        let mut fresh = ZonedExecutor::new(ZonedImage::create(&path, geometry).unwrap());
        std::fs::remove_file(&path).unwrap();
        let batched: Vec<u8> = execute(&mut fresh, &requests, &memory)
            .into_iter()
            .map(|c| c.status)
            .collect();
        assert_eq!(batched, statuses);
    }

    #[test]
    fn a_driver_without_the_zoned_feature_is_refused_and_gets_unsupp() {
        use crate::block::Block;
        use crate::testing::driver::{Buffer, SplitQueueDriver};
        use crate::virtio::{InterruptSignal, VirtioDevice, VIRTIO_F_VERSION_1};

        struct NoInterrupt;
        impl InterruptSignal for NoInterrupt {
            fn signal_used_queue(&self, _queue_index: u16) -> io::Result<()> {
                Ok(())
            }
            fn signal_config_change(&self) -> io::Result<()> {
                Ok(())
            }
        }

        // The fixture's image, but the executor goes into a whole device.
        let f = fixture("no-zoned-feature");
        let memory = f.memory.clone();
        let path = f.path.with_extension("device.img");
        let _ = std::fs::remove_file(&path);
        let geometry = *f.handler.disk.geometry();
        let disk = ZonedImage::create(&path, geometry).unwrap();
        let _ = std::fs::remove_file(&path);
        let handler = ZonedExecutor::new(disk);
        let mut block = Block::with_executor(Box::new(handler), "zoned-serial");
        assert_eq!(block.capacity_sectors() * 512, 8 * ZONE * 512);
        let zoned = 1u64 << wire::VIRTIO_BLK_F_ZONED;
        // Spec 5.2.5: a host-managed device refuses FEATURES_OK without VIRTIO_BLK_F_ZONED.
        assert!(!block.accepts_features(VIRTIO_F_VERSION_1));
        assert!(block.accepts_features(VIRTIO_F_VERSION_1 | zoned));
        // Should a device run anyway, zone requests get UNSUPP (5.2.6).
        block.set_acked_features(VIRTIO_F_VERSION_1);
        let (mut driver, queue) =
            SplitQueueDriver::new(&memory, GuestAddress(0x8_0000), 8).unwrap();
        block
            .activate(
                memory.clone(),
                vec![queue],
                std::sync::Arc::new(NoInterrupt),
            )
            .unwrap();
        let header = GuestAddress(0x1000);
        memory
            .write_obj(zone_request::ZONE_RESET_ALL, header)
            .unwrap();
        memory.write_obj(0u64, GuestAddress(0x1008)).unwrap();
        memory.write_obj(0xffu8, GuestAddress(0x2000)).unwrap();
        driver
            .add_chain(&[
                Buffer::readable(header, 16),
                Buffer::writable(GuestAddress(0x2000), 1),
            ])
            .unwrap();
        block.process_queue(0).unwrap();
        let status: u8 = memory.read_obj(GuestAddress(0x2000)).unwrap();
        assert_eq!(status, status::UNSUPP);
        // GET_ID is the device's business, not the executor's: it answers with the serial.
        memory.write_obj(request_type::GET_ID, header).unwrap();
        driver
            .add_chain(&[
                Buffer::readable(header, 16),
                Buffer::writable(GuestAddress(0x3000), 20),
                Buffer::writable(GuestAddress(0x2000), 1),
            ])
            .unwrap();
        block.process_queue(0).unwrap();
        let mut serial = [0u8; 12];
        memory
            .read_slice(&mut serial, GuestAddress(0x3000))
            .unwrap();
        assert_eq!(&serial, b"zoned-serial");
        assert_eq!(
            memory.read_obj::<u8>(GuestAddress(0x2000)).unwrap(),
            status::OK
        );
    }

    #[test]
    fn writes_follow_the_write_pointer_and_reads_above_it_are_zero() {
        let mut f = fixture("write");
        f.memory
            .write_slice(&[0xab; 4096], GuestAddress(0x1000))
            .unwrap();
        // Sequential zone 1: a write at its start is fine, a second one at the start is not.
        assert_eq!(
            f.run(&request(request_type::OUT, ZONE, &[(0x1000, 4096)], &[]))
                .status,
            status::OK
        );
        assert_eq!(
            f.run(&request(request_type::OUT, ZONE, &[(0x1000, 4096)], &[]))
                .status,
            status::ZONE_UNALIGNED_WP
        );
        // Read 16 KiB from the zone start: 4 KiB of data, then zeros.
        f.memory
            .write_slice(&[0x55; 16384], GuestAddress(0x10000))
            .unwrap();
        let done = f.run(&request(request_type::IN, ZONE, &[], &[(0x10000, 16384)]));
        assert_eq!(done, Completion::ok(16384));
        let mut back = vec![0u8; 16384];
        f.memory
            .read_slice(&mut back, GuestAddress(0x10000))
            .unwrap();
        assert!(back[..4096].iter().all(|b| *b == 0xab));
        assert!(back[4096..].iter().all(|b| *b == 0));
        // Data in the wrong direction is refused.
        assert_eq!(
            f.run(&request(
                request_type::OUT,
                2 * ZONE,
                &[(0x1000, 512)],
                &[(0x2000, 512)]
            ))
            .status,
            status::IOERR
        );
        assert_eq!(
            f.run(&request(request_type::FLUSH, 0, &[], &[])).status,
            status::OK
        );
    }

    #[test]
    fn append_returns_the_landed_sector_in_the_first_eight_bytes() {
        let mut f = fixture("append");
        f.memory
            .write_slice(&[1; 1024], GuestAddress(0x1000))
            .unwrap();
        let first = f.run(&request(
            zone_request::ZONE_APPEND,
            2 * ZONE,
            &[(0x1000, 1024)],
            &[(0x3000, 15)],
        ));
        assert_eq!(first, Completion::ok(8));
        let second = f.run(&request(
            zone_request::ZONE_APPEND,
            2 * ZONE,
            &[(0x1000, 1024)],
            &[(0x3000, 15)],
        ));
        assert_eq!(second, Completion::ok(8));
        let landed: u64 = f.memory.read_obj(GuestAddress(0x3000)).unwrap();
        assert_eq!(landed, 2 * ZONE + 2);
        // No room for the sector: IOERR. Append to a conventional zone: INVALID_CMD.
        assert_eq!(
            f.run(&request(
                zone_request::ZONE_APPEND,
                2 * ZONE,
                &[(0x1000, 512)],
                &[(0x3000, 4)]
            ))
            .status,
            status::IOERR
        );
        assert_eq!(
            f.run(&request(
                zone_request::ZONE_APPEND,
                0,
                &[(0x1000, 512)],
                &[(0x3000, 15)]
            ))
            .status,
            status::ZONE_INVALID_CMD
        );
    }

    /// Bytes the image file takes on its file system.
    fn allocated(f: &Fixture) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&f.path).unwrap().blocks() * 512
    }

    #[test]
    fn reset_zones_are_given_back_when_idle_or_at_shutdown_not_in_the_reset() {
        let mut f = fixture("reclaim");
        let data = 256 << 10;
        f.memory
            .write_slice(&vec![0x5a; data], GuestAddress(0x1_0000))
            .unwrap();
        let write = |zone: u64| {
            request(
                request_type::OUT,
                zone * ZONE,
                &[(0x1_0000, data as u32)],
                &[],
            )
        };
        for zone in [2, 3] {
            assert_eq!(f.run(&write(zone)).status, status::OK);
        }
        let written = allocated(&f);
        let reset = |zone: u64| request(zone_request::ZONE_RESET, zone * ZONE, &[], &[]);
        assert_eq!(f.run(&reset(2)).status, status::OK);
        assert_eq!(
            allocated(&f),
            written,
            "the reset itself gives nothing back"
        );
        assert!(!f.handler.idle(Duration::MAX));
        assert!(
            allocated(&f) <= written - data as u64,
            "idle: zone 2 given back"
        );
        assert_eq!(f.run(&reset(3)).status, status::OK);
        f.handler.flush().unwrap();
        assert!(
            allocated(&f) <= written - 2 * data as u64,
            "shutdown: zone 3 given back"
        );
    }

    #[test]
    fn report_and_zone_management() {
        let mut f = fixture("report");
        assert_eq!(
            f.run(&request(zone_request::ZONE_OPEN, 3 * ZONE, &[], &[]))
                .status,
            status::OK
        );
        assert_eq!(
            f.run(&request(zone_request::ZONE_OPEN, 0, &[], &[])).status,
            status::ZONE_INVALID_CMD
        );
        assert_eq!(
            f.run(&request(zone_request::ZONE_OPEN, 4 * ZONE, &[], &[]))
                .status,
            status::OK
        );
        // max_open = 2, both explicitly open: a third explicit open needs a resource.
        assert_eq!(
            f.run(&request(zone_request::ZONE_OPEN, 5 * ZONE, &[], &[]))
                .status,
            status::ZONE_OPEN_RESOURCE
        );
        // A report buffer for the header and three zones, split over two descriptors.
        let done = f.run(&request(
            zone_request::ZONE_REPORT,
            3 * ZONE + 7,
            &[],
            &[(0x4000, 100), (0x5000, 156)],
        ));
        assert_eq!(done, Completion::ok(256));
        let nr_zones: u64 = f.memory.read_obj(GuestAddress(0x4000)).unwrap();
        assert_eq!(nr_zones, 3);
        let first_start: u64 = f.memory.read_obj(GuestAddress(0x4000 + 64 + 8)).unwrap();
        assert_eq!(first_start, 3 * ZONE);
        // Zone ops carry no data; RESET_ALL empties everything.
        assert_eq!(
            f.run(&request(
                zone_request::ZONE_CLOSE,
                3 * ZONE,
                &[(0x1000, 512)],
                &[]
            ))
            .status,
            status::IOERR
        );
        assert_eq!(
            f.run(&request(zone_request::ZONE_RESET_ALL, 0, &[], &[]))
                .status,
            status::OK
        );
        assert_eq!(
            f.run(&request(zone_request::ZONE_OPEN, 5 * ZONE, &[], &[]))
                .status,
            status::OK
        );
        // A buffer of the largest request size gets the eight zones, nothing more.
        let done = f.run(&request(
            zone_request::ZONE_REPORT,
            0,
            &[],
            &[(0x4000, MAX_REQUEST_DATA_BYTES as u32)],
        ));
        assert_eq!(done, Completion::ok(64 + 8 * 64));
        let nr_zones: u64 = f.memory.read_obj(GuestAddress(0x4000)).unwrap();
        assert_eq!(nr_zones, 8);
        assert_eq!(f.handler.counts().zone_management, 7);
        assert_eq!(f.handler.counts().reports, 2);
        // GET_ID is not the executor's (the device answers it, see
        // a_driver_without_the_zoned_feature_is_refused_and_gets_unsupp).
        let get_id = request(request_type::GET_ID, 0, &[], &[(0x1000, 20)]);
        assert_eq!(f.run(&get_id).status, status::UNSUPP);
    }

    #[test]
    fn injected_faults_show_for_this_run_only() {
        let faults = FaultInjection {
            read_only_zones: vec![2],
            offline_zones: vec![3],
            fail_write: Some(FailWrite {
                zone: 4,
                nth: 2,
                status: status::ZONE_INVALID_CMD,
            }),
        };
        let mut f = fixture_with_faults("faults", &faults);
        f.memory
            .write_slice(&[7; 512], GuestAddress(0x1000))
            .unwrap();
        let write = |sector| request(request_type::OUT, sector, &[(0x1000, 512)], &[]);
        assert_eq!(f.run(&write(2 * ZONE)).status, status::ZONE_INVALID_CMD);
        assert_eq!(f.run(&write(3 * ZONE)).status, status::ZONE_INVALID_CMD);
        // The second write to zone 4 fails and changes nothing; the next one lands at the same wp.
        assert_eq!(f.run(&write(4 * ZONE)).status, status::OK);
        assert_eq!(f.run(&write(4 * ZONE + 1)).status, status::ZONE_INVALID_CMD);
        assert_eq!(f.run(&write(4 * ZONE + 1)).status, status::OK);
        assert_eq!(f.handler.disk().zones().zone(4).unwrap().wp, 4 * ZONE + 2);
        // The report shows the injected conditions (READ_ONLY 13, OFFLINE 15).
        let done = f.run(&request(
            zone_request::ZONE_REPORT,
            2 * ZONE,
            &[],
            &[(0x4000, 192)],
        ));
        assert_eq!(done, Completion::ok(192));
        let cond = |at: u64| f.memory.read_obj::<u8>(GuestAddress(at)).unwrap();
        assert_eq!((cond(0x4000 + 64 + 25), cond(0x4000 + 128 + 25)), (13, 15));
        // Nothing of it is stored: once closed, the image reopens with zones 2 and 3 empty.
        Executor::flush(&mut f.handler).unwrap();
        let other = f.path.with_extension("other");
        let geometry = *f.handler.disk().geometry();
        let closed = std::mem::replace(
            &mut f.handler,
            ZonedExecutor::new(ZonedImage::create(&other, geometry).unwrap()),
        );
        drop(closed);
        let reopened = ZonedImage::open(&f.path, &Default::default()).unwrap();
        assert_eq!(reopened.zones().zone(2).unwrap().cond, ZoneCondition::Empty);
        assert_eq!(reopened.zones().zone(3).unwrap().cond, ZoneCondition::Empty);
        assert_eq!(reopened.zones().zone(4).unwrap().wp, 4 * ZONE + 2);
        std::fs::remove_file(other).unwrap();
    }

    #[test]
    fn faults_on_missing_or_conventional_zones_are_refused() {
        let path = std::env::temp_dir().join(format!(
            "vmm-zoned-virtio-{}-badfault.img",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let geometry = ZonedGeometry {
            capacity: 4 * ZONE,
            zone_size: ZONE,
            zone_capacity: ZONE,
            conventional_zones: 1,
            max_open: 0,
            max_active: 0,
            max_append_sectors: 256,
            write_granularity: 512,
            logical_block_size: 512,
        };
        for (faults, expected) in [
            (
                FaultInjection {
                    read_only_zones: vec![0],
                    ..Default::default()
                },
                "zone 0 is conventional",
            ),
            (
                FaultInjection {
                    offline_zones: vec![9],
                    ..Default::default()
                },
                "zone 9 does not exist",
            ),
            (
                FaultInjection {
                    fail_write: Some(FailWrite {
                        zone: 4,
                        nth: 1,
                        status: 1,
                    }),
                    ..Default::default()
                },
                "zone 4 does not exist",
            ),
        ] {
            let disk = ZonedImage::create(&path, geometry).unwrap();
            match ZonedExecutor::with_faults(disk, &faults) {
                Err(message) => assert!(message.contains(expected), "{message}"),
                Ok(_) => panic!("{faults:?} accepted"),
            }
            std::fs::remove_file(&path).unwrap();
        }
    }

    /// One batch mixing lanes (three zones), a barrier (FLUSH) and errors gives the same
    /// completions, zone states and data as the same requests served one at a time.
    #[test]
    fn a_batch_completes_like_requests_served_alone() {
        let batch = [
            request(request_type::OUT, ZONE, &[(0x1000, 4096)], &[]),
            request(request_type::OUT, 2 * ZONE, &[(0x2000, 4096)], &[]),
            request(request_type::OUT, 8, &[(0x3000, 4096)], &[]),
            request(
                zone_request::ZONE_APPEND,
                ZONE,
                &[(0x4000, 4096)],
                &[(0x8000, 8)],
            ),
            request(request_type::OUT, 2 * ZONE + 8, &[(0x5000, 4096)], &[]),
            // Not at the write pointer: UNALIGNED_WRITE, in its lane.
            request(request_type::OUT, 2 * ZONE + 64, &[(0x5000, 512)], &[]),
            request(request_type::FLUSH, 0, &[], &[]),
            request(request_type::IN, ZONE, &[], &[(0x10000, 8192)]),
            // Across zones 1 and 2: served alone, as an error.
            request(request_type::OUT, 2 * ZONE - 8, &[(0x1000, 8192)], &[]),
            request(
                zone_request::ZONE_APPEND,
                2 * ZONE,
                &[(0x6000, 1024)],
                &[(0x8008, 8)],
            ),
            request(request_type::IN, 2 * ZONE, &[], &[(0x20000, 9216)]),
        ];
        let fill = |f: &Fixture| {
            for (i, addr) in [0x1000u64, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000]
                .into_iter()
                .enumerate()
            {
                f.memory
                    .write_slice(&[i as u8 + 1; 4096], GuestAddress(addr))
                    .unwrap();
            }
        };
        let mut alone = fixture("batch-alone");
        let mut together = fixture("batch-together");
        fill(&alone);
        fill(&together);
        let expected: Vec<Completion> = batch.iter().map(|r| alone.run(r)).collect();
        let got = execute(&mut together.handler, &batch, &together.memory);
        assert_eq!(got, expected);
        assert_eq!(expected[5].status, status::ZONE_UNALIGNED_WP);
        assert_ne!(expected[8].status, status::OK);
        let zones =
            |f: &Fixture| -> Vec<Zone> { f.handler.disk().report(0, 16).unwrap().collect() };
        assert_eq!(zones(&together), zones(&alone));
        for (addr, len) in [(0x8000u64, 16usize), (0x10000, 8192), (0x20000, 9216)] {
            let mut a = vec![0u8; len];
            let mut b = vec![0u8; len];
            alone.memory.read_slice(&mut a, GuestAddress(addr)).unwrap();
            together
                .memory
                .read_slice(&mut b, GuestAddress(addr))
                .unwrap();
            assert_eq!(a, b, "guest memory at {addr:#x}");
        }
        assert_eq!(together.handler.counts(), alone.handler.counts());
    }

    /// Storage whose data path reports each write's sector to a test hook.
    struct HookedStorage {
        data: DataPath,
    }

    impl ZoneStorage for HookedStorage {
        fn read(&mut self, sector: u64, buf: &mut [u8]) -> io::Result<()> {
            self.data.read(sector, buf)
        }
        fn write(&mut self, sector: u64, data: &[u8]) -> io::Result<()> {
            self.data.write(sector, data)
        }
        fn apply_zone_op(&mut self, _plan: &crate::zoned::state::ZoneOpPlan) -> io::Result<()> {
            Ok(())
        }
        fn data_path(&self) -> Option<DataPath> {
            Some(self.data.clone())
        }
        fn flush(&mut self, _zones: &crate::zoned::ZoneSet) -> io::Result<()> {
            Ok(())
        }
    }

    /// Four sequential zones without open or active limits, for the lane tests.
    fn four_open_zones() -> ZonedGeometry {
        ZonedGeometry::new(ZonedGeometry {
            capacity: 4 * ZONE,
            zone_size: ZONE,
            zone_capacity: ZONE,
            conventional_zones: 0,
            max_open: 0,
            max_active: 0,
            max_append_sectors: 256,
            write_granularity: 512,
            logical_block_size: 512,
        })
        .unwrap()
    }

    /// Writes to two zones in one batch overlap: the write to zone 1 waits inside storage until
    /// the write to zone 2 has started, which only happens if they run at the same time.
    #[test]
    fn writes_to_different_zones_run_in_parallel() {
        use std::sync::mpsc;
        use std::time::Duration;
        let geometry = four_open_zones();
        let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        file.set_len(4 * ZONE * SECTOR_SIZE).unwrap();
        let (started, seen) = mpsc::channel::<u64>();
        let seen = Mutex::new(seen);
        let overlapped = std::sync::Arc::new(AtomicBool::new(false));
        let flag = overlapped.clone();
        let hook = move |sector: u64| {
            if sector == ZONE {
                // Zone 1 waits for zone 2's write to begin.
                let got = seen.lock().unwrap().recv_timeout(Duration::from_secs(10));
                flag.store(got == Ok(2 * ZONE), Ordering::SeqCst);
            } else {
                let _ = started.send(sector);
            }
        };
        let storage = HookedStorage {
            data: DataPath::buffered(std::sync::Arc::new(file), 0)
                .with_write_hook(std::sync::Arc::new(hook)),
        };
        let mut handler = ZonedExecutor::new(ZonedDisk::new(
            crate::zoned::ZoneSet::new(geometry),
            storage,
        ));
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // Enough data to be worth two threads on buffered storage.
        let half = (PARALLEL_MIN_BYTES / 2) as u32;
        let batch = [
            request(request_type::OUT, ZONE, &[(0x1000, half)], &[]),
            request(request_type::OUT, 2 * ZONE, &[(0x1000, half)], &[]),
        ];
        let done = execute(&mut handler, &batch, &memory);
        assert_eq!(done, vec![Completion::ok(0); 2]);
        assert!(
            overlapped.load(Ordering::SeqCst),
            "the write to zone 1 finished before the write to zone 2 started"
        );
        let zones: Vec<Zone> = handler.disk().report(0, 4).unwrap().collect();
        assert_eq!(zones[1].wp, ZONE + u64::from(half) / 512);
        assert_eq!(zones[2].wp, 2 * ZONE + u64::from(half) / 512);
    }

    /// A lane whose data does not reach storage fails its request and puts the zone's write
    /// pointer back, on the serving thread and in a parallel run alike.
    #[test]
    fn a_failed_lane_write_leaves_the_write_pointer_where_it_was() {
        let geometry = four_open_zones();
        let temp = vmm_sys_util::tempfile::TempFile::new().unwrap();
        temp.as_file().set_len(4 * ZONE * SECTOR_SIZE).unwrap();
        // Opened read-only: every write fails.
        let file = std::fs::File::open(temp.as_path()).unwrap();
        let storage = HookedStorage {
            data: DataPath::buffered(std::sync::Arc::new(file), 0),
        };
        let mut handler = ZonedExecutor::new(ZonedDisk::new(
            crate::zoned::ZoneSet::new(geometry),
            storage,
        ));
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let failed = Completion::with_status(status::IOERR);
        let small = [
            request(request_type::OUT, ZONE, &[(0x1000, 4096)], &[]),
            request(request_type::OUT, 2 * ZONE, &[(0x1000, 4096)], &[]),
        ];
        assert_eq!(execute(&mut handler, &small, &memory), vec![failed; 2]);
        let half = (PARALLEL_MIN_BYTES / 2) as u32;
        let large = [
            request(request_type::OUT, ZONE, &[(0x1000, half)], &[]),
            request(request_type::OUT, 2 * ZONE, &[(0x1000, half)], &[]),
        ];
        assert_eq!(execute(&mut handler, &large, &memory), vec![failed; 2]);
        let zones: Vec<Zone> = handler.disk().report(0, 4).unwrap().collect();
        assert_eq!(zones[1].wp, ZONE);
        assert_eq!(zones[1].cond, ZoneCondition::Empty);
        assert_eq!(zones[2].wp, 2 * ZONE);
        assert_eq!(zones[2].cond, ZoneCondition::Empty);
    }

    /// Counts the allocations that look like O_DIRECT bounce buffers of at least 32 KiB
    /// (page-aligned): only lane tests over direct storage make them.
    struct CountingAllocator;

    static BOUNCE_ALLOCATIONS: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    // SAFETY: every call is passed on to the system allocator unchanged, so its guarantees are
    // this allocator's; the counting beside it neither allocates nor unwinds.
    unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            if layout.align() == 4096 && layout.size() >= 32 << 10 {
                BOUNCE_ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
            }
            // SAFETY: the caller's contract for `alloc` holds for `System.alloc`.
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            // SAFETY: the caller's contract: `ptr` was allocated by this allocator with `layout`,
            // and everything this allocator hands out comes from `System`.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
            if layout.align() == 4096 && layout.size() >= 32 << 10 {
                BOUNCE_ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
            }
            // SAFETY: as for `alloc`.
            unsafe { std::alloc::System.alloc_zeroed(layout) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: CountingAllocator = CountingAllocator;

    /// Lanes over O_DIRECT storage (parallel lane threads) move data through one bounce buffer
    /// per lane, kept by the handler: after the first batch, no request allocates one. A lane
    /// thread that allocated and freed a large buffer per request made glibc trim its arena
    /// and open /proc/sys/vm/overcommit_memory, which the seccomp filter punished (#16).
    #[test]
    fn direct_lanes_allocate_no_bounce_buffer_per_request() {
        let geometry = four_open_zones();
        let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        file.set_len(4 * ZONE * SECTOR_SIZE).unwrap();
        // A regular file: the arithmetic and buffers of O_DIRECT without its alignment rules.
        let storage = HookedStorage {
            data: DataPath::direct(std::sync::Arc::new(file), 4096),
        };
        let mut handler = ZonedExecutor::new(ZonedDisk::new(
            crate::zoned::ZoneSet::new(geometry),
            storage,
        ));
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        memory
            .write_slice(&[0x5a; 36 << 10], GuestAddress(0x1000))
            .unwrap();
        let len = 36u32 << 10;
        let step = u64::from(len) / SECTOR_SIZE;
        let batch = |round: u64| {
            [
                request(
                    request_type::OUT,
                    ZONE + round * step,
                    &[(0x1000, len)],
                    &[],
                ),
                request(
                    request_type::OUT,
                    2 * ZONE + round * step,
                    &[(0x1000, len)],
                    &[],
                ),
                // Widened to whole blocks: the sector is not on a 4 KiB boundary.
                request(request_type::IN, ZONE + 1, &[], &[(0x20000, len)]),
                request(request_type::IN, 2 * ZONE, &[], &[(0x40000, len)]),
            ]
        };
        let expected = vec![
            Completion::ok(0),
            Completion::ok(0),
            Completion::ok(len),
            Completion::ok(len),
        ];
        assert_eq!(execute(&mut handler, &batch(0), &memory), expected);
        let before = BOUNCE_ALLOCATIONS.load(Ordering::SeqCst);
        for round in 1..20 {
            assert_eq!(execute(&mut handler, &batch(round), &memory), expected);
        }
        let after = BOUNCE_ALLOCATIONS.load(Ordering::SeqCst);
        assert_eq!(after - before, 0, "bounce buffers allocated per request");
        let mut back = vec![0u8; len as usize];
        memory.read_slice(&mut back, GuestAddress(0x40000)).unwrap();
        assert!(back.iter().all(|&b| b == 0x5a));
    }

    /// A read in odd-sized pieces across the write pointer (data, then zeros) and a write from
    /// odd-sized pieces give the same bytes through a batch as served alone.
    #[test]
    fn scattered_buffers_move_the_same_bytes_in_a_batch() {
        let pieces = [(0x1000u64, 700u32), (0x5000, 1348), (0x9000, 2048)];
        let into = [(0x20000u64, 700u32), (0x25000, 1348), (0x29000, 2048)];
        let batch = [
            request(request_type::OUT, ZONE, &pieces[..2], &[]),
            request(request_type::IN, ZONE, &[], &into),
        ];
        let mut alone = fixture("scatter-alone");
        let mut together = fixture("scatter-together");
        for f in [&alone, &together] {
            for (i, &(addr, len)) in pieces.iter().enumerate() {
                let bytes: Vec<u8> = (0..len).map(|b| (b as u8) ^ (i as u8 * 17)).collect();
                f.memory.write_slice(&bytes, GuestAddress(addr)).unwrap();
            }
            for &(addr, len) in &into {
                f.memory
                    .write_slice(&vec![0xee; len as usize], GuestAddress(addr))
                    .unwrap();
            }
        }
        let expected: Vec<Completion> = batch.iter().map(|r| alone.run(r)).collect();
        let got = execute(&mut together.handler, &batch, &together.memory);
        assert_eq!(got, expected);
        assert_eq!(expected, vec![Completion::ok(0), Completion::ok(4096)]);
        for &(addr, len) in &into {
            let mut a = vec![0u8; len as usize];
            let mut b = vec![0u8; len as usize];
            alone.memory.read_slice(&mut a, GuestAddress(addr)).unwrap();
            together
                .memory
                .read_slice(&mut b, GuestAddress(addr))
                .unwrap();
            assert_eq!(a, b, "read buffer at {addr:#x}");
        }
        let mut tail = vec![0u8; 2048];
        together
            .memory
            .read_slice(&mut tail, GuestAddress(0x29000))
            .unwrap();
        assert!(tail.iter().all(|&b| b == 0), "above the write pointer");
    }

    #[test]
    fn a_power_cut_at_the_nth_flush_fails_it_and_everything_after() {
        let mut f = fixture("power-cut");
        f.handler.disk.storage_mut().set_volatile_cache();
        let cuts = Arc::new(AtomicU64::new(0));
        let counted = cuts.clone();
        let trigger = Arc::new(PowerCutTrigger::new(
            Some(2),
            Box::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
        ));
        f.handler.set_power_cut(trigger.clone());
        let write = |sector| request(request_type::OUT, sector, &[(0x1000, 4096)], &[]);
        let flush = request(request_type::FLUSH, 0, &[], &[]);
        assert_eq!(f.run(&write(ZONE)).status, status::OK);
        assert_eq!(f.run(&flush).status, status::OK, "the first flush");
        assert_eq!(f.run(&write(ZONE + 8)).status, status::OK);
        assert!(!trigger.has_cut());
        let batch = [flush.clone(), write(ZONE + 16), flush.clone()];
        let completions = execute(&mut f.handler, &batch, &f.memory);
        assert!(completions.iter().all(|c| c.status == status::IOERR));
        assert!(trigger.has_cut());
        assert_eq!(cuts.load(Ordering::SeqCst), 1, "on_cut runs once");
        assert_eq!(
            f.handler.disk.zones().saved_state(1).1,
            ZONE + 16,
            "nothing after the cut"
        );
        let report = f
            .handler
            .power_cut(PowerCut {
                loss: crate::zoned::image::Loss::All,
                seed: 0,
            })
            .unwrap()
            .unwrap();
        assert_eq!(report.sectors_lost, 8, "the write after the first flush");
        // What the next run finds (a copy: the executor still holds the image's lock).
        let copy = f.path.with_extension("after-cut");
        std::fs::copy(&f.path, &copy).unwrap();
        let reopened = ZonedImage::open(&copy, &Default::default());
        let _ = std::fs::remove_file(&copy);
        assert_eq!(reopened.unwrap().zones().saved_state(1).1, ZONE + 8);
    }

    #[test]
    fn a_power_cut_by_vmm_stops_the_disk_at_once() {
        let mut f = fixture("power-cut-now");
        let trigger = Arc::new(PowerCutTrigger::new(None, Box::new(|| {})));
        f.handler.set_power_cut(trigger.clone());
        let flush = request(request_type::FLUSH, 0, &[], &[]);
        for _ in 0..3 {
            assert_eq!(
                f.run(&flush).status,
                status::OK,
                "no flush count: flushes go on"
            );
        }
        trigger.cut_now();
        let read = request(request_type::IN, 0, &[], &[(0x1000, 512)]);
        assert_eq!(f.run(&read).status, status::IOERR);
    }
}
