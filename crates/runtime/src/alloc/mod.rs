//! [`CachingAllocator`] and [`Buffer`]: every device buffer of an inference comes from here.
//!
//! This carries the design's fix 1 ("sharded allocator with per-thread caches"): the seed's one
//! recursive mutex around malloc, free and event recording is replaced by layers, each in its own file,
//! each wrapping the next as RMM's memory resources do:
//!
//! 1. [`thread_cache`] — per thread, small blocks (≤ 1 MiB) and large ones up to a quarter of
//!    `thread_cache_bytes` (16 MiB by default), with no shared lock: a thread on its own stream that
//!    allocates and frees the same sizes again and again touches nothing another thread writes (short
//!    of `empty_cache` or an out-of-memory retry taking its large blocks back).
//! 2. [`free_lists`] — the shared pools, one lock per size class (`size_class`: 44 small classes, eight large
//!    ones per power of two), so two sizes never share a lock; no device call under any of them.
//! 3. raw device memory ([`Device::alloc_raw`]) under a memory limit, with free-the-cache-and-retry
//!    before a clear out-of-memory error that carries the [`AllocatorStats`]. The backend reports only
//!    that the device refused (`RuntimeError::DeviceOutOfMemory`); the limit and the statistics are
//!    this layer's to add.
//!
//! Statistics ([`stats`]) are per thread and summed on read; hits and misses are counted per pool kind
//! (small / large), with the thread-cache share of the hits. A [`Buffer`] (`buffer`) owns its
//! [`block::Block`] — the backend buffer and its metadata — so freeing needs no global map.
//! [`AllocatorConfig`] holds the knobs (`config`). [`GraphPool`] (`graph_pool`) keeps the blocks of
//! captured graphs private: while a thread routes to one, its allocations and frees go there instead.
//!
//! # The stream-ordered contract (as RMM states it)
//!
//! An allocator serves the streams of one [`StreamPool`] (blocks remember their stream by index). A
//! buffer is allocated for a stream and is safe to use on that stream at once. To use it on another
//! stream, call [`Buffer::record_stream`]; the block is then not reused until that stream's work (up to
//! the buffer's drop) is done too. A buffer freed on stream S is reused by later work on S at once, and
//! by other streams only after an event shows S's work on it is done (see [`block`]).
//!
//! # Out of memory
//!
//! A raw allocation that would pass the limit (or that the device refuses) first frees what the
//! allocator can reach, then retries once, then fails with [`RuntimeError::OutOfMemory`]. What is
//! freed, and so what the retry is guaranteed to find: every block in the shared pools, every block in
//! the calling thread's cache, and every large block in every other thread's cache (taken out under that
//! cache's own lock, freed once its stream's work is done). Not reached: the small blocks in other
//! threads' caches — at most a quarter of `thread_cache_bytes` per thread, 16 MiB by default — which
//! stay until those threads exit, overflow or switch streams; and, of course, live buffers.
//!
//! # Lifetime
//!
//! The allocator's state is an `Arc` held by the [`CachingAllocator`], by each thread's cache for it
//! and, through a per-thread anchor, by every live [`Buffer`] (module `buffer`): buffers clone their
//! thread's anchor, not the shared state, so allocating and freeing touch no reference count another
//! thread writes. The state holds the stream pool's state, so the device and its streams live until
//! the last of those is gone. Dropping the [`CachingAllocator`] frees the cache it can reach; a buffer
//! dropped afterwards frees its memory directly, after its stream has drained.

mod anchor;
pub(crate) mod block;
mod buffer;
mod config;
mod free_lists;
mod graph_pool;
mod size_class;
mod stats;
mod thread_cache;

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use self::block::Block;
use self::buffer::ThreadAnchor;
use self::free_lists::SharedFreeLists;
use self::size_class::SizeClass;
use self::stats::{GlobalStats, StatsRegistry, ThreadStats, Writer};
use self::thread_cache::{CacheLimits, LargeCaches, ThreadCache};
use crate::device::Device;
use crate::error::{Result, RuntimeError};
use crate::stream::{Event, EventPool, Stream, StreamPool, StreamPoolState};

