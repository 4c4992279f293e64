//! [`ThreadCache`]: per-thread lists of free blocks, so the common alloc/free pair takes no shared lock
//! (fix 1, "per-thread caches"), for small blocks and for large ones up to a limit.
//!
//! Each thread has, per allocator it uses, one LIFO list per small size class and one per large size
//! class up to a quarter of the cache's cap ([`CacheLimits`]). The fast paths are a thread-local lookup
//! and a `Vec` push or pop (plus an uncontended lock for large blocks, below), as mimalloc's are a pop
//! from a page's free list; every rare path (first use, stream switch, overflow, thread exit) is a
//! `#[cold]` function.
//!
//! The large lists sit behind a lock of their own (a [`LargeCache`]), which only this thread takes on
//! the alloc/free path — uncontended, on this thread's own cache line. The lock is there so that
//! another thread can take this thread's large blocks back in `empty_cache` and in the out-of-memory
//! retry ([`LargeCaches::reclaim`]): without it, up to three quarters of every thread's cap would be
//! out of the reach of a memory limit. The small lists are this thread's alone (no lock at all).
//!
//! # Invariants
//!
//! - A cache holds blocks of one stream only, its *home*: the stream of its last allocation. Blocks in
//!   it have no pending events — stream order alone makes them safe to reuse on the home stream, and
//!   a reclaiming thread that takes large blocks out synchronizes that stream before freeing them.
//! - Allocating on another stream flushes the cache and changes the home; freeing a block of another
//!   stream (a cross-thread or cross-stream free) or one marked with `record_stream` bypasses the cache
//!   and goes to the shared pools (see [`super::block`] for how another stream then takes it), so a
//!   cache never hoards blocks its thread cannot use.
//! - The cache holds at most `thread_cache_bytes` (see [`super::AllocatorConfig`]): small blocks at most
//!   a quarter of it, large blocks at most the other three quarters, and no large block larger than a
//!   quarter of it (larger ones bypass the cache, so one block never flushes all others). Past either
//!   budget the oldest blocks of that kind's largest classes are flushed until it holds half its budget.
//! - A flush records one event on the home stream for the whole batch and pushes the blocks to the shared
//!   pools, where other streams can reuse them once the event completes. No device call is made with a
//!   large-list lock held: blocks are taken out under it and flushed after it is released.
//! - At thread exit every cache flushes (or, if its allocator was dropped, frees its blocks).

use std::any::Any;
use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use super::anchor::Anchor;
use super::block::Block;
use super::buffer::ThreadAnchor;
use super::free_lists::LARGE_REUSE_CLASSES;
use super::size_class::{SizeClass, CLASSES, SMALL_CLASSES};
use super::stats::{SharedThreadStats, ThreadStats, Writer};
use super::AllocatorState;
use crate::device::Device;

/// What a thread cache may hold, derived from `thread_cache_bytes` (module doc, "Invariants").
#[derive(Clone, Copy, Debug)]
pub(crate) struct CacheLimits {
    /// Bytes of small blocks before a trim.
    small_bytes: usize,
    /// Bytes of large blocks before a trim.
    large_bytes: usize,
    /// Classes `0..classes` are cached: every small one and the large ones up to the largest block.
    classes: usize,
}

impl CacheLimits {
    pub(crate) fn new(thread_cache_bytes: usize) -> Self {
        let quarter = thread_cache_bytes / 4;
        let large_classes = (SMALL_CLASSES..CLASSES)
            .take_while(|&i| SizeClass(i as u16).size() <= quarter)
            .count();
        Self {
            small_bytes: quarter,
            large_bytes: thread_cache_bytes - quarter,
            classes: SMALL_CLASSES + large_classes,
        }
    }

    /// Whether blocks of `class` go through thread caches.
    #[inline]
    pub(crate) fn caches(&self, class: SizeClass) -> bool {
        class.index() < self.classes
    }
}

