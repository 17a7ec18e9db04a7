//! A volatile write cache for the image file, and the power cut that drops what it holds.
//!
//! With the cache on, every write since the last successful FLUSH counts as still in a drive's
//! cache: a power cut ([`ImageFile::power_cut`]) may lose it, as a real disk with a write-back
//! cache may, decided by a seeded random choice so that a run can be replayed. What a power cut
//! may do, per zone, relative to the last flush (or the zone's last reset, which is durable):
//!
//! - a sequential zone keeps a prefix of its unflushed writes: its write pointer lands anywhere
//!   between the durable one and the one in memory, on a physical block (the write
//!   granularity, at least a logical block); an unflushed OPEN,
//!   CLOSE or FINISH is lost, unless `random` keeps every write of a finished zone;
//! - a conventional zone keeps any subset of the physical blocks written since the flush, each
//!   block whole: the others get back the contents they had at the flush.
//!
//! Sequential zones need nothing kept for this: above the write pointer the device reads
//! zeros. For conventional zones the cache keeps each block's flushed contents in memory,
//! read before its first write after a flush, until the next flush.

//! `lose=flushed` is a broken device on purpose, to prove that a crash test catches one: each
//! sequential zone also loses the writes of the last flush that moved its write pointer. For
//! that the cache remembers, per zone, its durable state before that flush.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::FileExt;

use super::ImageFile;
use crate::zoned::state::{ZoneCondition, ZoneSet};

/// What a power cut loses of the writes since the last flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Everything: the image is as the last flush left it.
    All,
    /// A random part: each sequential zone keeps a random prefix of its unflushed writes, and
    /// each unflushed conventional block is kept or lost at random.
    Random,
    /// More than a power cut may lose, to test a crash test: everything unflushed, and each
    /// sequential zone's writes of the last flush that moved its write pointer (a zone reset
    /// since keeps its reset). Conventional zones lose what `All` loses.
    Flushed,
}

/// A power cut to apply: what it loses, and the seed of its random choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerCut {
    pub loss: Loss,
    pub seed: u64,
}

/// What a power cut did to one image, for the message vmm prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerCutReport {
    /// Sequential zones whose state went back to an earlier one.
    pub zones_rolled_back: usize,
    /// Sectors of unflushed sequential writes lost.
    pub sectors_lost: u64,
    /// Sectors of unflushed sequential writes kept.
    pub sectors_kept: u64,
    /// Conventional blocks written since the flush that got their flushed contents back.
    pub blocks_lost: usize,
    /// Conventional blocks written since the flush that keep their new contents.
    pub blocks_kept: usize,
    /// Sectors of flushed sequential writes lost (`Loss::Flushed` only).
    pub flushed_sectors_lost: u64,
}

/// What the volatile cache keeps to undo: the flushed contents of the conventional blocks
/// written since the last flush, by physical block number (ordered, so that a seed always meets
/// the blocks in the same order), and for `Loss::Flushed` each sequential zone's durable state
/// before the last flush that moved it.
#[derive(Debug, Default)]
pub(super) struct VolatileCache {
    saved: BTreeMap<u64, Box<[u8]>>,
    before_last_flush: BTreeMap<usize, (ZoneCondition, u64)>,
}

impl VolatileCache {
    /// A flush made everything durable.
    pub(super) fn flushed(&mut self) {
        self.saved.clear();
    }

    /// Durable resets of `zones`: nothing before them comes back.
    pub(super) fn forget_advances(&mut self, zones: impl Iterator<Item = usize>) {
        for zone in zones {
            self.before_last_flush.remove(&zone);
        }
    }
}

/// A small, seedable generator (SplitMix64): a power cut's choices depend only on its seed.
#[derive(Clone, Debug)]
pub struct CutRandom(u64);

