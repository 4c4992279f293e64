//! The conformance suites a backend's tests run, written once for every backend (feature
//! `conformance`, for dev-dependencies only).
//!
//! - [`ops`] — every op of [`crate::ops::Ops`] on the backend against the CPU backend on the same
//!   inputs ([`ops::Pair`], the op chains, [`ops::every_op`], [`ops::attention_shapes`]).
//! - [`stress`] — many threads round-tripping bytes through the caching allocator and the stream pool
//!   with cross-stream reuse, every byte checked ([`stress::round_trips`]).
//!
//! Each suite panics (it is test code) with a message saying what differed; none times anything.

pub mod ops;
pub mod stress;

/// xorshift64*: deterministic test bytes and sizes without a `rand` dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// `n` values uniform in [-1, 1).
    pub fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            .collect()
    }
}

/// How many bytes of `got` differ from `want` (lengths must match).
pub fn mismatches(got: &[u8], want: &[u8]) -> usize {
    assert_eq!(
        got.len(),
        want.len(),
        "compared slices of different lengths"
    );
    got.iter().zip(want).filter(|(a, b)| a != b).count()
}
