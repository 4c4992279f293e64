//! Caching allocator: reuse, stream ordering, record_stream, limits and OOM recovery, stats, empty_cache.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use braid_runtime::cpu::CpuDevice;
use braid_runtime::{
    alloc::SMALL_LIMIT, AllocatorConfig, CachingAllocator, MemoryLimit, RuntimeError, StreamPool,
    StreamPoolConfig,
};
use common::{addr_of, check_bytes, fill_bytes, on_stream};

fn setup(limit: MemoryLimit) -> (StreamPool<CpuDevice>, CachingAllocator<CpuDevice>) {
    let device = CpuDevice::with_memory_capacity(1 << 30);
    let pool = StreamPool::new(
        device.clone(),
        StreamPoolConfig {
            worker_slots: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let alloc = CachingAllocator::new(
        &pool,
        AllocatorConfig {
            memory_limit: limit,
            ..Default::default()
        },
    );
    (pool, alloc)
}

#[test]
fn same_stream_reuse_is_immediate_and_from_the_thread_cache() {
    let (pool, alloc) = setup(MemoryLimit::None);
    let s = pool.stream(1).unwrap();
    let a = alloc.alloc(1000, s).unwrap();
    let first = addr_of(&a);
    assert_eq!(a.len(), 1000);
    assert_eq!(a.capacity(), 1024);
    assert_eq!(first % 256, 0, "256-byte aligned");
    drop(a);
    let b = alloc.alloc(900, s).unwrap();
    assert_eq!(addr_of(&b), first, "freed on S, reused by S at once");
    let stats = alloc.stats();
    assert_eq!(stats.thread_cache_hits, 1);
    assert_eq!(stats.small.misses, 1);
    assert_eq!(stats.allocated_bytes, 1024);
    assert_eq!(
        alloc.event_pool().created(),
        0,
        "same-stream reuse needs no event"
    );
}

/// A block freed on s1 (no event recorded at the free) is handed to s2 at once, and s2's work on it
/// waits, device-side, for s1's work: nothing s2 encodes touches the block before s1 is done.
#[test]
fn another_stream_reuses_a_freed_block_at_once_and_its_work_waits_for_the_first() {
    let (pool, alloc) = setup(MemoryLimit::None);
    let (s1, s2) = (pool.stream(1).unwrap(), pool.stream(2).unwrap());
    // Past the thread cache's largest block (a quarter of the default 64 MiB): no cache in the way.
    let big = 32 << 20;
    let a = alloc.alloc(big, s1).unwrap();
    let ptr = addr_of(&a);
    let (open_gate, gate) = crossbeam_channel::bounded::<()>(0);
    let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let l = log.clone();
    on_stream(s1, move || {
        let _ = gate.recv();
        l.lock().push("s1 done with the block");
    });
    drop(a);
    let events_before = alloc.event_pool().created();
    let raw_before = alloc.stats().raw_allocs;
    let b = alloc.alloc(big, s2).unwrap();
    assert_eq!(addr_of(&b), ptr, "the freed block is reused at once");
    assert_eq!(alloc.stats().raw_allocs, raw_before, "no new raw memory");
    let l = log.clone();
    on_stream(s2, move || l.lock().push("s2 writes the block"));
    s2.commit().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(log.lock().is_empty(), "s2 waits for s1's work on the block");
    open_gate.send(()).unwrap();
    s2.synchronize().unwrap();
    assert_eq!(
        *log.lock(),
        ["s1 done with the block", "s2 writes the block"]
    );
    assert!(
        alloc.event_pool().created() <= events_before + 1,
        "one event, at the stream change"
    );
    drop(b);
}

#[test]
fn record_stream_keeps_a_block_until_the_other_stream_is_done() {
    let (pool, alloc) = setup(MemoryLimit::None);
    let (s1, s2) = (pool.stream(1).unwrap(), pool.stream(2).unwrap());
    let mut a = alloc.alloc(4096, s1).unwrap();
    let ptr = addr_of(&a);
    fill_bytes(s1, a.view(), 0xAB);
    s1.synchronize().unwrap();
    let bad = Arc::new(AtomicUsize::new(0));
    // s2 reads the buffer slowly.
    on_stream(s2, || std::thread::sleep(Duration::from_millis(50)));
    check_bytes(s2, a.view(), 0xAB, bad.clone());
    s2.commit().unwrap();
    a.record_stream(s2).unwrap();
    drop(a);
    // s1 allocates the same size at once and scribbles over what it gets.
    let b = alloc.alloc(4096, s1).unwrap();
    assert_ne!(addr_of(&b), ptr, "the block is still in use by s2");
    fill_bytes(s1, b.view(), 0x00);
    pool.synchronize_all().unwrap();
    assert_eq!(bad.load(Ordering::SeqCst), 0);
}

#[test]
fn oom_under_a_limit_then_recovery_after_buffers_drop() {
    let (pool, alloc) = setup(MemoryLimit::Bytes(8 << 20));
    let s = pool.stream(1).unwrap();
    let a = alloc.alloc(3 << 20, s).unwrap();
    let b = alloc.alloc(3 << 20, s).unwrap();
    let err = alloc.alloc(3 << 20, s).unwrap_err();
    let msg = err.to_string();
    match &err {
        RuntimeError::OutOfMemory {
            requested, stats, ..
        } => {
            assert_eq!(*requested, 3 << 20);
            let now = alloc.stats();
            assert_eq!(now.reserved_bytes, 6 << 20);
            assert_eq!(now.limit_bytes, Some(8 << 20));
            assert_eq!(
                *stats,
                now.to_string(),
                "the error carries the allocator's stats"
            );
        }
        other => panic!("expected OutOfMemory, got {other}"),
    }
    assert!(
        msg.contains("BRAID_MEMORY_LIMIT") && msg.contains("8388608 bytes"),
        "{msg}"
    );
    drop(a);
    // A different size: the cached 3 MiB block is freed by the retry path, making room.
    let c = alloc.alloc(5 << 20, s).unwrap();
    assert!(alloc.stats().reserved_bytes <= 8 << 20);
    drop((b, c));
    let d = alloc
        .alloc(7 << 20, s)
        .expect("after everything dropped, the whole limit is usable");
    drop(d);
}

#[test]
fn device_out_of_memory_is_reported_with_stats() {
    let device = CpuDevice::with_memory_capacity(2 << 20);
    let pool = StreamPool::new(device.clone(), StreamPoolConfig::default()).unwrap();
    let alloc = CachingAllocator::new(&pool, AllocatorConfig::default());
    let s = pool.stream(1).unwrap();
    let _a = alloc.alloc(1500 << 10, s).unwrap();
    let err = alloc.alloc(1500 << 10, s).unwrap_err();
    assert!(matches!(err, RuntimeError::OutOfMemory { .. }), "{err}");
    assert!(
        err.to_string().contains("allocated"),
        "carries the stats: {err}"
    );
}

#[test]
fn memory_limit_parses_sizes_and_fractions() {
    assert_eq!(
        "1MiB".parse::<MemoryLimit>().unwrap(),
        MemoryLimit::Bytes(1 << 20)
    );
    assert_eq!(
        "1MB".parse::<MemoryLimit>().unwrap(),
        MemoryLimit::Bytes(1_000_000)
    );
    assert_eq!(
        "0.5".parse::<MemoryLimit>().unwrap(),
        MemoryLimit::Fraction(0.5)
    );
    assert_eq!(
        "50%".parse::<MemoryLimit>().unwrap(),
        MemoryLimit::Fraction(0.5)
    );
    assert_eq!("none".parse::<MemoryLimit>().unwrap(), MemoryLimit::None);
    // A bare integer is ambiguous (`1`: one byte, or all of memory?) and refused.
    for bad in ["1", "1048576", "0", "1.5", "-3", "lots"] {
        let err = bad
            .parse::<MemoryLimit>()
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BRAID_MEMORY_LIMIT") && err.contains("fraction") && err.contains("GiB"),
            "{err}"
        );
    }
    let (pool, alloc) = setup(MemoryLimit::Fraction(0.001)); // ~1 MiB of 1 GiB
    let s = pool.stream(1).unwrap();
    assert!(alloc.alloc(2 << 20, s).is_err());
    alloc.set_memory_limit(MemoryLimit::None);
    assert!(alloc.alloc(2 << 20, s).is_ok());
}

#[test]
fn empty_cache_returns_memory_and_stats_add_up() {
    let (pool, alloc) = setup(MemoryLimit::None);
    let s = pool.stream(1).unwrap();
    let bufs: Vec<_> = [100, 5000, SMALL_LIMIT, SMALL_LIMIT + 1, 10 << 20]
        .iter()
        .map(|&n| alloc.alloc(n, s).unwrap())
        .collect();
    let reserved = alloc.stats().reserved_bytes;
    assert!(reserved >= (10 << 20) + 2 * SMALL_LIMIT as u64);
    assert_eq!(alloc.stats().allocated_bytes as u64, reserved);
    drop(bufs);
    let stats = alloc.stats();
    assert_eq!(stats.allocated_bytes, 0);
    assert_eq!(stats.reserved_bytes, reserved, "freed blocks stay cached");
    assert_eq!(stats.allocs, 5);
    assert_eq!(stats.frees, 5);
    alloc.empty_cache().unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.reserved_bytes, 0, "{stats}");
    assert_eq!(stats.raw_allocs, stats.raw_frees);
    assert_eq!(stats.peak_reserved_bytes, reserved);
    assert_eq!(pool.device().raw_allocated(), 0);
}

