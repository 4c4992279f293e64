//! The runtime's [`CachingAllocator`] and [`StreamPool`] over any backend under many threads: every
//! byte of every round trip checked (blocking copies and non-blocking downloads), with cross-stream
//! reuse, and nothing allocated, cached or leased at the end. Behaviour only, never timings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::alloc::{AllocatorConfig, CachingAllocator};
use crate::device::Device;
use crate::stream::{StreamPool, StreamPoolConfig};

use super::{mismatches, Rng};

/// `threads` threads, each on its own leased stream, loop `rounds` times: allocate A and B, upload
/// random bytes into A (and overwrite the host source at once), copy A → B on the device, free A and
/// reallocate it as C (the same stream reuses the block at once), overwrite C, download B and check
/// every byte. One round in four hands B to a neighbour's stream (event + `record_stream`) and
/// downloads it there instead; one in four starts a non-blocking download, frees B and C, encodes the
/// next upload, and only then finishes the download. Sizes run from 1 byte (unaligned lengths
/// included) to 2 MiB.
///
/// Asserts that no byte differed, that the volume checked was real, and that every lease, buffer and
/// cached byte came back; returns the pool and allocator for the backend's own checks.
pub fn round_trips<D: Device>(
    device: D,
    threads: usize,
    rounds: usize,
) -> (Arc<StreamPool<D>>, Arc<CachingAllocator<D>>) {
    let config = StreamPoolConfig {
        worker_slots: threads.max(1) + 1,
        ..Default::default()
    };
    let pool = Arc::new(StreamPool::new(device, config).unwrap());
    // A small thread cache so blocks keep moving through the shared pools between streams.
    let alloc = Arc::new(CachingAllocator::new(
        &pool,
        AllocatorConfig {
            thread_cache_bytes: 512 << 10,
            ..Default::default()
        },
    ));
    let bad = Arc::new(AtomicUsize::new(0));
    let checked = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (pool, alloc, bad, checked) =
                (pool.clone(), alloc.clone(), bad.clone(), checked.clone());
            std::thread::spawn(move || {
                let own = pool.current_stream().unwrap();
                let neighbour = pool.stream((t + 1) % threads + 1).unwrap();
                let device = own.device().clone();
                let mut rng = Rng::new(t as u64 + 100);
                for round in 0..rounds {
                    let r = rng.next_u64();
                    // ~70% small (1 B - 64 KiB), the rest large (64 KiB - 2 MiB).
                    let len = if r % 10 < 7 {
                        1 + (r >> 8) as usize % (64 << 10)
                    } else {
                        (64 << 10) + (r >> 8) as usize % (2 << 20)
                    };
                    let want = rng.bytes(len);
                    let raw = own.raw().unwrap();
                    let a = alloc.alloc(len, own).unwrap();
                    let mut b = alloc.alloc(len, own).unwrap();
                    let mut src = want.clone();
                    device.copy_from_host(raw, &src, a.view()).unwrap();
                    src.fill(0xA5);
                    device.copy_device(raw, a.view(), b.view()).unwrap();
                    drop(a);
                    let c = alloc.alloc(len, own).unwrap();
                    device.copy_from_host(raw, &src, c.view()).unwrap();
                    own.encoded().unwrap();

                    let mut got = vec![0u8; len];
                    match round % 4 {
                        0 => {
                            let mut written = alloc.event_pool().event().unwrap();
                            written.record(&own).unwrap();
                            neighbour.wait(&written).unwrap();
                            b.record_stream(neighbour).unwrap();
                            device
                                .copy_to_host(neighbour.raw().unwrap(), b.view(), &mut got)
                                .unwrap();
                            drop(b);
                            drop(c);
                        }
                        1 => {
                            // Non-blocking: the buffers go back and the next upload is encoded while
                            // the bytes come down (stream order keeps B's block until the copy ran).
                            let pending = device.download(raw, b.view()).unwrap();
                            drop(b);
                            drop(c);
                            let next = alloc.alloc(len, own).unwrap();
                            device.copy_from_host(raw, &src, next.view()).unwrap();
                            drop(next);
                            device.finish_download(pending, &mut got).unwrap();
                        }
                        _ => {
                            device.copy_to_host(raw, b.view(), &mut got).unwrap();
                            drop(b);
                            drop(c);
                        }
                    }
                    bad.fetch_add(mismatches(&got, &want), Ordering::Relaxed);
                    checked.fetch_add(len, Ordering::Relaxed);
                }
                own.synchronize().unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    pool.synchronize_all().unwrap();

    let checked = checked.load(Ordering::Relaxed);
    assert!(
        checked > threads * rounds * (16 << 10),
        "the test checked real volume: {checked} bytes"
    );
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "bytes lost or overwritten by an early reuse"
    );
    assert_eq!(
        pool.leased_slots(),
        0,
        "every lease returned at thread exit"
    );
    let stats = alloc.stats();
    assert_eq!(stats.allocated_bytes, 0, "every buffer freed: {stats}");
    assert_eq!(
        stats.thread_cached_bytes, 0,
        "exited threads flushed their caches: {stats}"
    );
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().reserved_bytes, 0, "{}", alloc.stats());
    println!("{} bytes checked; {}", checked, alloc.stats());
    (pool, alloc)
}
