//! Allocator statistics, kept per thread and summed on read.
//!
//! Each thread's cache ([`super::thread_cache`]) owns a [`ThreadStats`] that only that thread writes,
//! with plain load-and-store on its own cache line: no atomic read-modify-write and no shared line on
//! the alloc/free path. The one exception is `large_cached_bytes`, the bytes of the thread's large-block
//! list, which whoever holds that list's lock writes (the thread itself, or `empty_cache` and the
//! out-of-memory path reclaiming the blocks): still one writer at a time, so load-and-store still loses
//! no update. The [`StatsRegistry`] lists the live threads' counters (registration happens
//! once per thread, on its first allocation); when a thread exits its counters are folded into the
//! registry's `retired` totals, so counts are never lost and nothing is kept per dead thread. Work done
//! while a thread's cache is unavailable (during thread-local destruction) is counted straight into
//! `retired` with atomic adds. A sum read while other threads allocate is a snapshot, not an instant.
//!
//! Reserved bytes (raw memory held) and their peak are global atomics, touched only on the slow path
//! (raw allocation and free). A global *allocated* peak is not kept: it would need one shared counter
//! on every allocation, the contention fix 1 removes.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use std::sync::Arc;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

/// One thread's counters. Written only by that thread (load + store, Relaxed), read by anyone; or,
/// as the registry's `retired` totals, written by anyone with atomic adds.
#[derive(Default)]
pub(crate) struct ThreadStats {
    pub(crate) allocated: AtomicI64,
    pub(crate) allocs: AtomicU64,
    pub(crate) frees: AtomicU64,
    pub(crate) small_cache_hits: AtomicU64,
    pub(crate) large_cache_hits: AtomicU64,
    pub(crate) small_pool_hits: AtomicU64,
    pub(crate) small_misses: AtomicU64,
    pub(crate) large_pool_hits: AtomicU64,
    pub(crate) large_misses: AtomicU64,
    /// Bytes of small blocks in the thread's cache.
    pub(crate) thread_cached_bytes: AtomicI64,
    /// Bytes of large blocks in the thread's cache; written under its lock (module doc).
    pub(crate) large_cached_bytes: AtomicI64,
}

/// Adds to a single-writer counter without an atomic read-modify-write.
#[inline]
pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    // Relaxed load + store: only the owning thread writes this counter, so no update can be lost.
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

/// Adds a signed amount to a single-writer counter (see [`bump`]).
#[inline]
pub(crate) fn bump_signed(counter: &AtomicI64, by: i64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

/// How to add to a [`ThreadStats`]: `Owner` for the one writing thread (load + store), `Shared` for
/// the retired totals that many threads add to (atomic read-modify-write).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    Owner,
    Shared,
}

impl Writer {
    #[inline]
    pub(crate) fn add(self, counter: &AtomicU64, by: u64) {
        match self {
            Writer::Owner => bump(counter, by),
            Writer::Shared => {
                counter.fetch_add(by, Ordering::Relaxed);
            }
        }
    }

    #[inline]
    pub(crate) fn add_signed(self, counter: &AtomicI64, by: i64) {
        match self {
            Writer::Owner => bump_signed(counter, by),
            Writer::Shared => {
                counter.fetch_add(by, Ordering::Relaxed);
            }
        }
    }
}

impl ThreadStats {
    fn counters(&self) -> [&AtomicU64; 8] {
        [
            &self.allocs,
            &self.frees,
            &self.small_cache_hits,
            &self.large_cache_hits,
            &self.small_pool_hits,
            &self.small_misses,
            &self.large_pool_hits,
            &self.large_misses,
        ]
    }
}

pub(crate) type SharedThreadStats = Arc<CachePadded<ThreadStats>>;

/// The live threads' counters and the totals of the threads that exited.
#[derive(Default)]
pub(crate) struct StatsRegistry {
    /// Locked when a thread first allocates, when it exits, and when stats are read: never per op.
    live: Mutex<Vec<SharedThreadStats>>,
    pub(crate) retired: ThreadStats,
}

impl StatsRegistry {
    /// Counters for a new thread.
    pub(crate) fn register(&self) -> SharedThreadStats {
        let stats = SharedThreadStats::default();
        self.live.lock().push(stats.clone());
        stats
    }

