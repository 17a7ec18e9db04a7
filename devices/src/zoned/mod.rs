//! Zoned block devices: geometry and options, the zone state machine shared by every backend,
//! the virtio-blk wire encodings of zone information, and the file-emulated backend.

pub mod disk;
pub mod geometry;
pub mod image;
pub mod state;
pub mod wire;
