//! Descriptor chains from a hostile driver into the plain virtio-blk device.
//! The body and its input format: `devices::testing::fuzz::virtio_blk_chain`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::testing::fuzz::virtio_blk_chain(data));
