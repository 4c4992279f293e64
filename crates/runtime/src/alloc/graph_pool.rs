//! [`GraphPool`]: a private pool of blocks for captured graphs (PyTorch's graph memory pools), and
//! the thread-local routing that sends a thread's allocations and frees to it.
//!
//! A captured graph names fixed addresses: every replay writes its intermediates into the blocks the
//! capture allocated. So those blocks must never be handed to anyone else while the graph may replay,
//! even though the capture freed them (an intermediate is dead at the end of the forward, but alive
//! again at the next replay). A `GraphPool` owns such blocks.
//!
//! # What it promises
//!
//! - **Routing.** While a [`PoolRoute`] is alive on a thread, that thread's allocations from the
//!   pool's allocator come from the pool, and the blocks that thread frees go back to the pool, never
//!   to its thread cache or the shared pools (so never to another stream). A freed block the pool
//!   cannot keep safely — of another stream, with pending events, or marked with `record_stream` —
//!   takes the ordinary path (no capture used it: captured work only touches blocks of the pool's
//!   stream).
//! - **Misses.** Outside a capture a routed request the pool cannot serve takes a block from the
//!   allocator for the pool's stream (thread cache, shared pools or raw memory, as any allocation).
//!   During a capture it is an error instead: the capture must not allocate device memory, and a warm-up
//!   run of the same work with the route on (same requests in the same order) fills the pool first,
//!   so a capture never misses. Blocks are kept by the size class of the *request* (not the class of
//!   the block, which may be a little larger), so the capture's requests find exactly the warm-up's.
//! - **Sharing.** Graphs replayed on one stream may share one pool: replays on a stream run one after
//!   another, so their intermediates may alias; what a graph keeps (its inputs and outputs) stays
//!   allocated and out of the pool's free lists.
//! - **Lifetime and accounting.** Blocks the pool takes from the allocator count as allocated (a
//!   graph's memory is in use) until they leave it: dropping the [`GraphPool`] returns its free blocks
//!   to the shared pools as frees on its stream (stream-ordered: another stream reuses them only after
//!   that stream's work so far, replays included). A block handed out and dropped after the route
//!   ended (a graph's input or output) is an ordinary free. So once the pool and its graphs' tensors
//!   are gone, the allocated bytes are back where they were.
//! - One route per thread at a time; the route is not `Send`.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::block::Block;
use super::buffer::Buffer;
use super::size_class::SizeClass;
use super::stats::{ThreadStats, Writer};
use super::AllocatorState;
use crate::device::Device;
use crate::error::{Result, RuntimeError};

thread_local! {
    /// The id of the allocator whose allocations this thread routes to a pool (0: none). Read on every
    /// alloc and free: one thread-local load.
    static ROUTED: Cell<u64> = const { Cell::new(0) };
    /// The pool they go to (a `PoolInner<D>`, erased so one thread-local serves every backend).
    static ROUTE: RefCell<Option<Arc<dyn Any + Send + Sync>>> = const { RefCell::new(None) };
}

/// Whether this thread routes allocator `id`'s allocations and frees to a pool.
#[inline]
pub(crate) fn routed(id: u64) -> bool {
    ROUTED.try_with(|r| r.get() == id).unwrap_or(false)
}

/// The pool this thread routes to, if it is a pool of backend `D`.
fn route<D: Device>() -> Option<Arc<PoolInner<D>>> {
    let erased = ROUTE.try_with(|r| r.borrow().clone()).ok().flatten()?;
    erased.downcast::<PoolInner<D>>().ok()
}

/// A private pool of blocks for the graphs replayed on one stream. See the module doc.
pub struct GraphPool<D: Device> {
    inner: Arc<PoolInner<D>>,
}

struct PoolInner<D: Device> {
    state: Arc<AllocatorState<D>>,
    /// The stream (index) the pool's blocks belong to: where its graphs replay.
    stream: u32,
    /// Free blocks, each with the size class of the request it was last allocated for.
    free: Mutex<Vec<(SizeClass, Block<D>)>>,
    /// Set while a capture routes to the pool: a miss is then an error.
    capturing: AtomicBool,
}

