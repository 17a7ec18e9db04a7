//! Sizes on the command line: one grammar for `--memory` and every size option of a zoned disk
//! (`size=`, `zone-size=`, `zone-capacity=`, `max-append=`, `write-granularity=`,
//! `logical-block-size=`).
//!
//! A size is decimal digits (no sign, no fraction) followed by an optional suffix, all
//! case-insensitive, with surrounding whitespace ignored. The suffixes are binary: `K`, `M`, `G`
//! and `T`, or spelled `KiB`, `MiB`, `GiB` and `TiB`, multiply by 2^10, 2^20, 2^30 and 2^40. A
//! number without a suffix counts the option's own unit, which the option names in its help:
//! bytes for the zoned disk's options, MiB for `--memory` (so `--memory 512` is 512 MiB and
//! `size=4096` is 4096 bytes).

/// A unit a size is counted in: a power of 1024 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeUnit {
    Bytes,
    KiB,
    MiB,
    GiB,
    TiB,
}

impl SizeUnit {
    /// log2 of the unit in bytes.
    fn shift(self) -> u32 {
        match self {
            SizeUnit::Bytes => 0,
            SizeUnit::KiB => 10,
            SizeUnit::MiB => 20,
            SizeUnit::GiB => 30,
            SizeUnit::TiB => 40,
        }
    }
}

/// Suffixes and their units, the longer spelling first so that `MiB` is not read as `M`.
const SUFFIXES: [(&str, SizeUnit); 8] = [
    ("kib", SizeUnit::KiB),
    ("mib", SizeUnit::MiB),
    ("gib", SizeUnit::GiB),
    ("tib", SizeUnit::TiB),
    ("k", SizeUnit::KiB),
    ("m", SizeUnit::MiB),
    ("g", SizeUnit::GiB),
    ("t", SizeUnit::TiB),
];

/// A parsed size: `number` of `unit`, kept apart so that a value too large for bytes in a u64
/// can still be expressed in a larger unit (a memory size in MiB, say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    number: u64,
    unit: SizeUnit,
}

impl Size {
    /// Parses `text` by the module's grammar; a number without a suffix counts `bare`. `None`
    /// for anything else (empty, a sign, a fraction, an unknown suffix, more digits than a u64
    /// holds).
    pub fn parse(text: &str, bare: SizeUnit) -> Option<Self> {
        let lower = text.trim().to_ascii_lowercase();
        let (digits, unit) = SUFFIXES
            .iter()
            .find_map(|&(suffix, unit)| lower.strip_suffix(suffix).map(|d| (d, unit)))
            .unwrap_or((lower.as_str(), bare));
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Size {
            number: digits.parse().ok()?,
            unit,
        })
    }

    /// The size in whole `unit`s, rounded down; `None` when that does not fit a u64.
    pub fn in_units(self, unit: SizeUnit) -> Option<u64> {
        let (from, to) = (self.unit.shift(), unit.shift());
        if from >= to {
            let shift = from - to;
            self.number
                .checked_shl(shift)
                .filter(|v| v >> shift == self.number)
        } else {
            Some(self.number >> (to - from))
        }
    }

    /// The size in bytes; `None` when that does not fit a u64.
    pub fn bytes(self) -> Option<u64> {
        self.in_units(SizeUnit::Bytes)
    }
}

/// Parses a size whose bare numbers are bytes, into bytes (the zoned disk's size options).
pub fn parse_bytes(text: &str) -> Option<u64> {
    Size::parse(text, SizeUnit::Bytes)?.bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_binary_and_case_insensitive() {
        for (text, bytes) in [
            ("4096", 4096),
            ("4k", 4 << 10),
            ("4K", 4 << 10),
            ("4KiB", 4 << 10),
            ("4kib", 4 << 10),
            ("64M", 64 << 20),
            ("64MiB", 64 << 20),
            ("2G", 2 << 30),
            ("1GiB", 1 << 30),
            ("1T", 1 << 40),
            ("1TiB", 1 << 40),
            (" 8M ", 8 << 20),
            ("0", 0),
        ] {
            assert_eq!(parse_bytes(text), Some(bytes), "{text}");
        }
    }

    #[test]
    fn a_bare_number_counts_the_options_unit() {
        let mib = |text| Size::parse(text, SizeUnit::MiB)?.in_units(SizeUnit::MiB);
        assert_eq!(mib("512"), Some(512));
        assert_eq!(mib("512M"), Some(512));
        assert_eq!(mib("512MiB"), Some(512));
        assert_eq!(mib("2G"), Some(2048));
        assert_eq!(mib("65536K"), Some(64));
        // Rounded down to whole units.
        assert_eq!(mib("1536K"), Some(1));
        assert_eq!(
            Size::parse("512", SizeUnit::MiB).and_then(Size::bytes),
            Some(512 << 20)
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for text in [
            "", " ", "K", "KiB", "ib", "10ib", "1.5G", "-1", "+1", "12X", "12Q", "1B", "1KB",
            "1 G", "0x10", "lots",
        ] {
            assert_eq!(Size::parse(text, SizeUnit::Bytes), None, "{text:?}");
        }
        // More digits than a u64 holds.
        assert_eq!(Size::parse("99999999999999999999", SizeUnit::Bytes), None);
    }

    #[test]
    fn too_large_for_the_unit_asked_is_none() {
        assert_eq!(parse_bytes("99999999999T"), None);
        assert_eq!(parse_bytes("16777215T"), Some(16_777_215 << 40));
        assert_eq!(parse_bytes("16777216T"), None);
        // Too large in bytes, but not in MiB.
        let huge = Size::parse("9999999999999T", SizeUnit::Bytes).unwrap();
        assert_eq!(huge.bytes(), None);
        assert_eq!(huge.in_units(SizeUnit::MiB), Some(9_999_999_999_999 << 20));
    }
}