#[test]
fn thread_cache_flushes_past_its_cap_and_at_thread_exit() {
    let device = CpuDevice::new();
    let pool = Arc::new(StreamPool::new(device.clone(), StreamPoolConfig::default()).unwrap());
    let alloc = Arc::new(CachingAllocator::new(
        &pool,
        AllocatorConfig {
            thread_cache_bytes: 256 << 10, // 64 KiB for small blocks
            ..Default::default()
        },
    ));
    let (a2, p2) = (alloc.clone(), pool.clone());
    std::thread::spawn(move || {
        let s = p2.stream(1).unwrap();
        let bufs: Vec<_> = (0..32).map(|_| a2.alloc(8 << 10, s).unwrap()).collect();
        drop(bufs); // 256 KiB freed into a 64 KiB small budget
        assert!(a2.stats().thread_cached_bytes <= 64 << 10, "{}", a2.stats());
    })
    .join()
    .unwrap();
    assert_eq!(
        alloc.stats().thread_cached_bytes,
        0,
        "the exiting thread flushed its cache"
    );
    // Another thread on another stream reuses the flushed blocks once the flush event completes.
    let (s1, s2) = (pool.stream(1).unwrap(), pool.stream(2).unwrap());
    s1.synchronize().unwrap();
    let b = alloc.alloc(8 << 10, s2).unwrap();
    drop(b);
    assert!(alloc.stats().small.hits >= 1, "{}", alloc.stats());
}

