//! virtio-blk zoned wire formats as pure functions: the spec's numbers, the zoned fields of the
//! config space, and the ZONE_REPORT reply. All fields little-endian.

use super::geometry::ZonedGeometry;
use super::state::{Zone, ZoneError, ZoneOp, ZoneOpKind};

use virtio_bindings::virtio_blk;

use crate::block::RequestType;

/// Feature bit VIRTIO_BLK_F_ZONED.
pub const VIRTIO_BLK_F_ZONED: u32 = virtio_blk::VIRTIO_BLK_F_ZONED;
/// Feature bit VIRTIO_BLK_F_TOPOLOGY (physical block size and I/O sizes in the config).
pub const VIRTIO_BLK_F_TOPOLOGY: u32 = virtio_blk::VIRTIO_BLK_F_TOPOLOGY;

/// Request types of the zoned extension (defined with the others in `block::request_type`).
pub mod request {
    pub use crate::block::request_type::{
        ZONE_APPEND, ZONE_CLOSE, ZONE_FINISH, ZONE_OPEN, ZONE_REPORT, ZONE_RESET, ZONE_RESET_ALL,
    };
}

/// virtio-blk status codes: the plain ones from the block device, plus the zoned ones.
pub mod status {
    use virtio_bindings::virtio_blk;

    pub use crate::block::request_status::{IOERR, OK, UNSUPP};
    pub const ZONE_INVALID_CMD: u8 = virtio_blk::VIRTIO_BLK_S_ZONE_INVALID_CMD as u8;
    pub const ZONE_UNALIGNED_WP: u8 = virtio_blk::VIRTIO_BLK_S_ZONE_UNALIGNED_WP as u8;
    pub const ZONE_OPEN_RESOURCE: u8 = virtio_blk::VIRTIO_BLK_S_ZONE_OPEN_RESOURCE as u8;
    pub const ZONE_ACTIVE_RESOURCE: u8 = virtio_blk::VIRTIO_BLK_S_ZONE_ACTIVE_RESOURCE as u8;
}

/// The status byte for a request's outcome.
pub fn status_of<T>(result: &Result<T, ZoneError>) -> u8 {
    match result {
        Ok(_) => status::OK,
        Err(e) => e.status(),
    }
}

/// Size of struct virtio_blk_config including the zoned fields.
pub use crate::block::device::CONFIG_SIZE;
/// Offset of blk_size (le32, bytes) inside struct virtio_blk_config.
pub const CONFIG_BLK_SIZE: usize = crate::block::device::config_offset::BLK_SIZE;
/// Offsets of the zoned fields inside struct virtio_blk_config.
pub const CONFIG_ZONE_SECTORS: usize = 72;
pub const CONFIG_MAX_OPEN_ZONES: usize = 76;
pub const CONFIG_MAX_ACTIVE_ZONES: usize = 80;
pub const CONFIG_MAX_APPEND_SECTORS: usize = 84;
pub const CONFIG_WRITE_GRANULARITY: usize = 88;
pub const CONFIG_MODEL: usize = 92;
/// Zoned models.
pub const MODEL_NONE: u8 = 0;
pub const MODEL_HOST_MANAGED: u8 = 1;
pub const MODEL_HOST_AWARE: u8 = 2;

/// Size of the ZONE_REPORT header (le64 nr_zones, 56 reserved bytes).
pub const REPORT_HEADER_SIZE: usize = 64;
/// Size of one zone descriptor.
pub const REPORT_DESCRIPTOR_SIZE: usize = 64;

/// The zone management operation of a request type, if it is one.
pub fn zone_op_of_request(kind: RequestType) -> Option<ZoneOpKind> {
    Some(match kind {
        RequestType::ZoneOpen => ZoneOpKind::Single(ZoneOp::Open),
        RequestType::ZoneClose => ZoneOpKind::Single(ZoneOp::Close),
        RequestType::ZoneFinish => ZoneOpKind::Single(ZoneOp::Finish),
        RequestType::ZoneReset => ZoneOpKind::Single(ZoneOp::Reset),
        RequestType::ZoneResetAll => ZoneOpKind::ResetAll,
        _ => return None,
    })
}

