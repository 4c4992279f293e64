//! Concurrency stress: cross-stream reuse with every byte checked, and thread churn counting leaks.
//!
//! These assert behaviour (zero corruptions, zero leaked slots and bytes), never timings.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use braid_runtime::cpu::CpuDevice;
use braid_runtime::{
    AllocatorConfig, CachingAllocator, ExhaustionPolicy, StreamPool, StreamPoolConfig,
};
use common::{check_bytes, fill_bytes, next, on_stream};

/// 32 threads, each on its own stream, write a thread-specific byte pattern into freshly allocated
/// buffers, check it on the device after a delay (so an early reuse by another stream would be caught),
/// free, and allocate again. One buffer in four is handed to a neighbour's stream with `record_stream`,
/// which checks it too after the owner has dropped it. Every byte of every check must match.
#[test]
fn cross_stream_reuse_never_corrupts_a_byte() {
    const THREADS: usize = 32;
    const ROUNDS: usize = 150;
    let device = CpuDevice::new();
    let pool = Arc::new(
        StreamPool::new(
            device.clone(),
            StreamPoolConfig {
                worker_slots: 40,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    // A small thread cache so blocks keep moving through the shared pools between streams.
    let alloc = Arc::new(CachingAllocator::new(
        &pool,
        AllocatorConfig {
            thread_cache_bytes: 256 << 10,
            ..Default::default()
        },
    ));
    let bad = Arc::new(AtomicUsize::new(0));
    let checked = Arc::new(AtomicUsize::new(0));

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (pool, alloc, bad, checked) =
                (pool.clone(), alloc.clone(), bad.clone(), checked.clone());
            std::thread::spawn(move || {
                let own = pool.current_stream().unwrap();
                let neighbour = pool.stream((t + 1) % THREADS + 1).unwrap();
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                for round in 0..ROUNDS {
                    let r = next(&mut rng);
                    // ~70% small (256 B - 256 KiB), the rest large (1 - 3 MiB).
                    let len = if r % 10 < 7 {
                        256 + (r >> 8) as usize % (256 << 10)
                    } else {
                        (1 << 20) + (r >> 8) as usize % (2 << 20)
                    };
                    let pattern = (t * 31 + round) as u8 | 1;
                    let mut buf = alloc.alloc(len, own).unwrap();
                    fill_bytes(own, buf.view(), pattern);
                    on_stream(own, std::thread::yield_now);
                    check_bytes(own, buf.view(), pattern, bad.clone());
                    checked.fetch_add(len, Ordering::Relaxed);
                    if r % 4 == 0 {
                        // Hand the buffer to the neighbour's stream, after our writes.
                        let mut event = alloc.event_pool().event().unwrap();
                        event.record(&own).unwrap();
                        neighbour.wait(&event).unwrap();
                        on_stream(neighbour, || {
                            std::thread::sleep(std::time::Duration::from_micros(200))
                        });
                        check_bytes(neighbour, buf.view(), pattern, bad.clone());
                        neighbour.commit().unwrap();
                        checked.fetch_add(len, Ordering::Relaxed);
                        buf.record_stream(neighbour).unwrap();
                    }
                    own.encoded().unwrap();
                    drop(buf);
                }
                own.synchronize().unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    pool.synchronize_all().unwrap();
    assert!(
        checked.load(Ordering::Relaxed) > 100 << 20,
        "the test checked real volume"
    );
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "bytes overwritten by an early reuse"
    );
    let stats = alloc.stats();
    assert_eq!(stats.allocated_bytes, 0, "{stats}");
    assert!(stats.hit_rate() > 0.5, "the cache was used: {stats}");
}

/// 100,000 short-lived threads, at most 64 alive, each leasing a slot and allocating: afterwards every
/// slot is free and every byte is back.
#[test]
fn thread_churn_leaks_no_slot_and_no_block() {
    const THREADS: usize = 100_000;
    const ALIVE: usize = 64;
    let device = CpuDevice::new();
    let config = StreamPoolConfig {
        exhaustion: ExhaustionPolicy::Wait(std::time::Duration::from_secs(60)),
        ..Default::default()
    };
    let pool = Arc::new(StreamPool::new(device.clone(), config).unwrap());
    let alloc = Arc::new(CachingAllocator::new(&pool, AllocatorConfig::default()));
    let max_index = Arc::new(AtomicUsize::new(0));
    let mut alive = std::collections::VecDeque::with_capacity(ALIVE);
    for t in 0..THREADS {
        if alive.len() == ALIVE {
            let h: std::thread::JoinHandle<()> = alive.pop_front().unwrap();
            h.join().unwrap();
        }
        let (pool, alloc, max_index) = (pool.clone(), alloc.clone(), max_index.clone());
        alive.push_back(std::thread::spawn(move || {
            let stream = pool
                .current_stream()
                .expect("a slot within the wait timeout");
            max_index.fetch_max(stream.index(), Ordering::Relaxed);
            let buf = alloc.alloc(256 + (t % 64) * 512, stream).unwrap();
            if t % 16 == 0 {
                fill_bytes(stream, buf.view(), 7);
                stream.commit().unwrap();
            }
            drop(buf);
        }));
    }
    for h in alive {
        h.join().unwrap();
    }
    assert_eq!(pool.leased_slots(), 0, "leaked slots");
    assert_eq!(
        max_index.load(Ordering::Relaxed),
        pool.worker_slots(),
        "all 31 slots were used"
    );
    let stats = alloc.stats();
    assert_eq!(stats.allocated_bytes, 0, "lost blocks: {stats}");
    assert_eq!(
        stats.thread_cached_bytes, 0,
        "exited threads flushed their caches: {stats}"
    );
    assert_eq!(stats.allocs, THREADS as u64);
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().reserved_bytes, 0);
}
