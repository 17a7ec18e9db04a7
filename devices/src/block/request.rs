//! Parsing one virtio-blk request out of a descriptor chain, whatever way the driver split it:
//! the 16-byte header is the first 16 device-readable bytes, the status is the last
//! device-writable byte, and everything in between is data, kept as guest segments in chain
//! order. Every address and length comes from the guest and is checked here. The type field is
//! decoded once into [`RequestType`]; [`Request::data_fits_type`] is the one check of which way
//! a type's data may go (whether the device serves the type at all is its executor's business).

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, GuestAddress, GuestMemoryError, Permissions};

use super::guest;
use crate::virtio::GuestMemoryMmap;

use super::{request_type, MAX_REQUEST_DATA_BYTES, QUEUE_SIZE, SECTOR_SIZE};

/// Size of the request header: le32 type, le32 reserved (ioprio), le64 sector.
pub const HEADER_SIZE: usize = 16;
/// Longest chain accepted. A driver without indirect descriptors cannot build a longer one.
pub const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// A run of guest memory, already checked to lie inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// The `type` field of a request header, decoded once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into device-writable buffers.
    In,
    /// Write sectors from device-readable buffers.
    Out,
    /// Make completed writes durable.
    Flush,
    /// Return the serial number.
    GetId,
    /// Write at a zone's write pointer; the device says where the data landed.
    ZoneAppend,
    /// Describe the zones from the one holding the sector on.
    ZoneReport,
    /// Explicitly open the zone.
    ZoneOpen,
    /// Close the zone.
    ZoneClose,
    /// Make the zone full.
    ZoneFinish,
    /// Empty the zone.
    ZoneReset,
    /// Empty every sequential zone.
    ZoneResetAll,
    /// Any other type: answered with UNSUPP.
    Unsupported(u32),
}

impl RequestType {
    /// Decodes the header's `type` field (`request_type::*`).
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            request_type::IN => RequestType::In,
            request_type::OUT => RequestType::Out,
            request_type::FLUSH => RequestType::Flush,
            request_type::GET_ID => RequestType::GetId,
            request_type::ZONE_APPEND => RequestType::ZoneAppend,
            request_type::ZONE_REPORT => RequestType::ZoneReport,
            request_type::ZONE_OPEN => RequestType::ZoneOpen,
            request_type::ZONE_CLOSE => RequestType::ZoneClose,
            request_type::ZONE_FINISH => RequestType::ZoneFinish,
            request_type::ZONE_RESET => RequestType::ZoneReset,
            request_type::ZONE_RESET_ALL => RequestType::ZoneResetAll,
            other => RequestType::Unsupported(other),
        }
    }

    /// The type of the zoned extension (VIRTIO_BLK_F_ZONED), which only a zoned disk serves.
    pub fn is_zoned(self) -> bool {
        matches!(
            self,
            RequestType::ZoneAppend
                | RequestType::ZoneReport
                | RequestType::ZoneOpen
                | RequestType::ZoneClose
                | RequestType::ZoneFinish
                | RequestType::ZoneReset
                | RequestType::ZoneResetAll
        )
    }
}

/// Bytes at the start of a ZONE_APPEND's device-writable data that receive the sector where
/// the data landed (le64).
pub const APPEND_SECTOR_BYTES: u64 = 8;

/// One well-formed request: header fields, data segments and where the status goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The `type` field of the header.
    pub kind: RequestType,
    /// The `sector` field of the header.
    pub sector: u64,
    /// Device-readable bytes after the header, in chain order.
    pub readable: Vec<Segment>,
    /// Device-writable bytes before the status byte, in chain order.
    pub writable: Vec<Segment>,
    /// The status byte: the last device-writable byte of the chain.
    pub status: GuestAddress,
}

/// Why a chain is not a request.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// No device-writable byte in the chain (or it lies outside guest memory).
    #[error("the chain has no writable status byte")]
    NoStatus,
    /// More descriptors than any valid request needs.
    #[error("the chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// A descriptor points outside guest memory.
    #[error("a descriptor points outside guest memory")]
    OutsideMemory,
    /// The spec puts all device-readable descriptors before the device-writable ones.
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    /// Fewer than 16 device-readable bytes.
    #[error("the request header is incomplete")]
    ShortHeader,
    /// The data segments add up to more than `MAX_REQUEST_DATA_BYTES`.
    #[error("the request carries more than {MAX_REQUEST_DATA_BYTES} data bytes")]
    TooLarge,
    /// The header could not be read from guest memory.
    #[error("the request header cannot be read")]
    HeaderUnreadable(#[source] GuestMemoryError),
}