pub use self::buffer::Buffer;
pub use self::config::{AllocatorConfig, MemoryLimit, MEMORY_LIMIT_ENV};
pub use self::graph_pool::{GraphPool, PoolRoute};
pub use self::size_class::{SMALL_CLASSES, SMALL_LIMIT};
pub use self::stats::{AllocatorStats, PoolStats};

static NEXT_ALLOCATOR_ID: AtomicU64 = AtomicU64::new(1);

/// The allocator's shared state (module doc, "Lifetime").
pub(crate) struct AllocatorState<D: Device> {
    id: u64,
    device: D,
    /// The pool whose streams the blocks name by index.
    streams: Arc<StreamPoolState<D>>,
    free_lists: SharedFreeLists<D>,
    events: Arc<EventPool<D>>,
    stats: StatsRegistry,
    global: GlobalStats,
    /// Bytes; `u64::MAX` = none. Read on the raw path only.
    limit: AtomicU64,
    /// What each thread's cache may hold (from `thread_cache_bytes`).
    cache: CacheLimits,
    /// Every thread's large-block lists, for `empty_cache` and the out-of-memory retry.
    large_caches: LargeCaches<D>,
    /// Set when the `CachingAllocator` is dropped (Release; read Acquire on frees).
    closed: AtomicBool,
}

/// A caching device-memory allocator. One per device; shared by every thread by reference.
pub struct CachingAllocator<D: Device> {
    state: Arc<AllocatorState<D>>,
}

impl<D: Device> CachingAllocator<D> {
    /// An allocator for the device of `streams`, serving those streams.
    pub fn new(streams: &StreamPool<D>, config: AllocatorConfig) -> Self {
        let device = streams.device().clone();
        let limit = config.memory_limit.bytes(device.memory_capacity());
        let state = Arc::new(AllocatorState {
            id: NEXT_ALLOCATOR_ID.fetch_add(1, Ordering::Relaxed),
            events: EventPool::new(device.clone()),
            device,
            streams: streams.state().clone(),
            free_lists: SharedFreeLists::new(),
            stats: StatsRegistry::default(),
            global: GlobalStats::default(),
            limit: AtomicU64::new(limit),
            cache: CacheLimits::new(config.thread_cache_bytes),
            large_caches: LargeCaches::new(),
            closed: AtomicBool::new(false),
        });
        Self { state }
    }

    /// A buffer of at least `bytes` bytes for use on `stream` (one of the allocator's pool). Contents
    /// are unspecified.
    #[inline]
    pub fn alloc(&self, bytes: usize, stream: Stream<'_, D>) -> Result<Buffer<D>> {
        let state = &self.state;
        if !stream.is_of(&state.streams) {
            return Err(foreign_stream(stream));
        }
        let stream = stream.index() as u32;
        let class = SizeClass::of(bytes);
        if graph_pool::routed(state.id) {
            return graph_pool::alloc_routed(state, bytes, class);
        }
        // Fast path: a small thread-cache hit, counted in the same thread-local visit. (Large blocks'
        // thread-cache path is in `alloc_slow`: out of line, it costs the small path nothing.)
        if let Some(class) = class.filter(|c| c.is_small()) {
            let hit = thread_cache::with_cache(state, |c| {
                let block = c.pop_small(class, stream)?;
                let stats = &c.stats;
                Writer::Owner.add(&stats.allocs, 1);
                Writer::Owner.add_signed(&stats.allocated, block.size as i64);
                Some((block, c.issue()))
            });
            if let Some(Some((block, anchor))) = hit {
                return Ok(Buffer::new(block, bytes, anchor));
            }
        }
        let block = state.alloc_slow(bytes, class, stream)?;
        Ok(Buffer::new(block, bytes, state.anchor()))
    }

    /// A private pool for the graphs that will replay on `stream` (see [`GraphPool`]); `stream` must
    /// be of the allocator's pool.
    pub fn graph_pool(&self, stream: Stream<'_, D>) -> Result<GraphPool<D>> {
        if !stream.is_of(&self.state.streams) {
            return Err(foreign_stream(stream));
        }
        Ok(GraphPool::new(self.state.clone(), stream.index() as u32))
    }

    /// Frees every cached block this allocator can reach — the shared pools, the calling thread's cache
    /// and the large blocks in every thread's cache — after their streams' work on them is done. Other
    /// threads' small blocks are theirs (no lock reaches them; at most a quarter of
    /// `thread_cache_bytes` per thread); they flush when those threads exit, overflow or switch streams.
    pub fn empty_cache(&self) -> Result<()> {
        self.state.empty_cache()
    }