pub(crate) struct ThreadCache<D: Device> {
    owner: Arc<AllocatorState<D>>,
    /// This thread's share of the allocator's state, lent to the buffers it allocates
    /// (`super::buffer`, "biased reference counting"); orphaned when the cache is dropped.
    anchor: NonNull<ThreadAnchor<D>>,
    /// Buffers issued with `anchor` and not taken back by this cache.
    issued: usize,
    /// One LIFO list per small class; this thread's alone.
    small: Vec<Vec<Block<D>>>,
    small_bytes: usize,
    /// The large lists; locked by this thread per large op, by others only to reclaim (module doc).
    large: Arc<LargeCache<D>>,
    /// The index of the home stream (module doc, "Invariants").
    home: Option<u32>,
    /// This thread's allocator counters (see [`super::stats`]).
    pub(crate) stats: SharedThreadStats,
}

/// One thread's large-block lists, reachable by other threads through [`LargeCaches`].
pub(crate) struct LargeCache<D: Device> {
    lists: CachePadded<Mutex<LargeLists<D>>>,
    /// The owning thread's counters: `large_cached_bytes` is written under `lists`' lock.
    stats: SharedThreadStats,
}

struct LargeLists<D: Device> {
    /// One LIFO list per cached large class (index − [`SMALL_CLASSES`]).
    lists: Vec<Vec<Block<D>>>,
    bytes: usize,
}

impl<D: Device> LargeLists<D> {
    /// Called with the lock held, which makes this the one writer of `large_cached_bytes`.
    #[inline]
    fn account(&mut self, delta: i64, stats: &ThreadStats) {
        self.bytes = (self.bytes as i64 + delta) as usize;
        Writer::Owner.add_signed(&stats.large_cached_bytes, delta);
    }

    fn take_all(&mut self, stats: &ThreadStats) -> Vec<Block<D>> {
        let blocks: Vec<Block<D>> = self.lists.iter_mut().flat_map(|l| l.drain(..)).collect();
        self.account(-(self.bytes as i64), stats);
        blocks
    }
}

/// Every live thread's [`LargeCache`] for one allocator, so `empty_cache` and the out-of-memory retry
/// can reach them. Locked when a thread first uses the allocator, when it exits, and to reclaim: never
/// per op.
pub(crate) struct LargeCaches<D: Device> {
    live: Mutex<Vec<Arc<LargeCache<D>>>>,
}

impl<D: Device> LargeCaches<D> {
    pub(crate) fn new() -> Self {
        Self {
            live: Mutex::new(Vec::new()),
        }
    }

    /// Takes every large block out of every thread's cache. The blocks are on their former owner's home
    /// stream with no pending event: free them only after that stream's work is done (as
    /// `free_raw_block` does). Each cache's lock is held only while its lists are emptied.
    #[cold]
    pub(crate) fn reclaim(&self) -> Vec<Block<D>> {
        let caches = self.live.lock().clone();
        let mut blocks = Vec::new();
        for cache in caches {
            blocks.append(&mut cache.lists.lock().take_all(&cache.stats));
        }
        blocks
    }
}