/// A chain that is not a request, and where to report it if anywhere.
#[derive(Debug)]
pub struct Malformed {
    pub error: ParseError,
    /// Where to write IOERR; `None` when the chain has no usable status byte and can only be
    /// returned with a used length of 0.
    pub status: Option<GuestAddress>,
}

impl Request {
    /// Parses the descriptors of one chain (as yielded by virtio-queue's `DescriptorChain`).
    ///
    /// One pass over the chain: the checks of each descriptor, the header bytes and the data
    /// segments are taken as the descriptors go by, and the first problem found is reported
    /// once the whole chain has been seen (the status byte, wherever it is, is needed first).
    pub fn parse(
        memory: &GuestMemoryMmap,
        descriptors: impl IntoIterator<Item = Descriptor>,
    ) -> Result<Request, Malformed> {
        let mut parts = Parts::default();
        let mut count = 0;
        let mut too_many = false;
        // The status location is needed even for chains rejected as too long, so the whole
        // chain is walked (virtio-queue bounds the walk), but only the first part is looked at.
        let mut last_writable = None;
        for descriptor in descriptors {
            if descriptor.is_write_only() && descriptor.len() > 0 {
                last_writable = Some(descriptor);
            }
            if count == MAX_DESCRIPTORS {
                too_many = true;
            } else {
                count += 1;
                parts.take(memory, &descriptor);
            }
        }

        let status = last_writable
            .and_then(|d| d.addr().checked_add(u64::from(d.len()) - 1))
            .filter(|&addr| guest::in_memory(memory, addr, 1, Permissions::Write))
            .ok_or(Malformed {
                error: ParseError::NoStatus,
                status: None,
            })?;
        let malformed = |error| Malformed {
            error,
            status: Some(status),
        };
        if too_many {
            return Err(malformed(ParseError::TooManyDescriptors));
        }
        parts.finish(status).map_err(malformed)
    }
    /// Disk byte offset of a transfer of `len` bytes at `sector`, if the transfer is whole
    /// sectors and ends inside a disk of `capacity_bytes` (no arithmetic overflows).
    pub fn data_offset(&self, len: u64, capacity_bytes: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let offset = self.sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        (end <= capacity_bytes).then_some(offset)
    }

    /// Whether the data goes the way the type needs, the one such check for every type (a
    /// request that fails it gets IOERR): IN, GET_ID and ZONE_REPORT carry device-writable data
    /// only; OUT device-readable data only; FLUSH and the zone operations none; ZONE_APPEND
    /// device-readable data and at least `APPEND_SECTOR_BYTES` device-writable ones for the
    /// landed sector. Unsupported types are not looked at (they get UNSUPP whatever they carry).
    pub fn data_fits_type(&self) -> bool {
        let (reads, writes) = (!self.readable.is_empty(), !self.writable.is_empty());
        match self.kind {
            RequestType::In | RequestType::GetId | RequestType::ZoneReport => !reads,
            RequestType::Out => !writes,
            RequestType::Flush
            | RequestType::ZoneOpen
            | RequestType::ZoneClose
            | RequestType::ZoneFinish
            | RequestType::ZoneReset
            | RequestType::ZoneResetAll => !reads && !writes,
            RequestType::ZoneAppend => self.writable_len() >= APPEND_SECTOR_BYTES,
            RequestType::Unsupported(_) => true,
        }
    }

    /// Total bytes of the device-readable data segments.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Total bytes of the device-writable data segments (the status byte excluded).
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.len)).sum()
    }
}

fn segment_of(descriptor: &Descriptor) -> Segment {
    Segment {
        addr: descriptor.addr(),
        len: descriptor.len(),
    }
}

