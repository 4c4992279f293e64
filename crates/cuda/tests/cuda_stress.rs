//! The runtime's `CachingAllocator` and `StreamPool` over `CudaDevice` under 16 threads (the runtime's
//! round-trip stress: every byte of every round trip checked, blocking copies and non-blocking
//! downloads, cross-stream reuse, nothing allocated or leased at the end), then the backend's own
//! promises: bounded idle download buffers, every raw allocation back to the driver. Behaviour only,
//! never timings. Skips without a driver (see `common`).

mod common;

use braid_runtime::conformance::stress::round_trips;
use braid_runtime::device::Device;
use common::device_or_skip;

#[test]
fn sixteen_threads_round_trip_every_byte_and_leak_nothing() {
    let Some(device) = device_or_skip() else {
        return;
    };
    const THREADS: usize = 16;
    let (pool, _alloc) = round_trips(device.clone(), THREADS, 150);
    for index in 1..=THREADS {
        let stream = pool.stream(index).unwrap().raw().unwrap();
        assert!(
            stream.pinned_download_bytes() <= 16 << 20,
            "stream {index} keeps at most 16 MiB of idle download buffers"
        );
    }
    assert_eq!(
        device.raw_allocated(),
        0,
        "every raw allocation went back to the driver"
    );
    println!("{}", device.describe());
}