    /// A snapshot of the statistics (per-thread counters summed).
    pub fn stats(&self) -> AllocatorStats {
        self.state.stats_snapshot()
    }

    /// Restarts peak tracking from the memory reserved now (PyTorch's `reset_peak_memory_stats`), so a
    /// benchmark can report the peak of one phase.
    pub fn reset_peak_stats(&self) {
        let global = &self.state.global;
        global
            .peak_reserved
            .store(global.reserved.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Sets the memory limit; takes effect on the next raw allocation.
    pub fn set_memory_limit(&self, limit: MemoryLimit) {
        let bytes = limit.bytes(self.state.device.memory_capacity());
        self.state.limit.store(bytes, Ordering::Relaxed);
    }

    /// The pool the allocator takes its events from (exposed for statistics: events created).
    pub fn event_pool(&self) -> &Arc<EventPool<D>> {
        &self.state.events
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.state.device
    }
}

impl<D: Device> Drop for CachingAllocator<D> {
    fn drop(&mut self) {
        // Release pairs with the Acquire in `AllocatorState::free`: later frees go straight to the device.
        self.state.closed.store(true, Ordering::Release);
        if let Err(e) = self.state.empty_cache() {
            tracing::warn!(error = %e, "emptying the cache of a dropped allocator failed");
        }
        // This thread's cache goes now; other threads' on their next first use of an allocator or at
        // their exit (each frees its blocks then).
        thread_cache::remove_cache(self.state.id);
    }
}

/// The error for a stream of another pool than the allocator's.
#[cold]
fn foreign_stream<D: Device>(stream: Stream<'_, D>) -> RuntimeError {
    RuntimeError::InvalidConfig {
        name: "stream",
        value: format!("{stream:?}"),
        allowed: "a stream of the pool the allocator was created with",
    }
}

impl<D: Device> AllocatorState<D> {
    /// Whether the `CachingAllocator` was dropped.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The handle of this allocator's stream `index`.
    #[inline]
    fn stream(&self, index: u32) -> Stream<'_, D> {
        self.streams.stream(index)
    }

    /// What a buffer allocated now on this thread holds to keep the state alive: a share of the thread
    /// cache's anchor, or a detached anchor while no cache is at hand.
    fn anchor(self: &Arc<Self>) -> NonNull<ThreadAnchor<D>> {
        thread_cache::with_cache(self, ThreadCache::issue)
            .unwrap_or_else(|| anchor::Anchor::detached(self.clone()))
    }
    fn stats_snapshot(&self) -> AllocatorStats {
        let limit = self.limit.load(Ordering::Relaxed);
        stats::snapshot(
            &self.stats,
            &self.global,
            (limit != u64::MAX).then_some(limit),
        )
    }

    /// Runs `f` on this thread's counters, or on the retired totals when the thread's cache is gone.
    #[inline]
    fn count(self: &Arc<Self>, f: impl FnOnce(&ThreadStats, Writer)) {
        let mut f = Some(f);
        let counted = thread_cache::with_cache(self, |c| {
            if let Some(f) = f.take() {
                f(&c.stats, Writer::Owner)
            }
        });
        if counted.is_none() {
            if let Some(f) = f.take() {
                f(&self.stats.retired, Writer::Shared)
            }
        }
    }

    /// The rest of `alloc`: a large block from this thread's cache (no shared lock), else a shared pool,
    /// else raw memory. `class` is `None` past the largest class. Out of line, so the small fast path
    /// stays short; a large request pays for the call, which is small next to its bytes.
    #[inline(never)]
    fn alloc_slow(
        self: &Arc<Self>,
        bytes: usize,
        class: Option<SizeClass>,
        stream: u32,
    ) -> Result<Block<D>> {
        let Some(class) = class else {
            return Err(self.out_of_memory(bytes));
        };
        if !class.is_small() && self.cache.caches(class) {
            let hit = thread_cache::with_cache(self, |c| {
                let block = c.pop_large(class, stream)?;
                let stats = &c.stats;
                Writer::Owner.add(&stats.allocs, 1);
                Writer::Owner.add_signed(&stats.allocated, block.size as i64);
                Some(block)
            });
            if let Some(Some(block)) = hit {
                return Ok(block);
            }
        }
        let (block, hit) = match self.free_lists.take(class, stream) {
            Some(adopted) => {
                if let Some(previous) = adopted.after {
                    self.order_after(previous, stream);
                }
                (adopted.block, true)
            }
            None => (self.alloc_block(class, stream)?, false),
        };
        let size = block.size;
        self.count(|s, w| {
            let counter = match (class.is_small(), hit) {
                (true, true) => &s.small_pool_hits,
                (true, false) => &s.small_misses,
                (false, true) => &s.large_pool_hits,
                (false, false) => &s.large_misses,
            };
            w.add(counter, 1);
            w.add(&s.allocs, 1);
            w.add_signed(&s.allocated, size as i64);
        });
        Ok(block)
    }

    /// A new block from raw memory, within the limit; frees the cache (module doc, "Out of memory") and
    /// retries once before failing.
    #[cold]
    fn alloc_block(self: &Arc<Self>, class: SizeClass, stream: u32) -> Result<Block<D>> {
        let size = class.size();
        let mut last_error = None;
        for attempt in 0..2 {
            if attempt == 1 {
                self.empty_cache()?;
            }
            if !self.try_reserve(size) {
                continue;
            }
            match self.device.alloc_raw(size) {
                Ok(raw) => {
                    self.global.raw_allocs.fetch_add(1, Ordering::Relaxed);
                    return Ok(Block {
                        raw,
                        size,
                        class,
                        stream,
                        pending: Vec::new(),
                    });
                }
                Err(e) => {
                    self.unreserve(size);
                    last_error = Some(e);
                }
            }
        }
        match last_error {
            // The device's own refusal becomes this layer's error, with the limit and the stats.
            None | Some(RuntimeError::DeviceOutOfMemory { .. }) => Err(self.out_of_memory(size)),
            Some(e) => Err(e),
        }
    }

    /// The error for a request of `requested` bytes that does not fit, with the stats.
    #[cold]
    fn out_of_memory(&self, requested: usize) -> RuntimeError {
        let limit = self.limit.load(Ordering::Relaxed);
        RuntimeError::OutOfMemory {
            requested,
            limit: if limit == u64::MAX {
                "none (device memory)".into()
            } else {
                format!("{limit} bytes")
            },
            stats: self.stats_snapshot().to_string(),
        }
    }

    /// Adds `size` to the reserved bytes if that stays within the limit.
    fn try_reserve(&self, size: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        // Relaxed: the counter is the only shared datum; the CAS makes concurrent reservations exact.
        let reserved =
            self.global
                .reserved
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                    r.checked_add(size as u64).filter(|&n| n <= limit)
                });
        match reserved {
            Ok(before) => {
                self.global
                    .peak_reserved
                    .fetch_max(before + size as u64, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    fn unreserve(&self, size: usize) {
        self.global
            .reserved
            .fetch_sub(size as u64, Ordering::Relaxed);
    }

    /// Frees a block's raw memory once its work is done.
    fn free_raw_block(&self, block: Block<D>) {
        if let Err(e) =
            block
                .wait_idle()
                .and_then(|()| match self.stream(block.stream).synchronize() {
                    // A stream whose pool is gone was drained at shutdown.
                    Err(RuntimeError::Dropped { .. }) => Ok(()),
                    other => other,
                })
        {
            tracing::warn!(error = %e, "stream failed before a block was freed; freeing it anyway");
        }
        let size = block.size;
        // SAFETY: the block came from `alloc_raw` on this device, is owned here (so freed once), and
        // the waits above ensure no pending work uses it.
        unsafe { self.device.free_raw(block.raw) };
        self.unreserve(size);
        self.global.raw_frees.fetch_add(1, Ordering::Relaxed);
    }

    fn empty_cache(self: &Arc<Self>) -> Result<()> {
        thread_cache::with_cache(self, |c| c.flush_all());
        // Other threads' large blocks: on their home streams with no event, which `free_raw_block`
        // drains before freeing.
        for block in self.large_caches.reclaim() {
            self.free_raw_block(block);
        }
        for block in self.free_lists.drain() {
            self.free_raw_block(block);
        }
        Ok(())
    }

    /// Records a pooled event on `stream`, or `None` if the stream's pool is gone (its work was drained).
    /// Falls back to synchronizing the stream if no event can be had.
    fn record_event(&self, stream: u32) -> Option<Event<D>> {
        let stream = self.stream(stream);
        let mut event = match self.events.event() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "no event for a cross-stream free; synchronizing the stream instead");
                let _ = stream.synchronize();
                return None;
            }
        };
        match event.record(&stream) {
            Ok(()) => Some(event),
            Err(RuntimeError::Dropped { .. }) => None,
            Err(e) => {
                tracing::warn!(error = %e, "recording an event failed; synchronizing the stream instead");
                let _ = stream.synchronize();
                None
            }
        }
    }