/// A request being collected from its descriptors, in chain order.
#[derive(Default)]
struct Parts {
    header: [u8; HEADER_SIZE],
    /// Header bytes seen so far.
    filled: usize,
    /// The first descriptor problem seen (it wins over any header problem).
    error: Option<ParseError>,
    /// The first header read that failed.
    header_error: Option<GuestMemoryError>,
    seen_writable: bool,
    /// Device-readable bytes after the header.
    readable: Vec<Segment>,
    /// Device-writable segments before the latest non-empty writable descriptor.
    writable: Vec<Segment>,
    /// The latest non-empty writable descriptor: the last one holds the status byte, so it is
    /// only known to be data once another one follows.
    held: Option<Segment>,
    data_bytes: u64,
}

impl Parts {
    /// Checks one descriptor and files its bytes: header, readable or writable data.
    fn take(&mut self, memory: &GuestMemoryMmap, descriptor: &Descriptor) {
        if self.error.is_some() {
            return;
        }
        let writable = descriptor.is_write_only();
        if self.seen_writable && !writable {
            self.error = Some(ParseError::ReadableAfterWritable);
            return;
        }
        self.seen_writable |= writable;
        let access = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let Ok(len) = usize::try_from(descriptor.len()) else {
            self.error = Some(ParseError::OutsideMemory);
            return;
        };
        if len == 0 {
            return;
        }
        if !guest::in_memory(memory, descriptor.addr(), len, access) {
            self.error = Some(ParseError::OutsideMemory);
            return;
        }
        let segment = segment_of(descriptor);
        if writable {
            if let Some(data) = self.held.replace(segment) {
                self.add_data(data, true);
            }
            return;
        }
        // The header is the first HEADER_SIZE readable bytes; a descriptor may hold part of
        // it and data after it.
        let take = (HEADER_SIZE - self.filled).min(len);
        if take > 0 {
            let into = &mut self.header[self.filled..self.filled + take];
            match guest::read(memory, segment.addr, into) {
                Ok(()) => self.filled += take,
                Err(error) => {
                    self.header_error.get_or_insert(error);
                    // Nothing after a header that cannot be read is looked at.
                    self.filled = HEADER_SIZE;
                }
            }
        }
        if len > take {
            // `take` <= 16 and the whole descriptor was checked to be in guest memory.
            self.add_data(
                Segment {
                    addr: segment.addr.unchecked_add(take as u64),
                    len: (len - take) as u32,
                },
                false,
            );
        }
    }

    fn add_data(&mut self, segment: Segment, writable: bool) {
        self.data_bytes += u64::from(segment.len);
        if writable {
            self.writable.push(segment);
        } else {
            self.readable.push(segment);
        }
    }

