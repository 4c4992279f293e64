//! [`Buffer`]: a device buffer from a [`super::CachingAllocator`] — a block, the bytes asked for, and
//! the streams that used it — and [`ThreadAnchor`], what keeps its allocator alive.
//!
//! A buffer must reach its allocator's state when dropped, even after the allocator's owner is gone.
//! Holding an `Arc` of the state itself would make every allocation and free on every thread bump one
//! shared counter — one contended cache line, the cost fix 1 removes. So each thread's cache holds one
//! [`ThreadAnchor`] (an `Arc` of the state) and buffers clone that anchor: the counter they touch is
//! their thread's own, and another thread writes it only when it frees a buffer this thread allocated.

use std::fmt;
use std::sync::Arc;

use super::block::Block;
use super::AllocatorState;
use crate::device::{Device, View};
use crate::error::Result;
use crate::stream::Stream;

/// One thread's reference to an allocator's state, shared by the buffers the thread allocates.
pub(crate) struct ThreadAnchor<D: Device> {
    state: Arc<AllocatorState<D>>,
}

impl<D: Device> ThreadAnchor<D> {
    pub(crate) fn new(state: Arc<AllocatorState<D>>) -> Self {
        Self { state }
    }
}

/// A device buffer from a [`super::CachingAllocator`]. Dropping it returns its block to the allocator.
pub struct Buffer<D: Device> {
    block: Option<Block<D>>,
    len: usize,
    /// Streams (by index) other than the block's that used the buffer (`record_stream`).
    used_on: Vec<u32>,
    anchor: Arc<ThreadAnchor<D>>,
}

impl<D: Device> Buffer<D> {
    pub(super) fn new(block: Block<D>, len: usize, anchor: Arc<ThreadAnchor<D>>) -> Self {
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

    /// The stream the buffer was allocated for.
    pub fn stream(&self) -> Stream<'_, D> {
        self.anchor.state.streams.stream(self.block().stream)
    }

    /// Marks that `stream` uses this buffer too, so its block is not reused until `stream`'s work up to
    /// the buffer's drop is done (PyTorch's `record_stream`). `stream` must be of the allocator's pool.
    pub fn record_stream(&mut self, stream: Stream<'_, D>) -> Result<()> {
        if !stream.is_of(&self.anchor.state.streams) {
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
        if let Some(block) = self.block.take() {
            self.anchor.state.free(block, &self.used_on);
        }
    }
}