fn put_u32(buf: &mut [u8], offset: usize, value: u32) {
    buf[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(buf: &mut [u8], offset: usize, value: u64) {
    buf[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

/// Fills blk_size (the logical block size; the plain device offers VIRTIO_BLK_F_BLK_SIZE), the
/// topology fields (VIRTIO_BLK_F_TOPOLOGY: `physical_block_size`, a power-of-two multiple of
/// the logical block size, also the minimum I/O size) and the zoned fields (bytes 72..96) of a
/// virtio_blk_config image for a host-managed disk. The capacity field (offset 0) is the
/// device's business: it is `geometry.capacity`.
pub fn fill_zoned_config(
    geometry: &ZonedGeometry,
    physical_block_size: u32,
    config: &mut [u8; CONFIG_SIZE],
) {
    crate::block::device::fill_block_sizes(
        config,
        geometry.logical_block_size,
        physical_block_size,
    );
    // A validated geometry has zone_size <= u32::MAX.
    let zone_sectors = u32::try_from(geometry.zone_size).unwrap_or(u32::MAX);
    put_u32(config, CONFIG_ZONE_SECTORS, zone_sectors);
    put_u32(config, CONFIG_MAX_OPEN_ZONES, geometry.max_open);
    put_u32(config, CONFIG_MAX_ACTIVE_ZONES, geometry.max_active);
    put_u32(
        config,
        CONFIG_MAX_APPEND_SECTORS,
        geometry.max_append_sectors,
    );
    put_u32(config, CONFIG_WRITE_GRANULARITY, geometry.write_granularity);
    config[CONFIG_MODEL] = MODEL_HOST_MANAGED;
    config[CONFIG_MODEL + 1..CONFIG_SIZE].fill(0);
}

/// How many descriptors fit a reply buffer of `len` bytes (0 if not even the header fits).
pub fn report_capacity(len: usize) -> usize {
    len.saturating_sub(REPORT_HEADER_SIZE) / REPORT_DESCRIPTOR_SIZE
}

/// Encodes one zone descriptor into 64 bytes: z_cap @0, z_start @8, z_wp @16, z_type @24,
/// z_state @25, the rest zero.
pub fn encode_zone_descriptor(zone: &Zone, out: &mut [u8; REPORT_DESCRIPTOR_SIZE]) {
    out.fill(0);
    put_u64(out, 0, zone.capacity);
    put_u64(out, 8, zone.start);
    put_u64(out, 16, zone.wp);
    out[24] = zone.zone_type as u8;
    out[25] = zone.cond as u8;
}

/// Writes a ZONE_REPORT reply into `buf`: the header, then as many descriptors as fit.
/// nr_zones counts only descriptors fully written. Returns (nr_zones, bytes written), or None
/// when `buf` is shorter than the header (the request then fails with IOERR). Bytes of `buf`
/// past the written length are left untouched.
pub fn encode_zone_report(
    zones: impl IntoIterator<Item = Zone>,
    buf: &mut [u8],
) -> Option<(u64, usize)> {
    if buf.len() < REPORT_HEADER_SIZE {
        return None;
    }
    let (header, rest) = buf.split_at_mut(REPORT_HEADER_SIZE);
    let mut nr = 0u64;
    let mut written = REPORT_HEADER_SIZE;
    for (zone, chunk) in zones
        .into_iter()
        .zip(rest.chunks_exact_mut(REPORT_DESCRIPTOR_SIZE))
    {
        let out: &mut [u8; REPORT_DESCRIPTOR_SIZE] = match chunk.try_into() {
            Ok(out) => out,
            Err(_) => break,
        };
        encode_zone_descriptor(&zone, out);
        nr += 1;
        written += REPORT_DESCRIPTOR_SIZE;
    }
    header.fill(0);
    put_u64(header, 0, nr);
    Some((nr, written))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoned::state::{ZoneCondition, ZoneSet, ZoneType};

    fn get_u32(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn get_u64(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    fn geometry() -> ZonedGeometry {
        ZonedGeometry::new(ZonedGeometry {
            capacity: 5 * 2048 + 1024,
            zone_size: 2048,
            zone_capacity: 1536,
            conventional_zones: 1,
            max_open: 3,
            max_active: 4,
            max_append_sectors: 256,
            write_granularity: 4096,
            logical_block_size: 512,
        })
        .unwrap()
    }

    #[test]
    fn config_fields() {
        let mut config = [0xAAu8; CONFIG_SIZE];
        fill_zoned_config(&geometry(), 4096, &mut config);
        assert_eq!(get_u32(&config, 20), 512);
        // 4 KiB physical blocks of 512-byte logical ones: 2^3, and the minimum I/O is one.
        assert_eq!(config[24], 3);
        assert_eq!(config[25], 0);
        assert_eq!(u16::from_le_bytes([config[26], config[27]]), 8);
        assert_eq!(get_u32(&config, 28), 0);
        assert_eq!(get_u32(&config, 72), 2048);
        assert_eq!(get_u32(&config, 76), 3);
        assert_eq!(get_u32(&config, 80), 4);
        assert_eq!(get_u32(&config, 84), 256);
        assert_eq!(get_u32(&config, 88), 4096);
        assert_eq!(config[92], 1);
        assert_eq!(&config[93..96], &[0, 0, 0]);
        assert_eq!(
            config[71], 0xAA,
            "fields before the zoned ones are untouched"
        );
        // A 4Kn disk's physical block is its logical one.
        let g = ZonedGeometry {
            write_granularity: 4096,
            logical_block_size: 4096,
            ..geometry()
        };
        fill_zoned_config(&g, 4096, &mut config);
        assert_eq!(get_u32(&config, 20), 4096);
        assert_eq!(config[24], 0);
        assert_eq!(u16::from_le_bytes([config[26], config[27]]), 1);
    }

    #[test]
    fn request_types() {
        assert_eq!(
            zone_op_of_request(RequestType::from_raw(18)),
            Some(ZoneOpKind::Single(ZoneOp::Open))
        );
        assert_eq!(
            zone_op_of_request(RequestType::from_raw(26)),
            Some(ZoneOpKind::ResetAll)
        );
        assert_eq!(zone_op_of_request(RequestType::from_raw(15)), None);
        assert_eq!(zone_op_of_request(RequestType::from_raw(16)), None);
        assert_eq!(status_of(&Ok::<u64, ZoneError>(5)), 0);
        assert_eq!(status_of::<()>(&Err(ZoneError::ActiveResource)), 6);
    }

    #[test]
    fn report_in_small_and_odd_buffers() {
        let mut zones = ZoneSet::new(geometry());
        let plan = zones.prepare_write(2048, 16).unwrap();
        zones.commit_write(plan).unwrap();
        let all: Vec<Zone> = zones.report(0, usize::MAX).unwrap().collect();
        assert_eq!(all.len(), 6);
        for len in [
            0usize,
            1,
            63,
            64,
            65,
            127,
            128,
            129,
            200,
            4096,
            64 * 7,
            64 * 7 + 5,
            64 * 9,
        ] {
            let mut buf = vec![0xEEu8; len];
            let got = encode_zone_report(zones.report(0, report_capacity(len)).unwrap(), &mut buf);
            if len < 64 {
                assert_eq!(got, None);
                assert!(buf.iter().all(|&b| b == 0xEE));
                continue;
            }
            let (nr, written) = got.unwrap();
            let expect = report_capacity(len).min(6);
            assert_eq!(nr as usize, expect, "len {len}");
            assert_eq!(written, 64 + 64 * expect);
            assert_eq!(get_u64(&buf, 0), nr);
            assert!(buf[8..64].iter().all(|&b| b == 0));
            assert!(buf[written..].iter().all(|&b| b == 0xEE));
            for (i, zone) in all.iter().take(expect).enumerate() {
                let d = &buf[64 + 64 * i..128 + 64 * i];
                assert_eq!(get_u64(d, 0), zone.capacity);
                assert_eq!(get_u64(d, 8), zone.start);
                assert_eq!(get_u64(d, 16), zone.wp);
                assert_eq!(d[24], zone.zone_type as u8);
                assert_eq!(d[25], zone.cond as u8);
                assert!(d[26..].iter().all(|&b| b == 0));
            }
            // An iterator longer than the buffer never inflates nr_zones.
            let mut buf = vec![0u8; len];
            let (nr2, _) =
                encode_zone_report(all.iter().copied().cycle().take(100), &mut buf).unwrap();
            assert_eq!(nr2 as usize, report_capacity(len).min(100));
        }
        // Spot-check the descriptors of a conventional, an open and a short last zone.
        let mut buf = vec![0u8; 64 * 7];
        encode_zone_report(zones.report(0, 6).unwrap(), &mut buf).unwrap();
        let d = |i: usize| &buf[64 + 64 * i..128 + 64 * i];
        assert_eq!((d(0)[24], d(0)[25], get_u64(d(0), 16)), (1, 0, 2048));
        assert_eq!(
            (d(1)[24], d(1)[25], get_u64(d(1), 16), get_u64(d(1), 0)),
            (2, 2, 2064, 1536)
        );
        assert_eq!((get_u64(d(5), 8), get_u64(d(5), 0)), (10240, 1024));
        assert_eq!(ZoneType::SequentialWriteRequired as u8, 2);
        assert_eq!(ZoneCondition::Full as u8, 14);
    }
}
