//! Helpers shared by the CUDA backend's integration tests.
//!
//! Every GPU test starts with [`device_or_skip`]: on a machine without a CUDA driver (this repository's CI)
//! it prints "skipped: no CUDA driver (…)" and the test returns. Set `BRAID_REQUIRE_CUDA=1` on a GPU
//! machine to turn a skip into a failure, so a broken driver setup cannot pass as "skipped".
#![allow(dead_code)]

use braid_cuda::CudaDevice;

/// The environment variable that makes a missing GPU a test failure.
pub const REQUIRE_ENV: &str = "BRAID_REQUIRE_CUDA";

/// Device 0, or `None` (after printing why) when this machine has no usable CUDA driver or device.
pub fn device_or_skip() -> Option<CudaDevice> {
    match CudaDevice::new(0) {
        Ok(device) => Some(device),
        Err(e) => {
            let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
            if required || CudaDevice::is_available() {
                panic!(
                    "a CUDA device was required or reported, but CudaDevice::new(0) failed: {e}"
                );
            }
            println!("skipped: no CUDA driver ({e})");
            None
        }
    }
}

/// xorshift64*: deterministic test bytes and sizes without a `rand` dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

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

/// An attention mask `[batch, seq]` for the attention tests: sequence 0 full, sequence 1 padded after 3
/// tokens, sequence 2 fully masked (its context must be zeros); further sequences full.
pub fn padded_and_masked(batch: usize, seq: usize) -> Vec<f32> {
    let mut mask = vec![1f32; batch * seq];
    if batch > 1 {
        mask[seq + 3.min(seq)..2 * seq].fill(0.0);
    }
    if batch > 2 {
        mask[2 * seq..3 * seq].fill(0.0);
    }
    mask
}
