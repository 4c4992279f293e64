//! [`BeforeAllocator`]: the seed's caching allocator — one global recursive mutex across malloc, free
//! and event recording, no thread caches (design problem 1).
//!
//! # What it reproduces
//!
//! The seed's `MPSHeapAllocatorImpl` took one `std::recursive_mutex` in `malloc`, in `free` and in the
//! event-recording calls, and made its device calls (buffer creation, event record and query) while
//! holding it. Here that lock is a [`parking_lot::ReentrantMutex`] around the whole allocator state,
//! and every operation below runs under it:
//!
//! - `alloc`: round the size, look for a reusable cached block, else allocate raw device memory (the
//!   device call happens under the lock, as in the seed).
//! - `free` (dropping a [`BeforeBuffer`]): record a pooled event on the buffer's stream (a device call,
//!   under the lock) and push the block into its pool.
//!
//! # What it shares with braid, so that only the lock differs
//!
//! - Size rounding: [`rounded_size`] gives exactly the sizes braid's size classes give (256-byte steps
//!   to 1 KiB, four classes per power of two to 1 MiB, eighths of a power of two above; a unit test
//!   checks it against braid's `Buffer::capacity`).
//! - Pools: small (≤ 1 MiB, exact size) and large (a block up to a quarter larger may serve), each a
//!   map from block size to a LIFO list — the seed's `std::set` pools keyed by size.
//! - Stream-ordered reuse: a block freed on stream S is reused by S at once; another stream takes it
//!   only once the event recorded at the free has completed (known from an earlier query, else asked
//!   of the device for the most recent block). Events come from braid's [`EventPool`], so none is
//!   created in steady state.
//! - On a failed raw allocation the cache is freed (after its events) and the allocation retried once.
//!
//! `record_stream` is not reproduced: no scenario uses a buffer on a second stream.
//!
//! # Lifetime
//!
//! As braid's allocator does, the shared state is leaked for the life of the process (it is small;
//! cached memory is freed when the [`BeforeAllocator`] is dropped), so a buffer holds a `&'static`
//! reference and no reference count is touched per operation. A buffer dropped after its allocator
//! frees its memory directly, after its stream has drained.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use braid_runtime::alloc::SMALL_LIMIT;
use braid_runtime::{
    AllocatorStats, Device, DevicePtr, Event, EventPool, PoolStats, Result, RuntimeError, Stream,
};
use parking_lot::ReentrantMutex;

/// How much larger than the rounded request a reused large block may be (1/4 more, as braid).
const LARGE_REUSE_SLACK: usize = 4;

/// The block size a request of `bytes` gets: braid's size classes, written out (module doc).
pub fn rounded_size(bytes: usize) -> usize {
    let bytes = bytes.max(1);
    if bytes <= 1024 {
        return bytes.div_ceil(256) * 256;
    }
    // 2^p < bytes <= 2^(p+1): small sizes step by a quarter of 2^p, large ones by an eighth.
    let p = usize::BITS - 1 - (bytes - 1).leading_zeros();
    let step = if bytes <= SMALL_LIMIT {
        1usize << (p - 2)
    } else {
        1usize << (p - 3)
    };
    bytes.div_ceil(step) * step
}

/// Raw device memory with the stream of its last allocation.
struct Block<D: Device> {
    ptr: DevicePtr,
    size: usize,
    stream: Stream<D>,
}

/// A block in a pool, with the event recorded on its stream when it was freed (`None` when no event
/// could be recorded because the stream's pool was gone: its work was drained then).
struct CachedBlock<D: Device> {
    block: Block<D>,
    freed_at: Option<Event<D>>,
}

impl<D: Device> CachedBlock<D> {
    /// Reusable by `stream` without asking the device.
    fn ready_known(&self, stream: Stream<D>) -> bool {
        self.block.stream == stream || self.freed_at.as_ref().is_none_or(Event::is_known_complete)
    }

    /// Reusable by `stream`, asking the device (a failed query counts as "not yet").
    fn ready_query(&self, stream: Stream<D>) -> bool {
        self.block.stream == stream
            || self
                .freed_at
                .as_ref()
                .is_none_or(|e| e.query().unwrap_or(false))
    }
}

