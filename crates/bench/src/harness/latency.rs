//! [`LatencyHistogram`]: per-op latencies in a fixed log-linear histogram, cheap enough to record on
//! every measured batch and to merge across threads and repetitions.
//!
//! Values are picoseconds (so per-op averages of nanosecond operations keep their fraction). Values
//! below 64 ps have a bucket each; above, each power of two is split into 64 linear buckets, so a
//! bucket is at most 1/64 (1.6 %) wide and a quantile is reported as its bucket's midpoint. This is
//! HdrHistogram's layout at two significant digits, written out because 60 lines do not warrant a
//! dependency. Recording is an index computation and one add; memory is a fixed 30 KiB.

/// Sub-buckets per power of two (2^SUB_BITS).
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Buckets for every u64: the exact ones below SUB, then SUB per power of two from 2^SUB_BITS up.
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

/// A histogram of latencies (see the module doc).
#[derive(Clone)]
pub struct LatencyHistogram {
    counts: Box<[u64]>,
    total: u64,
    max_ps: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max_ps: 0,
        }
    }
}

fn bucket_of(ps: u64) -> usize {
    if ps < SUB as u64 {
        return ps as usize;
    }
    let exponent = 63 - ps.leading_zeros(); // >= SUB_BITS
    let mantissa = (ps >> (exponent - SUB_BITS)) as usize & (SUB - 1);
    SUB + (exponent - SUB_BITS) as usize * SUB + mantissa
}

/// The midpoint of a bucket's range, in picoseconds.
fn bucket_midpoint(bucket: usize) -> f64 {
    if bucket < SUB {
        return bucket as f64;
    }
    let exponent = (bucket - SUB) / SUB + SUB_BITS as usize;
    let mantissa = (bucket - SUB) % SUB;
    let width = 1u64 << (exponent - SUB_BITS as usize);
    let low = (1u64 << exponent) + mantissa as u64 * width;
    low as f64 + width as f64 / 2.0
}

impl LatencyHistogram {
    /// Records `count` ops that took `ps` picoseconds each.
    #[inline]
    pub fn record(&mut self, ps: u64, count: u64) {
        self.counts[bucket_of(ps)] += count;
        self.total += count;
        self.max_ps = self.max_ps.max(ps);
    }

    /// Records one op of `duration`.
    pub fn record_duration(&mut self, duration: std::time::Duration) {
        self.record(duration.as_nanos() as u64 * 1000, 1);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max_ps = self.max_ps.max(other.max_ps);
    }

    /// Ops recorded.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0..=1) in nanoseconds, or `None` when empty.
    pub fn quantile_ns(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bucket_midpoint(bucket) / 1000.0);
            }
        }
        unreachable!("invariant violated: rank beyond the total (this is a bug)")
    }

    /// The largest value recorded, in nanoseconds.
    pub fn max_ns(&self) -> Option<f64> {
        (self.total > 0).then(|| self.max_ps as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut h = LatencyHistogram::default();
        for ns in 1..=1000u64 {
            h.record(ns * 1000, 1);
        }
        let p50 = h.quantile_ns(0.5).unwrap();
        let p99 = h.quantile_ns(0.99).unwrap();
        assert!((p50 - 500.0).abs() / 500.0 < 0.02, "{p50}");
        assert!((p99 - 990.0).abs() / 990.0 < 0.02, "{p99}");
        assert_eq!(h.max_ns(), Some(1000.0));
        assert!(LatencyHistogram::default().quantile_ns(0.5).is_none());
    }

    #[test]
    fn buckets_are_monotonic_and_cover_u64() {
        let mut previous = 0;
        for shift in 0..64 {
            for v in [1u64 << shift, (1u64 << shift) + (1u64 << shift) / 3] {
                let b = bucket_of(v);
                assert!(b >= previous && b < BUCKETS, "{v} -> {b}");
                let mid = bucket_midpoint(b);
                assert!(
                    (mid - v as f64).abs() <= v as f64 / SUB as f64 + 1.0,
                    "{v} -> {mid}"
                );
                previous = b;
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn weighted_records_and_merge_add_up() {
        let mut a = LatencyHistogram::default();
        a.record(2_000, 99);
        let mut b = LatencyHistogram::default();
        b.record(1_000_000, 1);
        a.merge(&b);
        assert_eq!(a.count(), 100);
        assert!((a.quantile_ns(0.5).unwrap() - 2.0).abs() < 0.05);
        assert!((a.quantile_ns(1.0).unwrap() - 1000.0).abs() < 16.0);
    }
}