/// The backend-independent face of a cache, so one thread-local can hold caches of every allocator.
trait ErasedCache {
    fn allocator_id(&self) -> u64;
    /// Whether the allocator was dropped (the cache only waits to be freed).
    fn is_closed(&self) -> bool;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<D: Device> ErasedCache for ThreadCache<D> {
    fn allocator_id(&self) -> u64 {
        self.owner.id
    }
    fn is_closed(&self) -> bool {
        self.owner.is_closed()
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

thread_local! {
    /// This thread's caches, one per live allocator it used. Dropped at thread exit (which flushes
    /// them); a dropped allocator's cache goes on the dropping thread at once and on others at their
    /// next first use of an allocator.
    static CACHES: RefCell<Vec<Box<dyn ErasedCache>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's cache for `owner`, creating it on first use (and dropping the caches of
/// allocators that are gone). `None` when the thread-local is gone (thread exit in progress) or
/// already borrowed further up the stack, or when `owner` was dropped and this thread has no cache for
/// it; callers then take the shared path.
#[inline]
pub(crate) fn with_cache<D: Device, R>(
    owner: &Arc<AllocatorState<D>>,
    f: impl FnOnce(&mut ThreadCache<D>) -> R,
) -> Option<R> {
    let mut closed = Vec::new();
    let result = CACHES
        .try_with(|caches| {
            let mut caches = caches.try_borrow_mut().ok()?;
            let position = match caches.iter().position(|c| c.allocator_id() == owner.id) {
                Some(p) => p,
                None if owner.is_closed() => return None,
                None => {
                    let (live, gone) = std::mem::take(&mut *caches)
                        .into_iter()
                        .partition(|c| !c.is_closed());
                    *caches = live;
                    closed = gone;
                    caches.push(Box::new(ThreadCache::<D>::new(owner.clone())));
                    caches.len() - 1
                }
            };
            let cache = caches[position]
                .as_any_mut()
                .downcast_mut::<ThreadCache<D>>()
                .expect("invariant violated: allocator id maps to a cache of another backend (this is a bug)");
            Some(f(cache))
        })
        .ok()
        .flatten();
    // Freed outside the borrow: freeing their blocks may count into this thread's other caches.
    drop(closed);
    result
}

/// Drops this thread's cache for allocator `id` (flushing or freeing its blocks), if it has one.
pub(crate) fn remove_cache(id: u64) {
    let cache = CACHES
        .try_with(|caches| {
            let mut caches = caches.try_borrow_mut().ok()?;
            let position = caches.iter().position(|c| c.allocator_id() == id)?;
            Some(caches.swap_remove(position))
        })
        .ok()
        .flatten();
    drop(cache);
}

impl<D: Device> ThreadCache<D> {
    /// Lends this thread's anchor to a buffer being allocated (counted here, not atomically).
    #[inline]
    pub(crate) fn issue(&mut self) -> NonNull<ThreadAnchor<D>> {
        self.issued += 1;
        self.anchor
    }

    /// Takes back a freed buffer's share of `anchor` if this cache issued it (a plain decrement);
    /// `false` for another thread's anchor, which the caller releases remotely.
    #[inline]
    pub(crate) fn take_back(&mut self, anchor: NonNull<ThreadAnchor<D>>) -> bool {
        let mine = self.anchor == anchor;
        if mine {
            self.issued -= 1;
        }
        mine
    }

    fn new(owner: Arc<AllocatorState<D>>) -> Self {
        let stats = owner.stats.register();
        let large = Arc::new(LargeCache {
            lists: CachePadded::new(Mutex::new(LargeLists {
                lists: (SMALL_CLASSES..owner.cache.classes)
                    .map(|_| Vec::new())
                    .collect(),
                bytes: 0,
            })),
            stats: stats.clone(),
        });
        owner.large_caches.live.lock().push(large.clone());
        Self {
            anchor: Anchor::owned(owner.clone()),
            issued: 0,
            owner,
            small: (0..SMALL_CLASSES).map(|_| Vec::new()).collect(),
            small_bytes: 0,
            large,
            home: None,
            stats,
        }
    }

    /// A cached block of the small `class` for `stream`, counting the hit; switching streams flushes
    /// first (module doc).
    #[inline]
    pub(crate) fn pop_small(&mut self, class: SizeClass, stream: u32) -> Option<Block<D>> {
        if self.home != Some(stream) {
            self.rehome(stream);
            return None;
        }
        let block = self.small[class.index()].pop()?;
        self.account_small(-(block.size as i64));
        Writer::Owner.add(&self.stats.small_cache_hits, 1);
        Some(block)
    }

    /// A cached block for `stream` of the large `class` (which the cache must cover:
    /// [`CacheLimits::caches`]) or of up to [`LARGE_REUSE_CLASSES`] classes above it (at most a quarter
    /// larger, as the shared pools allow), the smallest first; counts the hit. Kept apart from
    /// [`Self::pop_small`] so the small fast path stays as short as it was.
    pub(crate) fn pop_large(&mut self, class: SizeClass, stream: u32) -> Option<Block<D>> {
        if self.home != Some(stream) {
            self.rehome(stream);
            return None;
        }
        let mut large = self.large.lists.lock();
        let first = class.index() - SMALL_CLASSES;
        let last = (first + LARGE_REUSE_CLASSES).min(large.lists.len() - 1);
        let block = (first..=last).find_map(|i| large.lists[i].pop())?;
        large.account(-(block.size as i64), &self.stats);
        drop(large);
        Writer::Owner.add(&self.stats.large_cache_hits, 1);
        Some(block)
    }

    /// Keeps `block` (of a cached class) if it belongs to the home stream; otherwise hands it back for
    /// the shared path.
    #[inline]
    pub(crate) fn push(&mut self, block: Block<D>) -> Result<(), Block<D>> {
        if self.home != Some(block.stream) || !block.pending.is_empty() {
            return Err(block);
        }
        if !block.class.is_small() {
            self.push_large(block);
            return Ok(());
        }
        let size = block.size;
        self.small[block.class.index()].push(block);
        self.account_small(size as i64);
        if self.small_bytes > self.owner.cache.small_bytes {
            self.trim_small();
        }
        Ok(())
    }

    #[inline(never)]
    fn push_large(&mut self, block: Block<D>) {
        let mut large = self.large.lists.lock();
        let size = block.size;
        large.lists[block.class.index() - SMALL_CLASSES].push(block);
        large.account(size as i64, &self.stats);
        if large.bytes > self.owner.cache.large_bytes {
            let target = self.owner.cache.large_bytes / 2;
            let bytes = large.bytes;
            let (trimmed, freed) = take_oldest(&mut large.lists, bytes, target);
            large.account(-(freed as i64), &self.stats);
            drop(large);
            self.flush(trimmed);
        }
    }

    #[inline]
    fn account_small(&mut self, delta: i64) {
        self.small_bytes = (self.small_bytes as i64 + delta) as usize;
        Writer::Owner.add_signed(&self.stats.thread_cached_bytes, delta);
    }

    #[cold]
    fn rehome(&mut self, stream: u32) {
        self.flush_all();
        self.home = Some(stream);
    }

    /// Flushes the oldest small blocks of the largest classes until they take at most half their budget.
    #[cold]
    #[inline(never)]
    fn trim_small(&mut self) {
        let target = self.owner.cache.small_bytes / 2;
        let (flushed, freed) = take_oldest(&mut self.small, self.small_bytes, target);
        self.account_small(-(freed as i64));
        self.flush(flushed);
    }

    /// Moves every cached block, small and large, to the shared pools.
    #[cold]
    pub(crate) fn flush_all(&mut self) {
        let mut blocks: Vec<Block<D>> = self.small.iter_mut().flat_map(|l| l.drain(..)).collect();
        let bytes: usize = blocks.iter().map(|b| b.size).sum();
        self.account_small(-(bytes as i64));
        blocks.append(&mut self.large.lists.lock().take_all(&self.stats));
        self.flush(blocks);
    }

    /// Publishes blocks of the home stream to the shared pools behind one event on that stream.
    fn flush(&mut self, mut blocks: Vec<Block<D>>) {
        let Some(home) = self.home else { return };
        if blocks.is_empty() {
            return;
        }
        // No event means the stream's pool is gone, so its work was drained at shutdown: the blocks are idle.
        if let Some(event) = self.owner.record_event(home) {
            let event = Arc::new(event);
            for block in &mut blocks {
                block.pending.push((home, event.clone()));
            }
        }
        for block in blocks {
            self.owner.release_to_pools(block);
        }
    }
}

/// Takes the oldest blocks of the largest classes out of `lists` (at most half of each list, largest
/// class first) until the `bytes` they held drop to `target`; returns them and their bytes.
fn take_oldest<D: Device>(
    lists: &mut [Vec<Block<D>>],
    bytes: usize,
    target: usize,
) -> (Vec<Block<D>>, usize) {
    let mut taken = Vec::new();
    let mut freed = 0usize;
    for list in lists.iter_mut().rev() {
        // Count first, then drain exactly that many: breaking out of a `drain` would drop the rest
        // of its range, and a dropped `Block` is leaked device memory.
        let mut take = 0;
        while take < list.len().div_ceil(2) && bytes - freed > target {
            freed += list[take].size;
            take += 1;
        }
        taken.extend(list.drain(..take));
        if bytes - freed <= target {
            break;
        }
    }
    (taken, freed)
}

impl<D: Device> Drop for ThreadCache<D> {
    fn drop(&mut self) {
        self.flush_all();
        self.owner
            .large_caches
            .live
            .lock()
            .retain(|c| !Arc::ptr_eq(c, &self.large));
        self.owner.stats.retire(&self.stats);
        // SAFETY: this is the owner's one call; nothing below touches the anchor.
        unsafe { Anchor::orphan(self.anchor, self.issued) };
    }
}