impl CutRandom {
    pub fn new(seed: u64) -> Self {
        CutRandom(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..=max.
    fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next() % n,
            None => self.next(),
        }
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

impl ImageFile {
    /// Turns the volatile write cache on: from now on writes since the last flush are losable
    /// by a power cut (`ZoneStorage::power_cut`). All data then moves through this backend (no parallel data
    /// path), so that each conventional block's flushed contents are saved before it changes.
    pub fn set_volatile_cache(&mut self) {
        self.cache = Some(VolatileCache::default());
    }

    /// Before a write of `len` bytes at `sector`: saves the flushed contents of each
    /// conventional block it changes for the first time since the last flush.
    pub(super) fn save_flushed_blocks(&mut self, sector: u64, len: u64) -> io::Result<()> {
        let Some(cache) = &mut self.cache else {
            return Ok(());
        };
        let conventional_end = self
            .geometry
            .zone_start(self.geometry.conventional_zones as usize);
        let block_sectors = atomic_bytes(&self.geometry) / super::SECTOR_SIZE;
        let end = (sector + len.div_ceil(super::SECTOR_SIZE)).min(conventional_end);
        let mut block = sector / block_sectors;
        while block * block_sectors < end {
            if let std::collections::btree_map::Entry::Vacant(entry) = cache.saved.entry(block) {
                let mut old = vec![0u8; (block_sectors * super::SECTOR_SIZE) as usize];
                let pos = self.layout.data_offset + block * block_sectors * super::SECTOR_SIZE;
                self.file.read_exact_at(&mut old, pos)?;
                entry.insert(old.into_boxed_slice());
            }
            block += 1;
        }
        Ok(())
    }

    /// Before a flush persists `states`: remembers the durable state of each sequential zone
    /// the flush moves, for `Loss::Flushed`.
    pub(super) fn note_flushed_advances(
        &mut self,
        states: &[(usize, ZoneCondition, u64)],
    ) -> io::Result<()> {
        if self.cache.is_none() {
            return Ok(());
        }
        let conventional = self.geometry.conventional_zones as usize;
        let mut moved = Vec::new();
        for &(zone, _, wp) in states.iter().filter(|s| s.0 >= conventional) {
            let durable = self.durable_state(zone)?;
            if durable.1 != wp {
                moved.push((zone, durable));
            }
        }
        if let Some(cache) = &mut self.cache {
            cache.before_last_flush.extend(moved);
        }
        Ok(())
    }

    /// A power cut: applies `loss` to what was written since the last flush (with `zones` the
    /// state in memory), then makes the result durable, as the next run will find it. Nothing
    /// is lost without the volatile cache: the image is then flushed as at a clean exit.
    pub(super) fn cut_power(
        &mut self,
        zones: &ZoneSet,
        loss: Loss,
        random: &mut CutRandom,
    ) -> io::Result<Option<PowerCutReport>> {
        let mut report = PowerCutReport::default();
        let Some(cache) = self.cache.take() else {
            use crate::zoned::disk::ZoneStorage;
            self.flush(zones)?;
            return Ok(None);
        };
        let block_bytes = atomic_bytes(&self.geometry);
        for (block, old) in &cache.saved {
            if loss != Loss::Random || random.coin() {
                self.file
                    .write_all_at(old, self.layout.data_offset + block * block_bytes)?;
                report.blocks_lost += 1;
            } else {
                report.blocks_kept += 1;
            }
        }
        if self.sync_failed {
            // Nothing was committed since the failed fdatasync; the durable table stays.
            return Ok(Some(report));
        }
        // What is kept must be durable before a slot describes it.
        self.sync(super::SyncOf::Data)?;
        let block_sectors = block_bytes / super::SECTOR_SIZE;
        let mut states = Vec::new();
        let mut changed: Vec<usize> = zones.changed_zones().to_vec();
        changed.extend(self.unsettled.iter().copied());
        if loss == Loss::Flushed {
            changed.extend(cache.before_last_flush.keys().copied());
        }
        changed.sort_unstable();
        changed.dedup();
        for zone in changed {
            if zone < self.geometry.conventional_zones as usize {
                continue;
            }
            let durable = self.durable_state(zone)?;
            let now = zones.saved_state(zone);
            let mut after = cut_zone(self, zone, durable, now, loss, block_sectors, random);
            if let Some(&before) = cache.before_last_flush.get(&zone) {
                if loss == Loss::Flushed && before.1 < durable.1 {
                    report.flushed_sectors_lost += durable.1 - before.1;
                    after = before;
                }
            }
            if now.1 > durable.1 {
                report.sectors_lost += now.1 - durable.1.max(after.1);
            }
            if after.1 > durable.1 {
                report.sectors_kept += after.1 - durable.1;
            }
            if after != now {
                report.zones_rolled_back += 1;
            }
            states.push((zone, after.0, after.1));
            if self.punch_holes && after.1 < now.1 {
                let end = self.geometry.zone_start(zone) + self.geometry.zone_len(zone);
                self.punch_hole(after.1, end - after.1);
            }
        }
        self.persist(&states)?;
        Ok(Some(report))
    }
}

/// The unit a power cut never splits: the disk's physical block as the guest sees it (the
/// write granularity; Linux sets a zoned virtio disk's physical block size to it), at least a
/// logical block. A 512e disk (512-byte logical, 4 KiB physical blocks) thus loses whole 4 KiB
/// blocks, as a drive writes its physical sectors whole.
fn atomic_bytes(geometry: &crate::zoned::geometry::ZonedGeometry) -> u64 {
    u64::from(geometry.logical_block_size.max(geometry.write_granularity))
}

/// The state a sequential zone comes back in after a power cut, from its durable state and its
/// state in memory.
fn cut_zone(
    image: &ImageFile,
    zone: usize,
    durable: (ZoneCondition, u64),
    now: (ZoneCondition, u64),
    loss: Loss,
    block_sectors: u64,
    random: &mut CutRandom,
) -> (ZoneCondition, u64) {
    let (durable_cond, durable_wp) = durable;
    let (now_cond, now_wp) = now;
    let writable = matches!(
        durable_cond,
        ZoneCondition::Empty | ZoneCondition::Closed | ZoneCondition::Full
    );
    let faulted = matches!(now_cond, ZoneCondition::ReadOnly | ZoneCondition::Offline);
    if loss != Loss::Random || !writable || faulted || now_wp < durable_wp {
        return durable;
    }
    let start = image.geometry.zone_start(zone);
    let end = start + image.geometry.zone_capacity_of(zone);
    // Sequential writes come in whole physical blocks (the device refuses others).
    let kept = random.up_to((now_wp - durable_wp) / block_sectors) * block_sectors;
    let wp = durable_wp + kept;
    let finish_kept = wp == now_wp && now_cond == ZoneCondition::Full && random.coin();
    let was_full = wp == durable_wp && durable_cond == ZoneCondition::Full;
    let cond = if wp == end || finish_kept || was_full {
        ZoneCondition::Full
    } else if wp == start {
        ZoneCondition::Empty
    } else {
        ZoneCondition::Closed
    };
    (cond, wp)
}