    /// The request answered at `status`, or the first problem: a descriptor's, then the
    /// header's, then the size.
    fn finish(mut self, status: GuestAddress) -> Result<Request, ParseError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if let Some(error) = self.header_error {
            return Err(ParseError::HeaderUnreadable(error));
        }
        if self.filled < HEADER_SIZE {
            return Err(ParseError::ShortHeader);
        }
        // The status byte is carved off the last non-empty writable descriptor.
        if let Some(last) = self.held.filter(|last| last.len > 1) {
            self.add_data(
                Segment {
                    addr: last.addr,
                    len: last.len - 1,
                },
                true,
            );
        }
        if self.data_bytes > MAX_REQUEST_DATA_BYTES {
            return Err(ParseError::TooLarge);
        }
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = self.header;
        Ok(Request {
            kind: RequestType::from_raw(u32::from_le_bytes([t0, t1, t2, t3])),
            sector: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            readable: self.readable,
            writable: self.writable,
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;

    use vm_memory::{Bytes, GuestMemory};

    use super::*;

    const MEMORY_SIZE: u64 = 0x10_0000;

    fn memory(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn readable(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, 0, 0)
    }

    fn writable(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0)
    }

    fn header(memory: &GuestMemoryMmap, addr: u64, request_type: u32, sector: u64) {
        let mut bytes = [0u8; HEADER_SIZE];
        bytes[..4].copy_from_slice(&request_type.to_le_bytes());
        bytes[8..].copy_from_slice(&sector.to_le_bytes());
        memory.write_slice(&bytes, GuestAddress(addr)).unwrap();
    }

    fn segment(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    fn error_of(result: Result<Request, Malformed>) -> (ParseError, Option<GuestAddress>) {
        let malformed = result.unwrap_err();
        (malformed.error, malformed.status)
    }

    #[test]
    fn linux_layout_header_data_status() {
        let m = memory(MEMORY_SIZE);
        header(&m, 0x1000, 1, 7);
        let request = Request::parse(
            &m,
            [
                readable(0x1000, 16),
                readable(0x2000, 4096),
                writable(0x3000, 1),
            ],
        )
        .unwrap();
        assert_eq!(request.kind, RequestType::Out);
        assert_eq!(request.sector, 7);
        assert_eq!(request.readable, vec![segment(0x2000, 4096)]);
        assert!(request.writable.is_empty());
        assert_eq!(request.status, GuestAddress(0x3000));
    }

    #[test]
    fn header_data_and_status_may_share_or_split_descriptors() {
        let m = memory(MEMORY_SIZE);
        // Header split 10 + 6 bytes, the second descriptor carrying data after it; data and
        // status share the last writable descriptor.
        let mut bytes = [0u8; HEADER_SIZE];
        bytes[..4].copy_from_slice(&0u32.to_le_bytes());
        bytes[8..].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        m.write_slice(&bytes[..10], GuestAddress(0x1000)).unwrap();
        m.write_slice(&bytes[10..], GuestAddress(0x2000)).unwrap();
        let request = Request::parse(
            &m,
            [
                readable(0x1000, 10),
                readable(0x2000, 6 + 100),
                writable(0x3000, 0),
                writable(0x4000, 512),
                writable(0x5000, 513),
                writable(0x6000, 0),
            ],
        )
        .unwrap();
        assert_eq!(request.sector, 0x1122_3344_5566_7788);
        assert_eq!(request.readable, vec![segment(0x2006, 100)]);
        assert_eq!(
            request.writable,
            vec![segment(0x4000, 512), segment(0x5000, 512)]
        );
        assert_eq!(request.status, GuestAddress(0x5000 + 512));
        assert_eq!(request.readable_len(), 100);
        assert_eq!(request.writable_len(), 1024);
    }

    #[test]
    fn a_chain_without_a_writable_byte_cannot_be_answered() {
        let m = memory(MEMORY_SIZE);
        header(&m, 0x1000, 0, 0);
        let (error, status) = error_of(Request::parse(&m, [readable(0x1000, 17)]));
        assert!(matches!(error, ParseError::NoStatus));
        assert_eq!(status, None);
        let (error, _) = error_of(Request::parse(
            &m,
            [readable(0x1000, 16), writable(0x2000, 0)],
        ));
        assert!(matches!(error, ParseError::NoStatus));
        let (error, _) = error_of(Request::parse(&m, []));
        assert!(matches!(error, ParseError::NoStatus));
    }

    #[test]
    fn a_status_byte_outside_memory_cannot_be_answered() {
        let m = memory(MEMORY_SIZE);
        header(&m, 0x1000, 0, 0);
        let (error, status) = error_of(Request::parse(
            &m,
            [readable(0x1000, 16), writable(MEMORY_SIZE, 1)],
        ));
        assert!(matches!(error, ParseError::NoStatus));
        assert_eq!(status, None);
        let (error, _) = error_of(Request::parse(
            &m,
            [readable(0x1000, 16), writable(u64::MAX, 1)],
        ));
        assert!(matches!(error, ParseError::NoStatus));
        // An address whose end overflows.
        let (error, _) = error_of(Request::parse(
            &m,
            [readable(0x1000, 16), writable(u64::MAX - 2, 8)],
        ));
        assert!(matches!(error, ParseError::NoStatus));
    }

    #[test]
    fn malformed_chains_with_a_status_byte_report_where_it_is() {
        let m = memory(MEMORY_SIZE);
        header(&m, 0x1000, 0, 0);
        let status = Some(GuestAddress(0x3000));
        type Expect = fn(&ParseError) -> bool;
        let cases: Vec<(Vec<Descriptor>, Expect)> = vec![
            (vec![readable(0x1000, 8), writable(0x3000, 1)], |e| {
                matches!(e, ParseError::ShortHeader)
            }),
            (vec![writable(0x3000, 1)], |e| {
                matches!(e, ParseError::ShortHeader)
            }),
            (
                vec![
                    readable(0x1000, 16),
                    readable(MEMORY_SIZE - 8, 512),
                    writable(0x3000, 1),
                ],
                |e| matches!(e, ParseError::OutsideMemory),
            ),
            (
                vec![
                    readable(0x1000, 16),
                    writable(u64::MAX - 8, 512),
                    writable(0x3000, 1),
                ],
                |e| matches!(e, ParseError::OutsideMemory),
            ),
            (
                vec![
                    writable(0x2000, 16),
                    readable(0x1000, 16),
                    writable(0x3000, 1),
                ],
                |e| matches!(e, ParseError::ReadableAfterWritable),
            ),
        ];
        for (descriptors, expected) in cases {
            let (error, at) = error_of(Request::parse(&m, descriptors.clone()));
            assert!(expected(&error), "{descriptors:?} gave {error:?}");
            assert_eq!(at, status);
        }
    }

    /// Random chains over memory with holes at its end: the one-pass parser agrees with the
    /// reference in every request and every error.
    #[test]
    fn one_pass_parsing_agrees_with_the_reference_parser() {
        use crate::block::Random;
        // Large enough for requests over MAX_REQUEST_DATA_BYTES (mapped lazily).
        let size = MAX_REQUEST_DATA_BYTES + 0x10_0000;
        let m = memory(size);
        header(&m, 0x1000, 1, 7);
        let mut random = Random(0x2545_f491_4f6c_dd1d);
        let addresses = [0x1000, 0x1008, 0x2000, size - 8, size, u64::MAX - 4];
        let half = u32::try_from(MAX_REQUEST_DATA_BYTES / 2).unwrap();
        let lengths = [0, 1, 2, 8, 15, 16, 17, 512, 4096, half, half + 1];
        let counts = [0, 1, 2, 3, 4, 6, 300];
        // How often each outcome came up (Ok, then each error), so the chains cover them all.
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..40_000 {
            let count = random.pick(&counts);
            let chain: Vec<Descriptor> = (0..count)
                .map(|_| {
                    let (addr, len) = (random.pick(&addresses), random.pick(&lengths));
                    if random.next().is_multiple_of(2) {
                        readable(addr, len)
                    } else {
                        writable(addr, len)
                    }
                })
                .collect();
            let got = Request::parse(&m, chain.clone());
            let want = reference_parse(&m, chain.clone());
            let outcome = match &got {
                Ok(_) => "Ok".to_string(),
                Err(malformed) => format!("{:?}", malformed.error),
            };
            *seen.entry(outcome).or_insert(0) += 1;
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{chain:?}"),
                (Err(got), Err(want)) => {
                    assert_eq!(format!("{:?}", got.error), format!("{:?}", want.error));
                    assert_eq!(got.status, want.status, "{chain:?}");
                }
                (got, want) => panic!("{chain:?}: {got:?} against {want:?}"),
            }
        }
        let rare = ["Ok", "NoStatus", "TooManyDescriptors", "OutsideMemory"]
            .into_iter()
            .chain(["ReadableAfterWritable", "ShortHeader", "TooLarge"]);
        for outcome in rare {
            assert!(seen.get(outcome).is_some_and(|&n| n > 10), "{seen:?}");
        }
    }

    /// The parser as it was before it became one pass (kept as the reference).
    fn reference_parse<M: GuestMemory + ?Sized>(
        memory: &M,
        descriptors: impl IntoIterator<Item = Descriptor>,
    ) -> Result<Request, Malformed> {
        let mut chain = Vec::new();
        let mut too_many = false;
        // The status location is needed even for chains rejected as too long, so the whole
        // chain is walked (virtio-queue bounds the walk), but only the first part is kept.
        let mut last_writable = None;
        for descriptor in descriptors {
            if descriptor.is_write_only() && descriptor.len() > 0 {
                last_writable = Some(descriptor);
            }
            if chain.len() == MAX_DESCRIPTORS {
                too_many = true;
            } else {
                chain.push(descriptor);
            }
        }

        let status = last_writable
            .and_then(|d| d.addr().checked_add(u64::from(d.len()) - 1))
            .filter(|&addr| memory.check_range(addr, 1, Permissions::Write))
            .ok_or(Malformed {
                error: ParseError::NoStatus,
                status: None,
            })?;
        let malformed = |error| Malformed {
            error,
            status: Some(status),
        };
        if too_many {
            return Err(malformed(ParseError::TooManyDescriptors));
        }

        let mut seen_writable = false;
        for descriptor in &chain {
            let writable = descriptor.is_write_only();
            if seen_writable && !writable {
                return Err(malformed(ParseError::ReadableAfterWritable));
            }
            seen_writable |= writable;
            let access = if writable {
                Permissions::Write
            } else {
                Permissions::Read
            };
            let Ok(len) = usize::try_from(descriptor.len()) else {
                return Err(malformed(ParseError::OutsideMemory));
            };
            if len > 0 && !memory.check_range(descriptor.addr(), len, access) {
                return Err(malformed(ParseError::OutsideMemory));
            }
        }

        // Carve the status byte off the last non-empty writable descriptor.
        let mut writable: Vec<Segment> = chain
            .iter()
            .filter(|d| d.is_write_only())
            .map(segment_of)
            .collect();
        if let Some(last) = writable.iter_mut().rev().find(|s| s.len > 0) {
            last.len -= 1;
        }
        writable.retain(|s| s.len > 0);

        let readable: Vec<Segment> = chain
            .iter()
            .filter(|d| !d.is_write_only())
            .map(segment_of)
            .collect();
        let (header, readable) = reference_split_header(memory, &readable).map_err(malformed)?;

        let data_bytes = readable
            .iter()
            .chain(writable.iter())
            .map(|s| u64::from(s.len))
            .sum::<u64>();
        if data_bytes > MAX_REQUEST_DATA_BYTES {
            return Err(malformed(ParseError::TooLarge));
        }

        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
        Ok(Request {
            kind: RequestType::from_raw(u32::from_le_bytes([t0, t1, t2, t3])),
            sector: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            readable,
            writable,
            status,
        })
    }

    /// Reads the header from the first `HEADER_SIZE` bytes of `readable` and returns it with the
    /// segments that remain after it.
    fn reference_split_header<M: GuestMemory + ?Sized>(
        memory: &M,
        readable: &[Segment],
    ) -> Result<([u8; HEADER_SIZE], Vec<Segment>), ParseError> {
        let mut header = [0u8; HEADER_SIZE];
        let mut filled = 0;
        let mut rest = Vec::new();
        for segment in readable {
            let wanted = HEADER_SIZE - filled;
            // A segment longer than the header remainder is split; u32 -> usize is lossless here.
            let take = wanted.min(segment.len as usize);
            if take > 0 {
                memory
                    .read_slice(&mut header[filled..filled + take], segment.addr)
                    .map_err(ParseError::HeaderUnreadable)?;
                filled += take;
            }
            let left = segment.len as usize - take;
            if left > 0 {
                // `take` <= 16 and the whole segment was checked to be in guest memory.
                rest.push(Segment {
                    addr: segment.addr.unchecked_add(take as u64),
                    len: left as u32,
                });
            }
        }
        if filled < HEADER_SIZE {
            return Err(ParseError::ShortHeader);
        }
        Ok((header, rest))
    }

    #[test]
    fn absurd_chains_are_refused() {
        let m = memory(MEMORY_SIZE);
        header(&m, 0x1000, 0, 0);
        let mut long = vec![readable(0x1000, 16)];
        long.extend((0..MAX_DESCRIPTORS).map(|_| writable(0x2000, 512)));
        long.push(writable(0x3000, 1));
        let (error, status) = error_of(Request::parse(&m, long));
        assert!(matches!(error, ParseError::TooManyDescriptors));
        assert_eq!(status, Some(GuestAddress(0x3000)));

        let big = memory(MAX_REQUEST_DATA_BYTES + 0x10_0000);
        header(&big, 0x1000, 0, 0);
        let half = u32::try_from(MAX_REQUEST_DATA_BYTES / 2).unwrap();
        let (error, _) = error_of(Request::parse(
            &big,
            [
                readable(0x1000, 16),
                writable(0x10_0000, half),
                writable(0x10_0000, half),
                writable(0x2000, 2),
            ],
        ));
        assert!(matches!(error, ParseError::TooLarge));
    }
}