/// A trim that stops part-way through a size class keeps the rest of that class cached (a `break` out
/// of a `drain` once dropped them, leaking their device memory): every raw byte comes back at the end.
#[test]
fn trimming_the_thread_cache_loses_no_block() {
    let device = CpuDevice::new();
    let pool = StreamPool::new(device.clone(), StreamPoolConfig::default()).unwrap();
    let alloc = CachingAllocator::new(
        &pool,
        AllocatorConfig {
            thread_cache_bytes: 4 << 20, // 1 MiB for small blocks, no large class cached
            ..Default::default()
        },
    );
    let s = pool.stream(1).unwrap();
    let small: Vec<_> = (0..200).map(|_| alloc.alloc(4 << 10, s).unwrap()).collect();
    let big = alloc.alloc(256 << 10, s).unwrap();
    drop(small);
    drop(big); // past the cap: the trim stops inside the 4 KiB class
    let stats = alloc.stats();
    assert!(stats.thread_cached_bytes <= 1 << 20, "{stats}");
    assert_eq!(
        stats.reserved_bytes as usize,
        device.raw_allocated(),
        "every raw byte is accounted for: {stats}"
    );
    alloc.empty_cache().unwrap();
    pool.synchronize_all().unwrap();
    drop(alloc);
    assert_eq!(device.raw_allocated(), 0, "no block was lost");
}

#[test]
fn buffers_outliving_their_allocator_are_freed_safely() {
    let device = CpuDevice::new();
    let pool = StreamPool::new(device.clone(), StreamPoolConfig::default()).unwrap();
    let alloc = CachingAllocator::new(&pool, AllocatorConfig::default());
    let s = pool.stream(1).unwrap();
    let a = alloc.alloc(10 << 20, s).unwrap();
    let b = alloc.alloc(100, s).unwrap();
    drop(alloc);
    drop((a, b));
    assert_eq!(
        device.raw_allocated(),
        0,
        "late frees went straight back to the device"
    );
}

