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

/// Test bytes and their comparison, shared with every backend's suites (each test binary uses some).
#[allow(unused_imports)]
pub use braid_runtime::conformance::{mismatches, Rng};
