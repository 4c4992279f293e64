//! [`Buffer`]: a device buffer from a [`super::CachingAllocator`] — a block, the bytes asked for, and
//! the streams that used it — and [`ThreadAnchor`], what keeps its allocator alive.
//!
//! A buffer must reach its allocator's state when dropped, even after the allocator's owner is gone.
//! Holding an `Arc` of the state would make every allocation and free on every thread bump one shared
//! counter — one contended cache line, the cost fix 1 removes — and even a per-thread `Arc` costs two
//! atomic operations per buffer. So a buffer holds a share of its thread's [`ThreadAnchor`] (an
//! [`Anchor`] of the state, owned by the thread's cache): issued and taken back by that cache with a
//! plain integer, released atomically only when freed elsewhere (see `super::anchor`).

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use super::anchor::Anchor;
use super::block::Block;
use super::AllocatorState;
use crate::device::{Device, View};
use crate::error::Result;
use crate::stream::Stream;

/// One thread's share of an allocator's state, lent to the buffers it allocates.
pub(crate) type ThreadAnchor<D> = Anchor<Arc<AllocatorState<D>>>;

/// A device buffer from a [`super::CachingAllocator`]. Dropping it returns its block to the allocator.
pub struct Buffer<D: Device> {
    block: Option<Block<D>>,
    len: usize,
    /// Streams (by index) other than the block's that used the buffer (`record_stream`).
    used_on: Vec<u32>,
    /// One issued share of a thread's anchor (module doc): it keeps the allocator's state alive.
    anchor: NonNull<ThreadAnchor<D>>,
}

// SAFETY: the anchor pointer is a counted share of a `ThreadAnchor`, which is only read through `&`
// (its state is `Sync`, its count atomic) and freed by whichever thread releases the last share; the
// rest of the buffer is plain data and a backend buffer, which is `Send`.
unsafe impl<D: Device> Send for Buffer<D> {}
// SAFETY: `&Buffer` reads the block and the anchor's state only.
unsafe impl<D: Device> Sync for Buffer<D> {}

impl<D: Device> Buffer<D> {
    pub(super) fn new(block: Block<D>, len: usize, anchor: NonNull<ThreadAnchor<D>>) -> Self {
        Self {
            block: Some(block),
            len,
            used_on: Vec::new(),
            anchor,
        }
    }

    #[inline]
    fn block(&self) -> &Block<D> {
        self.block
            .as_ref()
            .expect("invariant violated: buffer used after free (this is a bug)")
    }

    /// The backend buffer (the whole block, which may be larger than [`Self::len`]).
    #[inline]
    pub fn raw(&self) -> &D::Buffer {
        &self.block().raw
    }

    /// The view of the bytes asked for: what ops and copies take.
    #[inline]
    pub fn view(&self) -> View<'_, D> {
        View::new(self.raw(), self.len)
    }

    /// Bytes requested.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether zero bytes were requested.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the block really has (the rounded size).
    pub fn capacity(&self) -> usize {
        self.block().size
    }

    /// The allocator's state, kept alive by this buffer's share of its anchor.
    fn state(&self) -> &Arc<AllocatorState<D>> {
        // SAFETY: the buffer holds a share of the anchor until its drop (module doc).
        unsafe { self.anchor.as_ref() }.value()
    }

    /// The stream the buffer was allocated for.
    pub fn stream(&self) -> Stream<'_, D> {
        self.state().streams.stream(self.block().stream)
    }

    /// Marks that `stream` uses this buffer too, so its block is not reused until `stream`'s work up to
    /// the buffer's drop is done (PyTorch's `record_stream`). `stream` must be of the allocator's pool.
    pub fn record_stream(&mut self, stream: Stream<'_, D>) -> Result<()> {
        if !stream.is_of(&self.state().streams) {
            return Err(super::foreign_stream(stream));
        }
        let index = stream.index() as u32;
        if index != self.block().stream && !self.used_on.contains(&index) {
            self.used_on.push(index);
        }
        Ok(())
    }
}

impl<D: Device> fmt::Debug for Buffer<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl<D: Device> Drop for Buffer<D> {
    fn drop(&mut self) {
        let Some(block) = self.block.take() else {
            return;
        };
        let anchor = self.anchor;
        let taken_back = self.state().free(block, self.len, &self.used_on, anchor);
        if !taken_back {
            // SAFETY: this buffer's share is given up here and neither it nor the state is touched
            // afterwards (this is the last statement).
            unsafe { Anchor::release_remote(anchor) };
        }
    }
}