/// Block size → LIFO list of free blocks of that size.
type Pool<D> = BTreeMap<usize, Vec<CachedBlock<D>>>;

/// Everything the global lock protects.
struct State<D: Device> {
    small: Pool<D>,
    large: Pool<D>,
    stats: AllocatorStats,
}

/// The allocator's shared state (leaked; module doc, "Lifetime").
struct Shared<D: Device> {
    device: D,
    events: Arc<EventPool<D>>,
    /// The seed's one recursive mutex (module doc). `RefCell` because a reentrant lock hands out
    /// shared references; no code path re-enters while a borrow is live.
    state: ReentrantMutex<RefCell<State<D>>>,
    /// Set when the `BeforeAllocator` is dropped (Release; read with Acquire on frees).
    closed: AtomicBool,
}

/// The seed's allocator design on a braid device (module doc).
pub struct BeforeAllocator<D: Device> {
    shared: &'static Shared<D>,
}

/// A buffer from a [`BeforeAllocator`]; dropping it frees the block (under the global lock).
pub struct BeforeBuffer<D: Device> {
    block: Option<Block<D>>,
    owner: &'static Shared<D>,
}

impl<D: Device> BeforeBuffer<D> {
    /// The device address of the first byte.
    pub fn ptr(&self) -> DevicePtr {
        self.block().ptr
    }

    /// Bytes the block really has (the rounded size).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.block().size
    }

    fn block(&self) -> &Block<D> {
        self.block
            .as_ref()
            .expect("invariant violated: buffer used after free (this is a bug)")
    }
}

impl<D: Device> Drop for BeforeBuffer<D> {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            self.owner.free(block);
        }
    }
}

impl<D: Device> BeforeAllocator<D> {
    /// An allocator for `device`.
    pub fn new(device: D) -> Self {
        let shared = Box::leak(Box::new(Shared {
            events: EventPool::new(device.clone()),
            device,
            state: ReentrantMutex::new(RefCell::new(State {
                small: Pool::new(),
                large: Pool::new(),
                stats: AllocatorStats::default(),
            })),
            closed: AtomicBool::new(false),
        }));
        Self { shared }
    }

    /// A buffer of at least `bytes` bytes for use on `stream`.
    pub fn alloc(&self, bytes: usize, stream: Stream<D>) -> Result<BeforeBuffer<D>> {
        let block = self.shared.alloc(rounded_size(bytes), stream)?;
        Ok(BeforeBuffer {
            block: Some(block),
            owner: self.shared,
        })
    }

    /// A snapshot of the statistics (braid's stats type; thread-cache fields stay 0).
    pub fn stats(&self) -> AllocatorStats {
        self.shared.state.lock().borrow().stats.clone()
    }

    /// The pool the allocator takes its events from.
    #[cfg(test)]
    pub fn event_pool(&self) -> &Arc<EventPool<D>> {
        &self.shared.events
    }
}

impl<D: Device> Drop for BeforeAllocator<D> {
    fn drop(&mut self) {
        // Release pairs with the Acquire in `Shared::free`: later frees go straight to the device.
        self.shared.closed.store(true, Ordering::Release);
        let lock = self.shared.state.lock();
        let cached = drain(&mut lock.borrow_mut());
        for cached in cached {
            self.shared
                .free_raw_cached(&mut lock.borrow_mut().stats, cached);
        }
    }
}

fn drain<D: Device>(state: &mut State<D>) -> Vec<CachedBlock<D>> {
    let small = std::mem::take(&mut state.small);
    let large = std::mem::take(&mut state.large);
    small
        .into_values()
        .chain(large.into_values())
        .flatten()
        .collect()
}