/// A large block freed and allocated again on the same thread and stream comes back from the thread's
/// cache: no shared pool, no raw allocation, no event. A request up to two classes (a quarter) smaller
/// reuses it too; a block past the cache's largest (a quarter of the cap) goes through the shared pool.
#[test]
fn large_block_reuse_on_the_same_stream_comes_from_the_thread_cache() {
    let (pool, alloc) = setup(MemoryLimit::None);
    let s = pool.stream(1).unwrap();
    let a = alloc.alloc(3 << 20, s).unwrap();
    let ptr = addr_of(&a);
    drop(a);
    assert_eq!(alloc.stats().thread_cached_bytes, 3 << 20, "cached");
    let b = alloc.alloc(3 << 20, s).unwrap();
    assert_eq!(addr_of(&b), ptr);
    let stats = alloc.stats();
    assert_eq!(stats.large.thread_cache_hits, 1, "{stats}");
    assert_eq!(stats.large.hits, 1, "no shared-pool hit: {stats}");
    assert_eq!((stats.large.misses, stats.raw_allocs), (1, 1), "{stats}");
    assert_eq!(stats.thread_cache_hits, 1, "{stats}");
    assert_eq!(stats.thread_cached_bytes, 0, "{stats}");
    drop(b);
    // 2.75 MiB is the class below 3 MiB: the cached 3 MiB block serves it.
    let c = alloc.alloc((11 << 20) / 4, s).unwrap();
    assert_eq!((addr_of(&c), c.capacity()), (ptr, 3 << 20));
    drop(c);
    // 20 MiB is past the largest cached block (16 MiB by default): shared pool, no thread-cache hit.
    drop(alloc.alloc(20 << 20, s).unwrap());
    assert_eq!(alloc.stats().thread_cached_bytes, 3 << 20);
    let d = alloc.alloc(20 << 20, s).unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.large.thread_cache_hits, 2, "{stats}");
    assert_eq!(stats.large.hits, 3, "one shared-pool hit: {stats}");
    assert_eq!(
        alloc.event_pool().created(),
        0,
        "same-stream reuse needs no event"
    );
    drop(d);
}

/// Large blocks in a thread's cache count against its budget (three quarters of the cap) and are
/// trimmed past it; a large block past a quarter of the cap is never cached; nothing is lost.
#[test]
fn large_blocks_stay_within_the_thread_cache_budget() {
    let device = CpuDevice::new();
    let pool = StreamPool::new(device.clone(), StreamPoolConfig::default()).unwrap();
    let alloc = CachingAllocator::new(
        &pool,
        AllocatorConfig {
            thread_cache_bytes: 16 << 20, // large: 12 MiB budget, blocks up to 4 MiB
            ..Default::default()
        },
    );
    let s = pool.stream(1).unwrap();
    let bufs: Vec<_> = (0..6).map(|_| alloc.alloc(3 << 20, s).unwrap()).collect();
    let too_big = alloc.alloc(5 << 20, s).unwrap();
    drop(too_big);
    assert_eq!(alloc.stats().thread_cached_bytes, 0, "5 MiB bypasses");
    drop(bufs); // 18 MiB freed into a 12 MiB budget
    let stats = alloc.stats();
    assert!(stats.thread_cached_bytes <= 12 << 20, "{stats}");
    assert!(stats.thread_cached_bytes >= 3 << 20, "{stats}");
    assert_eq!(
        stats.reserved_bytes as usize,
        device.raw_allocated(),
        "{stats}"
    );
    alloc.empty_cache().unwrap();
    drop(alloc);
    pool.synchronize_all().unwrap();
    assert_eq!(device.raw_allocated(), 0, "no block was lost");
}

/// A thread that exits with large blocks in its cache returns them: allocated and thread-cached bytes
/// go back to 0 and the memory is reusable, then freeable.
#[test]
fn large_blocks_in_a_thread_cache_are_returned_at_thread_exit() {
    let device = CpuDevice::new();
    let pool = Arc::new(StreamPool::new(device.clone(), StreamPoolConfig::default()).unwrap());
    let alloc = Arc::new(CachingAllocator::new(&pool, AllocatorConfig::default()));
    let (a2, p2) = (alloc.clone(), pool.clone());
    std::thread::spawn(move || {
        let s = p2.stream(1).unwrap();
        let bufs: Vec<_> = [1_572_864, 3 << 20, 6 << 20, 4096]
            .iter()
            .map(|&n| a2.alloc(n, s).unwrap())
            .collect();
        drop(bufs);
        let stats = a2.stats();
        assert_eq!(
            stats.thread_cached_bytes,
            (1_572_864 + (9 << 20) + 4096),
            "{stats}"
        );
    })
    .join()
    .unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.allocated_bytes, 0, "{stats}");
    assert_eq!(stats.thread_cached_bytes, 0, "flushed at exit: {stats}");
    // The flushed blocks are in the shared pools: another stream reuses the 6 MiB one once s is done.
    pool.stream(1).unwrap().synchronize().unwrap();
    let b = alloc.alloc(6 << 20, pool.stream(2).unwrap()).unwrap();
    assert_eq!(alloc.stats().large.misses, 3, "reused: {}", alloc.stats());
    drop(b);
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().reserved_bytes, 0);
    drop(alloc);
    pool.synchronize_all().unwrap();
    assert_eq!(device.raw_allocated(), 0);
}

