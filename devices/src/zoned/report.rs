//! ZONE_REPORT: the reply (a header and one descriptor per zone, `wire::encode_zone_report`)
//! built from the zone state and copied into the guest's device-writable buffers.

use super::disk::{ZoneStorage, ZonedDisk};
use super::wire::status;
use crate::block::guest::bytes_to_guest;
use crate::block::{Completion, Request};
use crate::virtio::GuestMemoryMmap;

/// Answers a ZONE_REPORT whose data direction was checked: as many zones from the one holding
/// the request's sector as fit the buffer. The reply is built at the size it can reach, not
/// the size the guest offered, so a huge buffer for a small disk costs no host memory.
pub(super) fn serve<S: ZoneStorage>(
    disk: &ZonedDisk<S>,
    memory: &GuestMemoryMmap,
    request: &Request,
) -> Completion {
    // The parser bounds the buffer by MAX_REQUEST_DATA_BYTES, which fits in usize.
    let len = usize::try_from(request.writable_len()).unwrap_or(usize::MAX);
    let mut reply = vec![0u8; disk.report_reply_len(request.sector, len)];
    match disk.report_into(request.sector, &mut reply) {
        Ok((_, written)) => match bytes_to_guest(memory, &request.writable, &reply[..written]) {
            // At most MAX_REQUEST_DATA_BYTES.
            Ok(_) => Completion::ok(u32::try_from(written).unwrap_or(u32::MAX)),
            Err(_) => Completion::with_status(status::IOERR),
        },
        Err(error) => Completion::with_status(error.status()),
    }
}
