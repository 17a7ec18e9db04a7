//! Arbitrary zoned image files on the image open path.
//! The body and its input format: `devices::testing::fuzz::image_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::testing::fuzz::image_header(data));
