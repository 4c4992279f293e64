//! [`ThreadCache`]: per-thread lists of small blocks, so the common alloc/free pair takes no shared lock
//! (fix 1, "per-thread caches for small blocks").
//!
//! Each thread has, per allocator it uses, one LIFO list per small size class. The fast paths are a
//! thread-local lookup and a `Vec` push or pop, as mimalloc's are a pop from a page's free list; every
//! rare path (first use, stream switch, overflow, thread exit) is a `#[cold]` function.
//!
//! # Invariants
//!
//! - A cache holds blocks of one stream only, its *home*: the stream of its last allocation. Blocks in
//!   it have no pending events — stream order alone makes them safe to reuse on the home stream.
//! - Allocating on another stream flushes the cache and changes the home; freeing a block of another
//!   stream (a cross-thread or cross-stream free) bypasses the cache and goes to the shared pools with
//!   an event, so a cache never hoards blocks its thread cannot use.
//! - The cache holds at most `thread_cache_bytes` (see [`super::AllocatorConfig`]); past that the oldest
//!   blocks are flushed until it holds half.
//! - A flush records one event on the home stream for the whole batch and pushes the blocks to the shared
//!   pools, where other streams can reuse them once the event completes.
//! - At thread exit every cache flushes (or, if its allocator was dropped, frees its blocks).

use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;

use super::block::Block;
use super::size_class::{SizeClass, SMALL_CLASSES};
use super::stats::{SharedThreadStats, Writer};
use super::AllocShared;
use crate::pool::StreamId;
use crate::{Device, Stream};

pub(crate) struct ThreadCache<D: Device> {
    owner: &'static AllocShared<D>,
    lists: Vec<Vec<Block<D>>>,
    bytes: usize,
    home: Option<Stream<D>>,
    /// This thread's allocator counters (see [`super::stats`]).
    pub(crate) stats: SharedThreadStats,
}

/// The backend-independent face of a cache, so one thread-local can hold caches of every allocator.
trait ErasedCache {
    fn allocator_id(&self) -> u64;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<D: Device> ErasedCache for ThreadCache<D> {
    fn allocator_id(&self) -> u64 {
        self.owner.id
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

thread_local! {
    /// This thread's caches, one per allocator it used. Dropped at thread exit (which flushes them).
    static CACHES: RefCell<Vec<Box<dyn ErasedCache>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's cache for `owner`, creating it on first use. `None` when the thread-local
/// is gone (thread exit in progress) or already borrowed further up the stack; callers then take the
/// shared path.
#[inline]
pub(crate) fn with_cache<D: Device, R>(
    owner: &'static AllocShared<D>,
    f: impl FnOnce(&mut ThreadCache<D>) -> R,
) -> Option<R> {
    CACHES
        .try_with(|caches| {
            let mut caches = caches.try_borrow_mut().ok()?;
            let position = match caches.iter().position(|c| c.allocator_id() == owner.id) {
                Some(p) => p,
                None => {
                    caches.push(Box::new(ThreadCache::<D>::new(owner)));
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
        .flatten()
}

/// Offers a freed block to this thread's cache; hands it back when the cache cannot take it (other
/// stream, pending events, or no thread-local available).
#[inline]
/// On success `count` runs on this thread's counters (the free is accounted in the same visit).
pub(crate) fn try_push<D: Device>(
    owner: &'static AllocShared<D>,
    block: Block<D>,
    count: impl FnOnce(&super::stats::ThreadStats, Writer),
) -> Result<(), Block<D>> {
    let mut block = Some(block);
    let pushed = with_cache(owner, |c| {
        let result = c.push(
            block
                .take()
                .expect("invariant violated: block taken twice (this is a bug)"),
        );
        if result.is_ok() {
            count(&c.stats, Writer::Owner);
        }
        result
    });
    match pushed {
        Some(result) => result,
        None => Err(block
            .take()
            .expect("invariant violated: block lost by an unavailable cache (this is a bug)")),
    }
}

impl<D: Device> ThreadCache<D> {
    fn new(owner: &'static AllocShared<D>) -> Self {
        Self {
            owner,
            lists: (0..SMALL_CLASSES).map(|_| Vec::new()).collect(),
            bytes: 0,
            home: None,
            stats: owner.stats.register(),
        }
    }

    /// A cached block of `class` for `stream`; switching streams flushes first (module doc).
    #[inline]
    pub(crate) fn pop(&mut self, class: SizeClass, stream: Stream<D>) -> Option<Block<D>> {
        if self.home_id() != Some(stream.id()) {
            self.rehome(stream);
            return None;
        }
        let block = self.lists[class.index()].pop()?;
        self.account(-(block.size as i64));
        Some(block)
    }

    /// Keeps `block` if it belongs to the home stream; otherwise hands it back for the shared path.
    #[inline]
    pub(crate) fn push(&mut self, block: Block<D>) -> Result<(), Block<D>> {
        if self.home_id() != Some(block.stream.id()) || !block.pending.is_empty() {
            return Err(block);
        }
        let size = block.size;
        let class = block
            .class
            .expect("invariant violated: large block offered to a thread cache (this is a bug)");
        self.lists[class.index()].push(block);
        self.account(size as i64);
        if self.bytes > self.owner.thread_cache_bytes {
            self.trim();
        }
        Ok(())
    }

    #[inline]
    fn home_id(&self) -> Option<StreamId> {
        self.home.map(|s| s.id())
    }

    #[inline]
    fn account(&mut self, delta: i64) {
        self.bytes = (self.bytes as i64 + delta) as usize;
        Writer::Owner.add_signed(&self.stats.thread_cached_bytes, delta);
    }

    #[cold]
    fn rehome(&mut self, stream: Stream<D>) {
        self.flush_all();
        self.home = Some(stream);
    }

    /// Flushes the oldest blocks of every class until the cache holds at most half its cap.
    #[cold]
    #[inline(never)]
    fn trim(&mut self) {
        let target = self.owner.thread_cache_bytes / 2;
        let mut flushed = Vec::new();
        let mut freed = 0usize;
        for list in self.lists.iter_mut().rev() {
            // Count first, then drain exactly that many: breaking out of a `drain` would drop the rest
            // of its range, and a dropped `Block` is leaked device memory.
            let mut take = 0;
            while take < list.len().div_ceil(2) && self.bytes - freed > target {
                freed += list[take].size;
                take += 1;
            }
            flushed.extend(list.drain(..take));
            if self.bytes - freed <= target {
                break;
            }
        }
        self.account(-(freed as i64));
        self.flush(flushed);
    }

    /// Moves every cached block to the shared pools.
    #[cold]
    pub(crate) fn flush_all(&mut self) {
        let blocks: Vec<Block<D>> = self.lists.iter_mut().flat_map(|l| l.drain(..)).collect();
        let bytes: usize = blocks.iter().map(|b| b.size).sum();
        self.account(-(bytes as i64));
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
                block.pending.push((home.id(), event.clone()));
            }
        }
        for block in blocks {
            self.owner.release_to_pools(block);
        }
    }
}

impl<D: Device> Drop for ThreadCache<D> {
    fn drop(&mut self) {
        self.flush_all();
        self.owner.stats.retire(&self.stats);
    }
}
