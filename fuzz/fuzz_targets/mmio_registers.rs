//! Register traffic of any offset, width and value on the virtio-mmio transport.
//! The body and its input format: `devices::testing::fuzz::mmio_registers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::testing::fuzz::mmio_registers(data));
