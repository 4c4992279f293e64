//! Helpers shared by the wgpu backend's integration tests.
//!
//! Every test starts with [`device_or_skip`]: on a machine without a Vulkan (or Metal) adapter it prints
//! "skipped: no wgpu adapter (…)" and the test returns. CI installs lavapipe, so there the tests run;
//! `BRAID_REQUIRE_WGPU=1` turns a skip into a failure, so a broken driver setup cannot pass as
//! "skipped". `BRAID_WGPU_ADAPTER` picks the adapter (see `braid_wgpu::device`).
#![allow(dead_code)]

use braid_wgpu::WgpuDevice;

/// The environment variable that makes a missing adapter a test failure.
pub const REQUIRE_ENV: &str = "BRAID_REQUIRE_WGPU";

/// The adapter `BRAID_WGPU_ADAPTER` names (or the best), or `None` after printing why there is none.
pub fn device_or_skip() -> Option<WgpuDevice> {
    match WgpuDevice::new() {
        Ok(device) => {
            println!("on {}", braid_runtime::Device::describe(&device));
            Some(device)
        }
        Err(e) => {
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!("a wgpu adapter was required ({REQUIRE_ENV}=1), but none opened: {e}");
            }
            println!("skipped: no wgpu adapter ({e})");
            None
        }
    }
}
