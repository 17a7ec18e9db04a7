//! Requests into the zoned virtio-blk device, and the zone state machine alone.
//! The body and its input format: `devices::testing::fuzz::zoned_requests`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::testing::fuzz::zoned_requests(data));
