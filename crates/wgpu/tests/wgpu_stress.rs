//! The runtime's round-trip stress over `WgpuDevice` (16 threads, cross-stream reuse, unaligned sizes,
//! every byte checked), then the backend's own promises: every raw byte back to the arenas and at most
//! 16 MiB of idle read-back buffers per stream. Skips with a line saying so without an adapter.

mod common;

use braid_runtime::conformance::stress::round_trips;
use braid_wgpu::download::IDLE_READBACK_BYTES;

#[test]
fn sixteen_threads_round_trip_every_byte_and_leak_nothing() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    const THREADS: usize = 16;
    let (pool, _alloc) = round_trips(device.clone(), THREADS, 150);
    for index in 1..=THREADS {
        let stream = pool.stream(index).unwrap().raw().unwrap();
        assert!(
            stream.idle_readback_bytes() <= IDLE_READBACK_BYTES,
            "stream {index}"
        );
    }
    assert_eq!(
        device.raw_allocated(),
        0,
        "every raw allocation went back to the arenas"
    );
    let counters = device.counters();
    assert!(
        counters.submits > 0 && counters.dispatches > 0,
        "{counters:?}"
    );
}