impl<D: Device> Shared<D> {
    fn alloc(&self, size: usize, stream: Stream<D>) -> Result<Block<D>> {
        let lock = self.state.lock();
        let cached = take_cached(&mut lock.borrow_mut(), size, stream);
        if let Some(block) = cached {
            // A reused large block may be up to a quarter larger than asked: count what it holds.
            count_alloc(&mut lock.borrow_mut().stats, block.size, true);
            return Ok(block);
        }
        // A miss: raw memory, allocated under the lock as the seed did; on failure free the cache
        // (after its events) and retry once.
        let ptr = match self.device.alloc_raw(size) {
            Ok(ptr) => ptr,
            Err(RuntimeError::OutOfMemory { .. }) => {
                let cached = drain(&mut lock.borrow_mut());
                for cached in cached {
                    self.free_raw_cached(&mut lock.borrow_mut().stats, cached);
                }
                self.device.alloc_raw(size)?
            }
            Err(e) => return Err(e),
        };
        let stats = &mut lock.borrow_mut().stats;
        stats.raw_allocs += 1;
        stats.reserved_bytes += size as u64;
        stats.peak_reserved_bytes = stats.peak_reserved_bytes.max(stats.reserved_bytes);
        count_alloc(stats, size, false);
        Ok(Block { ptr, size, stream })
    }

    fn free(&self, block: Block<D>) {
        // Acquire pairs with the Release in `BeforeAllocator::drop`.
        if self.closed.load(Ordering::Acquire) {
            if let Err(e) = block.stream.synchronize() {
                if !matches!(e, RuntimeError::Dropped { .. }) {
                    eprintln!("warning: stream failed before a block was freed: {e}");
                }
            }
            // SAFETY: the block came from `alloc_raw(block.size)` on this device, is freed once (the
            // buffer gave it up), and its stream has drained, so no pending work uses it.
            unsafe { self.device.free_raw(block.ptr, block.size) };
            return;
        }
        let lock = self.state.lock();
        // Event recording under the global lock: the seed's design.
        let freed_at = self.record_event(block.stream);
        let mut state = lock.borrow_mut();
        state.stats.allocated_bytes -= block.size as i64;
        state.stats.frees += 1;
        let pool = if block.size <= SMALL_LIMIT {
            &mut state.small
        } else {
            &mut state.large
        };
        pool.entry(block.size)
            .or_default()
            .push(CachedBlock { block, freed_at });
    }

    /// A pooled event recorded on `stream`, or `None` when the stream's pool is gone (then its work was
    /// drained) or recording failed (then the stream is synchronized instead).
    fn record_event(&self, stream: Stream<D>) -> Option<Event<D>> {
        let mut event = match self.events.event() {
            Ok(event) => event,
            Err(_) => {
                let _ = stream.synchronize();
                return None;
            }
        };
        match event.record(&stream) {
            Ok(()) => Some(event),
            Err(RuntimeError::Dropped { .. }) => None,
            Err(_) => {
                let _ = stream.synchronize();
                None
            }
        }
    }

    /// Frees a cached block's raw memory once the work recorded before its free has run.
    fn free_raw_cached(&self, stats: &mut AllocatorStats, cached: CachedBlock<D>) {
        let idle = match &cached.freed_at {
            Some(event) => event.synchronize(),
            None => match cached.block.stream.synchronize() {
                Err(RuntimeError::Dropped { .. }) => Ok(()),
                other => other,
            },
        };
        if let Err(e) = idle {
            eprintln!("warning: stream failed before a cached block was freed: {e}");
        }
        let Block { ptr, size, .. } = cached.block;
        // SAFETY: the block came from `alloc_raw(size)` on this device, left its pool here (so it is
        // freed once), and the wait above means no pending work uses it.
        unsafe { self.device.free_raw(ptr, size) };
        stats.reserved_bytes -= size as u64;
        stats.raw_frees += 1;
    }
}

fn count_alloc(stats: &mut AllocatorStats, size: usize, hit: bool) {
    stats.allocs += 1;
    stats.allocated_bytes += size as i64;
    let pool: &mut PoolStats = if size <= SMALL_LIMIT {
        &mut stats.small
    } else {
        &mut stats.large
    };
    if hit {
        pool.hits += 1;
    } else {
        pool.misses += 1;
    }
}