impl<D: Device> GraphPool<D> {
    pub(crate) fn new(state: Arc<AllocatorState<D>>, stream: u32) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                state,
                stream,
                free: Mutex::new(Vec::new()),
                capturing: AtomicBool::new(false),
            }),
        }
    }

    /// The index of the stream the pool serves.
    pub fn stream_index(&self) -> usize {
        self.inner.stream as usize
    }

    /// Bytes of the free blocks the pool holds (memory its graphs' intermediates use at replay).
    pub fn free_bytes(&self) -> usize {
        self.inner.free.lock().iter().map(|(_, b)| b.size).sum()
    }

    /// Free blocks the pool holds.
    pub fn free_blocks(&self) -> usize {
        self.inner.free.lock().len()
    }

    /// Routes this thread's allocations and frees of the pool's allocator to the pool until the
    /// returned guard is dropped; `capturing` makes a miss an error (module doc).
    pub fn route(&self, capturing: bool) -> Result<PoolRoute<'_, D>> {
        if ROUTED.try_with(Cell::get).unwrap_or(u64::MAX) != 0 {
            return Err(RuntimeError::InvalidConfig {
                name: "GraphPool::route",
                value: "a second route on this thread".into(),
                allowed: "one graph pool route per thread at a time (end the first one)",
            });
        }
        self.inner.capturing.store(capturing, Ordering::Relaxed);
        let erased: Arc<dyn Any + Send + Sync> = self.inner.clone();
        ROUTE.with(|r| *r.borrow_mut() = Some(erased));
        ROUTED.with(|r| r.set(self.inner.state.id));
        Ok(PoolRoute {
            pool: self,
            _not_send: PhantomData,
        })
    }
}

impl<D: Device> std::fmt::Debug for GraphPool<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphPool")
            .field("stream", &self.inner.stream)
            .field("free_bytes", &self.free_bytes())
            .finish()
    }
}

/// This thread's allocations go to a [`GraphPool`] while this lives ([`GraphPool::route`]).
pub struct PoolRoute<'a, D: Device> {
    pool: &'a GraphPool<D>,
    _not_send: PhantomData<*const ()>,
}

impl<D: Device> Drop for PoolRoute<'_, D> {
    fn drop(&mut self) {
        let _ = ROUTED.try_with(|r| r.set(0));
        // Taken out and dropped outside the borrow (it is the pool's `Arc`, so nothing is freed here).
        let erased = ROUTE.try_with(|r| r.borrow_mut().take()).ok().flatten();
        drop(erased);
        self.pool.inner.capturing.store(false, Ordering::Relaxed);
    }
}

/// A routed allocation: a pool block kept for this request's class, else (outside a capture) a new
/// one for the pool's stream.
#[cold]
pub(crate) fn alloc_routed<D: Device>(
    state: &Arc<AllocatorState<D>>,
    bytes: usize,
    class: Option<SizeClass>,
) -> Result<Buffer<D>> {
    let Some(class) = class else {
        return Err(state.out_of_memory(bytes));
    };
    let Some(pool) = route::<D>() else {
        return Err(RuntimeError::Device(
            "invariant violated: a routed allocation found no pool of its backend (this is a bug)"
                .into(),
        ));
    };
    let kept = {
        let mut free = pool.free.lock();
        let position = free.iter().position(|(c, _)| *c == class);
        position.map(|p| free.swap_remove(p).1)
    };
    let block = match kept {
        Some(block) => block,
        None if pool.capturing.load(Ordering::Relaxed) => {
            return Err(RuntimeError::Device(format!(
                "a graph capture asked for {bytes} bytes its memory pool did not hold: run the work \
                 once with the pool routed (uncaptured) before capturing it, with the same shapes"
            )))
        }
        None => state.alloc_slow(bytes, Some(class), pool.stream)?,
    };
    Ok(Buffer::new(block, bytes, state.anchor()))
}

/// A routed free: the pool keeps `block` (freed by a buffer of `len` bytes) if it may (module doc)
/// and answers `None`; otherwise hands it back for the ordinary path.
#[cold]
pub(crate) fn free_routed<D: Device>(
    block: Block<D>,
    len: usize,
    used_on: &[u32],
) -> Option<Block<D>> {
    let Some(pool) = route::<D>() else {
        return Some(block);
    };
    let class = SizeClass::of(len).unwrap_or(block.class);
    if block.stream != pool.stream || !block.pending.is_empty() || !used_on.is_empty() {
        return Some(block);
    }
    pool.free.lock().push((class, block));
    None
}

impl<D: Device> Drop for PoolInner<D> {
    fn drop(&mut self) {
        let blocks = std::mem::take(&mut *self.free.lock());
        for (_, block) in blocks {
            let size = block.size as i64;
            self.state.count(|s: &ThreadStats, w: Writer| {
                w.add_signed(&s.allocated, -size);
                w.add(&s.frees, 1);
            });
            // A free on the pool's stream with no event: another stream that takes it waits for this
            // stream's work so far (its replays) first (see `super::block`).
            self.state.free_shared(block, &[]);
        }
    }
}