    /// A block enters the shared pools (or, after the allocator is dropped, goes back to the device).
    fn release_to_pools(&self, block: Block<D>) {
        // Acquire pairs with the Release in `CachingAllocator::drop`.
        if self.closed.load(Ordering::Acquire) {
            self.free_raw_block(block);
        } else {
            self.free_lists.push(block);
        }
    }

    /// The free path of a buffer (of `len` bytes requested): thread cache when possible, else shared
    /// pools with events, or a graph pool while this thread routes to one. In the same thread-local
    /// visit, this thread's cache takes back the buffer's share of `anchor` if it issued it; the result
    /// says whether it did (else the caller releases it remotely).
    #[inline]
    fn free(
        self: &Arc<Self>,
        block: Block<D>,
        len: usize,
        used_on: &[u32],
        anchor: NonNull<ThreadAnchor<D>>,
    ) -> bool {
        let block = if graph_pool::routed(self.id) {
            match graph_pool::free_routed(block, len, used_on) {
                Some(block) => block,
                None => {
                    return thread_cache::with_cache(self, |c| c.take_back(anchor)).unwrap_or(false)
                }
            }
        } else {
            block
        };
        let size = block.size as i64;
        let count_free = |s: &ThreadStats, w: Writer| {
            w.add_signed(&s.allocated, -size);
            w.add(&s.frees, 1);
        };
        let cacheable = used_on.is_empty()
            && self.cache.caches(block.class)
            && !self.closed.load(Ordering::Acquire);
        let mut block = Some(block);
        let taken_back = thread_cache::with_cache(self, |c| {
            let taken_back = c.take_back(anchor);
            if cacheable {
                let freed = block
                    .take()
                    .expect("invariant violated: block taken twice (this is a bug)");
                match c.push(freed) {
                    Ok(()) => count_free(&c.stats, Writer::Owner),
                    Err(refused) => block = Some(refused),
                }
            }
            taken_back
        })
        .unwrap_or(false);
        if let Some(block) = block {
            self.count(count_free);
            self.free_shared(block, used_on);
        }
        taken_back
    }