/// What the out-of-memory retry is guaranteed to reclaim: the large blocks in every thread's cache (here
/// another thread's, which is alive and idle), not only the calling thread's. The other thread's small
/// blocks stay in its cache (no lock reaches them).
#[test]
fn out_of_memory_retry_reclaims_large_blocks_from_another_threads_cache() {
    let (pool, alloc) = setup(MemoryLimit::Bytes(24 << 20));
    let (pool, alloc) = (Arc::new(pool), Arc::new(alloc));
    let s2 = pool.stream(2).unwrap();
    let (cached_tx, cached) = crossbeam_channel::bounded::<()>(0);
    let (exit, exit_rx) = crossbeam_channel::bounded::<()>(0);
    let (a2, p2) = (alloc.clone(), pool.clone());
    let holder = std::thread::spawn(move || {
        let s1 = p2.stream(1).unwrap();
        let bufs: Vec<_> = [8 << 20, 6 << 20, 512 << 10]
            .iter()
            .map(|&n| a2.alloc(n, s1).unwrap())
            .collect();
        drop(bufs); // all three cached in this thread
        cached_tx.send(()).unwrap();
        exit_rx.recv().unwrap();
    });
    cached.recv().unwrap();
    let stats = alloc.stats();
    assert_eq!(
        stats.thread_cached_bytes,
        (14 << 20) + (512 << 10),
        "{stats}"
    );
    // 14.5 MiB reserved + 16 MiB > 24 MiB: only reclaiming the other thread's large blocks makes room.
    let big = alloc
        .alloc(16 << 20, s2)
        .expect("the retry reclaims the other thread's large blocks");
    let stats = alloc.stats();
    assert_eq!(
        stats.thread_cached_bytes,
        512 << 10,
        "small blocks stay: {stats}"
    );
    assert_eq!(stats.reserved_bytes, (16 << 20) + (512 << 10), "{stats}");
    exit.send(()).unwrap();
    holder.join().unwrap();
    drop(big);
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().reserved_bytes, 0);
}

/// `empty_cache` reaches other threads' large blocks as well (and, as before, not their small ones).
#[test]
fn empty_cache_frees_large_blocks_cached_by_other_threads() {
    let (pool, alloc) = setup(MemoryLimit::None);
    let (pool, alloc) = (Arc::new(pool), Arc::new(alloc));
    let (cached_tx, cached) = crossbeam_channel::bounded::<()>(0);
    let (exit, exit_rx) = crossbeam_channel::bounded::<()>(0);
    let (a2, p2) = (alloc.clone(), pool.clone());
    let holder = std::thread::spawn(move || {
        let s = p2.stream(1).unwrap();
        drop(a2.alloc(10 << 20, s).unwrap());
        drop(a2.alloc(4096, s).unwrap());
        cached_tx.send(()).unwrap();
        exit_rx.recv().unwrap();
        // The cache goes on working after its large lists were emptied from outside.
        let b = a2.alloc(10 << 20, s).unwrap();
        drop(b);
        assert_eq!(a2.stats().thread_cached_bytes, (10 << 20) + 4096);
    });
    cached.recv().unwrap();
    alloc.empty_cache().unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.reserved_bytes, 4096, "{stats}");
    assert_eq!(stats.thread_cached_bytes, 4096, "{stats}");
    exit.send(()).unwrap();
    holder.join().unwrap();
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().reserved_bytes, 0);
}

/// A request past the largest size class fails with out-of-memory before any rounding (rounding
/// `usize::MAX` up once overflowed to a zero-byte block in release builds).
#[test]
fn a_request_past_the_largest_class_is_out_of_memory() {
    let (pool, alloc) = setup(MemoryLimit::None);
    let s = pool.stream(1).unwrap();
    for bytes in [usize::MAX, usize::MAX / 2 + 2] {
        match alloc.alloc(bytes, s) {
            Err(RuntimeError::OutOfMemory { requested, .. }) => assert_eq!(requested, bytes),
            Ok(b) => panic!("{bytes} bytes gave a buffer of {}", b.capacity()),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(alloc.stats().reserved_bytes, 0);
}
