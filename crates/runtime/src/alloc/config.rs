//! [`AllocatorConfig`] and [`MemoryLimit`]: how a [`super::CachingAllocator`] is set up.

use std::str::FromStr;

use crate::error::{Result, RuntimeError};

/// The environment variable that sets the memory limit.
pub const MEMORY_LIMIT_ENV: &str = "BRAID_MEMORY_LIMIT";

/// What `BRAID_MEMORY_LIMIT` (and [`MemoryLimit`]'s `FromStr`) accepts, quoted in its errors.
const MEMORY_LIMIT_FORMS: &str =
    "a fraction of device memory, written as a percentage (80%) or as \
     a decimal with a point in (0, 1] (0.8), or a size with a unit (4096B, 512MiB, 12GiB, 1GB: \
     KiB, MiB, GiB and TiB are powers of 1024, KB, MB, GB and TB powers of 1000), or none; \
     a bare number such as 1 or 1024 is ambiguous and refused";

/// A cap on the raw device memory an allocator holds.
///
/// # Text form (`BRAID_MEMORY_LIMIT`)
///
/// Parsed by `FromStr`, case-insensitively, surrounding spaces ignored:
///
/// - `none` or an empty value: [`MemoryLimit::None`].
/// - A fraction of the device's memory: a percentage in (0, 100] (`80%`, `12.5%`) or a decimal
///   **with a point** in (0, 1] (`0.8`, `1.0`): [`MemoryLimit::Fraction`].
/// - An absolute size: a number (a point allowed, except with `B`) and a unit, a space between
///   them allowed: `B` (bytes), `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024, IEC) or `KB`, `MB`,
///   `GB`, `TB` (powers of 1000, SI, as their names say): [`MemoryLimit::Bytes`], rounded down
///   to whole bytes. `12GiB` is 12 * 2^30 bytes, `1GB` is 10^9 bytes.
///
/// Anything else is refused with an error listing these forms, in particular a bare number:
/// `1` reads as "all of memory" to some and "one byte" to others, and `1024` has no unit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum MemoryLimit {
    /// No cap beyond the device's own memory.
    #[default]
    None,
    /// At most this many bytes.
    Bytes(u64),
    /// At most this fraction (0, 1] of the device's memory.
    Fraction(f64),
}

impl MemoryLimit {
    /// The limit from `BRAID_MEMORY_LIMIT`, or `None` when unset; a value that is not UTF-8 is an
    /// error, like any other invalid value.
    pub fn from_env() -> Result<Self> {
        crate::env::var(MEMORY_LIMIT_ENV)?.map_or(Ok(Self::None), |v| v.parse())
    }

    pub(super) fn bytes(self, capacity: usize) -> u64 {
        match self {
            Self::None => u64::MAX,
            Self::Bytes(b) => b,
            Self::Fraction(f) => (capacity as f64 * f) as u64,
        }
    }
}

/// A plain decimal number: ASCII digits with at most one point and at least one digit (no sign,
/// exponent, `inf` or `nan`, which `f64::from_str` would take).
fn decimal(s: &str) -> Option<f64> {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    let points = s.bytes().filter(|&b| b == b'.').count();
    (digits > 0 && digits + points == s.len() && points <= 1)
        .then(|| s.parse().ok())
        .flatten()
}