/// A cached block of `size` (small: exactly; large: up to a quarter more) reusable by `stream`. Asks
/// the device about the most recent candidate when no block is known to be ready (under the lock).
fn take_cached<D: Device>(
    state: &mut State<D>,
    size: usize,
    stream: Stream<D>,
) -> Option<Block<D>> {
    let (pool, largest) = if size <= SMALL_LIMIT {
        (&mut state.small, size)
    } else {
        (&mut state.large, size + size / LARGE_REUSE_SLACK)
    };
    let mut candidate = None;
    let mut found = None;
    for (&key, list) in pool.range(size..=largest) {
        if let Some(pos) = list.iter().rposition(|b| b.ready_known(stream)) {
            found = Some((key, pos));
            break;
        }
        if candidate.is_none() && !list.is_empty() {
            candidate = Some((key, list.len() - 1));
        }
    }
    let (key, pos) = match (found, candidate) {
        (Some(found), _) => found,
        (None, Some((key, pos))) if pool[&key][pos].ready_query(stream) => (key, pos),
        _ => return None,
    };
    let list = pool
        .get_mut(&key)
        .expect("invariant violated: pool key vanished under the lock (this is a bug)");
    let cached = list.swap_remove(pos);
    if list.is_empty() {
        pool.remove(&key);
    }
    // The event (if any) goes back to its pool here; work on the block is now ordered after it.
    let mut block = cached.block;
    block.stream = stream;
    Some(block)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicUsize;

    use braid_runtime::cpu::CpuDevice;
    use braid_runtime::{AllocatorConfig, CachingAllocator, StreamPool, StreamPoolConfig};

    use super::*;

    fn setup() -> (StreamPool<CpuDevice>, BeforeAllocator<CpuDevice>) {
        let device = CpuDevice::with_memory_capacity(1 << 30);
        let pool = StreamPool::new(device.clone(), StreamPoolConfig::default()).unwrap();
        (pool, BeforeAllocator::new(device))
    }

    #[test]
    fn rounding_matches_braids_size_classes() {
        let device = CpuDevice::with_memory_capacity(1 << 30);
        let pool = StreamPool::new(device.clone(), StreamPoolConfig::default()).unwrap();
        let braid = CachingAllocator::new(device, AllocatorConfig::default());
        let stream = pool.stream(1).unwrap();
        let sizes = (1..5000).chain((1000..(3 << 20)).step_by(4099)).chain([
            SMALL_LIMIT,
            SMALL_LIMIT + 1,
            64 << 20,
            (64 << 20) + 1,
        ]);
        for bytes in sizes {
            let buffer = braid.alloc(bytes, stream).unwrap();
            assert_eq!(rounded_size(bytes), buffer.capacity(), "{bytes} bytes");
        }
    }

    #[test]
    fn same_stream_reuses_at_once_and_stats_balance() {
        let (pool, alloc) = setup();
        let s = pool.stream(1).unwrap();
        let a = alloc.alloc(1000, s).unwrap();
        assert_eq!(a.capacity(), 1024);
        let ptr = a.ptr();
        drop(a);
        let b = alloc.alloc(900, s).unwrap();
        assert_eq!(b.ptr(), ptr, "freed on S, reused by S at once");
        drop(b);
        let stats = alloc.stats();
        assert_eq!((stats.small.hits, stats.small.misses), (1, 1));
        assert_eq!(stats.allocated_bytes, 0);
        assert_eq!(stats.reserved_bytes, 1024);
        assert_eq!(alloc.event_pool().created(), 1, "events are pooled");
    }

    #[test]
    fn a_larger_reused_block_is_accounted_by_its_real_size() {
        let (pool, alloc) = setup();
        let s = pool.stream(1).unwrap();
        drop(alloc.alloc(5 << 20, s).unwrap());
        let smaller = alloc.alloc((4 << 20) + 1, s).unwrap();
        assert_eq!(
            smaller.capacity(),
            5 << 20,
            "served by the cached 5 MiB block"
        );
        assert_eq!(alloc.stats().allocated_bytes, 5 << 20);
        drop(smaller);
        assert_eq!(alloc.stats().allocated_bytes, 0);
    }

    #[test]
    fn another_stream_waits_for_the_free_event() {
        let (pool, alloc) = setup();
        let (s1, s2) = (pool.stream(1).unwrap(), pool.stream(2).unwrap());
        let a = alloc.alloc(4 << 20, s1).unwrap();
        let ptr = a.ptr();
        let gate = Arc::new(AtomicUsize::new(0));
        let g = gate.clone();
        let raw = s1.raw().unwrap();
        s1.device()
            .launch(raw, move || {
                while g.load(Ordering::SeqCst) == 0 {
                    std::thread::yield_now();
                }
            })
            .unwrap();
        drop(a);
        let b = alloc.alloc(4 << 20, s2).unwrap();
        assert_ne!(
            b.ptr(),
            ptr,
            "s1's work is pending: s2 must not get the block"
        );
        gate.store(1, Ordering::SeqCst);
        s1.synchronize().unwrap();
        let c = alloc.alloc(4 << 20, s2).unwrap();
        assert_eq!(c.ptr(), ptr, "after s1's work, s2 reuses the block");
    }

    #[test]
    fn never_hands_out_a_block_overlapping_a_live_one() {
        let (pool, alloc) = setup();
        let alloc = &alloc;
        let pool = &pool;
        let violations = AtomicUsize::new(0);
        // Live ranges of all threads: start -> end. Checked and updated under one lock, so a block
        // handed out while another live block overlaps it is seen.
        let live = parking_lot::Mutex::new(BTreeMap::<u64, u64>::new());
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let (live, violations) = (&live, &violations);
                scope.spawn(move || {
                    let stream = pool.stream(1 + t as usize % 2).unwrap();
                    let mut held = Vec::new();
                    let mut x = t + 1;
                    for _ in 0..3000 {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let bytes = 256 << ((x >> 60) as usize % 15);
                        let buffer = alloc.alloc(bytes, stream).unwrap();
                        let (start, end) = (buffer.ptr().0, buffer.ptr().0 + bytes as u64);
                        {
                            let mut live = live.lock();
                            let before = live.range(..end).next_back();
                            if before.is_some_and(|(_, &e)| e > start) {
                                violations.fetch_add(1, Ordering::Relaxed);
                            }
                            live.insert(start, end);
                        }
                        held.push((start, buffer));
                        if held.len() > 8 || x & 1 == 0 {
                            let (start, buffer) = held.swap_remove((x >> 8) as usize % held.len());
                            live.lock().remove(&start);
                            drop(buffer);
                        }
                    }
                    for (start, buffer) in held {
                        live.lock().remove(&start);
                        drop(buffer);
                    }
                });
            }
        });
        assert_eq!(violations.load(Ordering::Relaxed), 0, "overlapping blocks");
        assert_eq!(alloc.stats().allocated_bytes, 0);
    }

    #[test]
    fn drop_returns_every_byte_to_the_device() {
        let device = CpuDevice::with_memory_capacity(1 << 30);
        let pool = StreamPool::new(device.clone(), StreamPoolConfig::default()).unwrap();
        let alloc = BeforeAllocator::new(device.clone());
        let s = pool.stream(3).unwrap();
        let buffers: Vec<_> = (0..20)
            .map(|i| alloc.alloc(1000 << i, s).unwrap())
            .collect();
        drop(buffers);
        assert!(device.raw_allocated() > 0);
        let outliving = alloc.alloc(5000, s).unwrap();
        drop(alloc);
        drop(outliving);
        assert_eq!(device.raw_allocated(), 0);
    }

    #[test]
    fn out_of_memory_frees_the_cache_and_retries() {
        let device = CpuDevice::with_memory_capacity(8 << 20);
        let pool = StreamPool::new(device.clone(), StreamPoolConfig::default()).unwrap();
        let alloc = BeforeAllocator::new(device);
        let s = pool.stream(1).unwrap();
        drop(alloc.alloc(6 << 20, s).unwrap());
        // 6 MiB cached; 7 MiB does not fit beside it, nor in the 6 MiB block.
        let b = alloc.alloc(7 << 20, s).unwrap();
        assert_eq!(b.capacity(), 7 << 20);
        assert_eq!(alloc.stats().raw_frees, 1);
    }
}