    /// Folds an exiting thread's counters into the retired totals.
    pub(crate) fn retire(&self, stats: &SharedThreadStats) {
        let mut live = self.live.lock();
        live.retain(|s| !Arc::ptr_eq(s, stats));
        for (from, to) in stats.counters().into_iter().zip(self.retired.counters()) {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.retired
            .allocated
            .fetch_add(stats.allocated.load(Ordering::Relaxed), Ordering::Relaxed);
        for (from, to) in [
            (
                &stats.thread_cached_bytes,
                &self.retired.thread_cached_bytes,
            ),
            (&stats.large_cached_bytes, &self.retired.large_cached_bytes),
        ] {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// Hits and misses of one pool kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Requests served from cached blocks (thread cache or shared pool).
    pub hits: u64,
    /// Of `hits`, those served by the calling thread's cache, with no shared lock.
    pub thread_cache_hits: u64,
    /// Requests that needed a raw device allocation.
    pub misses: u64,
}

/// A snapshot of an allocator's statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AllocatorStats {
    /// Bytes in live buffers (rounded block sizes).
    pub allocated_bytes: i64,
    /// Bytes of raw device memory held (live buffers + cached blocks).
    pub reserved_bytes: u64,
    /// The most raw device memory held at once.
    pub peak_reserved_bytes: u64,
    /// Bytes held in per-thread caches, small and large blocks (a subset of reserved).
    pub thread_cached_bytes: i64,
    /// Allocations and frees.
    pub allocs: u64,
    /// Frees.
    pub frees: u64,
    /// Requests served by the calling thread's cache, with no shared lock (small and large; the sum of
    /// the two pools' `thread_cache_hits`).
    pub thread_cache_hits: u64,
    /// Small pools (≤ 1 MiB): hits include thread-cache hits.
    pub small: PoolStats,
    /// Large pools: hits include thread-cache hits.
    pub large: PoolStats,
    /// Raw device allocations and frees so far.
    pub raw_allocs: u64,
    /// Raw device frees so far.
    pub raw_frees: u64,
    /// The memory limit in bytes, if any.
    pub limit_bytes: Option<u64>,
}

impl AllocatorStats {
    /// Fraction of requests served from cache.
    pub fn hit_rate(&self) -> f64 {
        let hits = self.small.hits + self.large.hits;
        let total = hits + self.small.misses + self.large.misses;
        if total == 0 {
            0.0
        } else {
            hits as f64 / total as f64
        }
    }
}

impl fmt::Display for AllocatorStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "allocated {} B, reserved {} B (peak {} B), thread caches {} B, hit rate {:.1}% \
             (small {}/{} hits/misses, {} of the hits in a thread cache; large {}/{}, {})",
            self.allocated_bytes,
            self.reserved_bytes,
            self.peak_reserved_bytes,
            self.thread_cached_bytes,
            self.hit_rate() * 100.0,
            self.small.hits,
            self.small.misses,
            self.small.thread_cache_hits,
            self.large.hits,
            self.large.misses,
            self.large.thread_cache_hits
        )
    }
}

/// Global counters of the slow path.
#[derive(Default)]
pub(crate) struct GlobalStats {
    pub(crate) reserved: AtomicU64,
    pub(crate) peak_reserved: AtomicU64,
    pub(crate) raw_allocs: AtomicU64,
    pub(crate) raw_frees: AtomicU64,
}

/// Sums the per-thread counters and the global ones.
pub(crate) fn snapshot(
    registry: &StatsRegistry,
    global: &GlobalStats,
    limit: Option<u64>,
) -> AllocatorStats {
    let mut s = AllocatorStats {
        limit_bytes: limit,
        ..Default::default()
    };
    let live = registry.live.lock();
    for t in live.iter().map(|t| &***t).chain([&registry.retired]) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.allocated_bytes += t.allocated.load(Ordering::Relaxed);
        s.thread_cached_bytes += t.thread_cached_bytes.load(Ordering::Relaxed)
            + t.large_cached_bytes.load(Ordering::Relaxed);
        s.allocs += load(&t.allocs);
        s.frees += load(&t.frees);
        s.small.thread_cache_hits += load(&t.small_cache_hits);
        s.small.hits += load(&t.small_cache_hits) + load(&t.small_pool_hits);
        s.small.misses += load(&t.small_misses);
        s.large.thread_cache_hits += load(&t.large_cache_hits);
        s.large.hits += load(&t.large_cache_hits) + load(&t.large_pool_hits);
        s.large.misses += load(&t.large_misses);
    }
    s.thread_cache_hits = s.small.thread_cache_hits + s.large.thread_cache_hits;
    s.reserved_bytes = global.reserved.load(Ordering::Relaxed);
    s.peak_reserved_bytes = global.peak_reserved.load(Ordering::Relaxed);
    s.raw_allocs = global.raw_allocs.load(Ordering::Relaxed);
    s.raw_frees = global.raw_frees.load(Ordering::Relaxed);
    s
}