    /// Makes `stream`'s later work wait (device-side) for `previous`'s work so far: a block freed on
    /// `previous` without an event changes streams (see [`block`]).
    #[cold]
    fn order_after(&self, previous: u32, stream: u32) {
        if let Some(event) = self.record_event(previous) {
            if let Err(e) = self.stream(stream).wait(&event) {
                tracing::warn!(error = %e, "a cross-stream wait failed; synchronizing the previous stream instead");
                let _ = event.synchronize();
            }
        }
    }

    /// Publishes a block to the shared pools: with no event when only its own stream used it (another
    /// stream that takes it orders itself after this one then), else behind one event per stream that
    /// used it.
    #[cold]
    fn free_shared(&self, mut block: Block<D>, used_on: &[u32]) {
        if used_on.is_empty() {
            self.release_to_pools(block);
            return;
        }
        for stream in std::iter::once(block.stream).chain(used_on.iter().copied()) {
            if let Some(event) = self.record_event(stream) {
                block.pending.push((stream, Arc::new(event)));
            }
        }
        self.release_to_pools(block);
    }
}

impl<D: Device> Drop for AllocatorState<D> {
    fn drop(&mut self) {
        // A block released while the allocator closed may have reached a free list after
        // `CachingAllocator::drop` drained them; nothing else can reach it now.
        for block in self.free_lists.drain() {
            self.free_raw_block(block);
        }
    }
}