/// Bytes per unit, for a unit suffix in lower case.
fn unit_bytes(unit: &str) -> Option<u64> {
    Some(match unit {
        "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    })
}

impl FromStr for MemoryLimit {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let invalid = || RuntimeError::InvalidConfig {
            name: MEMORY_LIMIT_ENV,
            value: s.to_string(),
            allowed: MEMORY_LIMIT_FORMS,
        };
        let lower = s.to_ascii_lowercase();
        if lower.is_empty() || lower == "none" {
            return Ok(Self::None);
        }
        if let Some(percent) = lower.strip_suffix('%') {
            return match decimal(percent.trim_end()) {
                Some(p) if p > 0.0 && p <= 100.0 => Ok(Self::Fraction(p / 100.0)),
                _ => Err(invalid()),
            };
        }
        let unit_at = lower
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(lower.len());
        let (number, unit) = (&lower[..unit_at], lower[unit_at..].trim_start());
        if unit.is_empty() {
            // A bare number is a fraction only when written with a point.
            return match decimal(number) {
                Some(f) if number.contains('.') && f > 0.0 && f <= 1.0 => Ok(Self::Fraction(f)),
                _ => Err(invalid()),
            };
        }
        let per_unit = unit_bytes(unit).ok_or_else(invalid)?;
        if !number.contains('.') {
            let count: u64 = number.parse().map_err(|_| invalid())?;
            return count
                .checked_mul(per_unit)
                .map(Self::Bytes)
                .ok_or_else(invalid);
        }
        // A fractional count of a unit (`1.5GiB`), rounded down to whole bytes; not for `B`.
        let bytes = decimal(number).ok_or_else(invalid)? * per_unit as f64;
        if per_unit == 1 || bytes >= u64::MAX as f64 {
            return Err(invalid());
        }
        Ok(Self::Bytes(bytes as u64))
    }
}

/// How a [`super::CachingAllocator`] is set up.
#[derive(Clone, Debug)]
pub struct AllocatorConfig {
    /// Cap on raw memory held.
    pub memory_limit: MemoryLimit,
    /// Bytes each thread may keep in its cache (default 64 MiB): small blocks up to a quarter of it
    /// (16 MiB by default), large blocks up to the other three quarters, each at most a quarter of it
    /// (16 MiB); past either budget the cache flushes half of it.
    ///
    /// The default was 16 MiB when only small blocks were cached; the small budget keeps that size, so
    /// small-block hoarding is unchanged. The large budget holds a transformer layer's activations
    /// at inference batch sizes (the allocator anchor's 1.5 + 3 + 6 MiB set fits), and every large
    /// block in any thread's cache stays within the reach of [`MemoryLimit`]: `empty_cache` and the
    /// out-of-memory retry take them back (see `thread_cache`). With 0 large blocks bypass the caches
    /// and every small free is flushed at once.
    pub thread_cache_bytes: usize,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        Self {
            memory_limit: MemoryLimit::None,
            thread_cache_bytes: 64 << 20,
        }
    }
}

impl AllocatorConfig {
    /// The defaults with the limit from `BRAID_MEMORY_LIMIT` where set.
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            memory_limit: MemoryLimit::from_env()?,
            ..Self::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<MemoryLimit> {
        s.parse()
    }

    #[test]
    fn fractions_percentages_and_sizes() {
        for (text, want) in [
            ("none", MemoryLimit::None),
            ("", MemoryLimit::None),
            (" NONE ", MemoryLimit::None),
            ("80%", MemoryLimit::Fraction(0.8)),
            ("12.5 %", MemoryLimit::Fraction(0.125)),
            ("100%", MemoryLimit::Fraction(1.0)),
            ("0.8", MemoryLimit::Fraction(0.8)),
            ("1.0", MemoryLimit::Fraction(1.0)),
            (".5", MemoryLimit::Fraction(0.5)),
            ("4096B", MemoryLimit::Bytes(4096)),
            ("0B", MemoryLimit::Bytes(0)),
            ("512MiB", MemoryLimit::Bytes(512 << 20)),
            ("12GiB", MemoryLimit::Bytes(12 << 30)),
            ("12 gib", MemoryLimit::Bytes(12 << 30)),
            ("1.5GiB", MemoryLimit::Bytes(3 << 29)),
            ("2KiB", MemoryLimit::Bytes(2048)),
            ("1TiB", MemoryLimit::Bytes(1 << 40)),
            ("1GB", MemoryLimit::Bytes(1_000_000_000)),
            ("1gb", MemoryLimit::Bytes(1_000_000_000)),
            ("3kB", MemoryLimit::Bytes(3_000)),
            ("2.5MB", MemoryLimit::Bytes(2_500_000)),
            ("2TB", MemoryLimit::Bytes(2_000_000_000_000)),
        ] {
            assert_eq!(parse(text).unwrap(), want, "{text:?}");
        }
    }

    #[test]
    fn bare_integers_and_other_ambiguous_forms_are_refused_with_the_forms() {
        for bad in [
            "1",
            "1024",
            "0",
            "1073741824",
            "1.5",
            "0.0",
            "-0.5",
            "1e9",
            "inf",
            "NaN",
            "0%",
            "101%",
            "-5%",
            "%",
            "12G",
            "12 GiBs",
            "1.5B",
            "B",
            "GiB",
            "1..5GiB",
            "lots",
            "99999999999TiB",
            "20000000000000000000B",
        ] {
            let err = parse(bad).map(|_| ()).unwrap_err().to_string();
            assert!(
                err.contains("BRAID_MEMORY_LIMIT")
                    && err.contains("80%")
                    && err.contains("0.8")
                    && err.contains("12GiB")
                    && err.contains("powers of 1024"),
                "{bad:?}: {err}"
            );
        }
    }
}
