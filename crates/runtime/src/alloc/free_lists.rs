//! [`SharedFreeLists`], the allocator's shared pools: one free list per size class, small and large,
//! each behind its own lock (fix 1, "sharded allocator pools").
//!
//! The seed's allocator held one recursive mutex across malloc, free and event recording. Here a request
//! locks only its size class's pool — a large one the pool of its class and, when that has nothing
//! reusable, the pools of at most [`LARGE_REUSE_CLASSES`] classes above it, one lock at a time — so two
//! sizes never share a lock, and no lock is ever held across a device call: events are recorded before
//! a block is pushed, and a block whose events are not yet known to be complete is popped, queried
//! outside the lock, and pushed back if still busy. (Large blocks once shared one `BTreeMap` behind one
//! lock; with eight classes per power of two there are few enough classes for one `Vec` each.)
//!
//! Blocks are taken most-recently-freed first (LIFO), which keeps reuse cache-warm; a block last used on
//! the asking stream is preferred to one of another stream, so steady-state reuse needs no event.

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use super::block::{Adopted, Block};
use super::size_class::{SizeClass, CLASSES};
use crate::device::Device;

/// How many classes above the requested one a large request may take a cached block from: two, which
/// is at most a quarter larger (eight classes per power of two), the waste a reused large block may add.
pub(crate) const LARGE_REUSE_CLASSES: usize = 2;

/// One size class's shared list of free blocks, on its own cache line.
type ClassPool<D> = CachePadded<Mutex<Vec<Block<D>>>>;

pub(crate) struct SharedFreeLists<D: Device> {
    /// Indexed by [`SizeClass::index`].
    classes: Box<[ClassPool<D>]>,
}

impl<D: Device> SharedFreeLists<D> {
    pub(crate) fn new() -> Self {
        Self {
            classes: (0..CLASSES)
                .map(|_| CachePadded::new(Mutex::new(Vec::new())))
                .collect(),
        }
    }

    pub(crate) fn push(&self, block: Block<D>) {
        self.classes[block.class.index()].lock().push(block);
    }

    /// A cached block reusable by `stream`: of `class` exactly when small; of `class` or up to
    /// [`LARGE_REUSE_CLASSES`] classes above when large, the smallest first.
    pub(crate) fn take(&self, class: SizeClass, stream: u32) -> Option<Adopted<D>> {
        let first = class.index();
        let last = if class.is_small() {
            first
        } else {
            (first + LARGE_REUSE_CLASSES).min(CLASSES - 1)
        };
        // A class holding blocks whose events are not known complete: one is asked about below.
        let mut busy = None;
        for index in first..=last {
            let mut list = self.classes[index].lock();
            if let Some(pos) = ready_position(&list, stream) {
                let block = list.swap_remove(pos);
                drop(list);
                return Some(block.adopt(stream));
            }
            if busy.is_none() && !list.is_empty() {
                busy = Some(index);
            }
        }
        let candidate = self.classes[busy?].lock().pop()?;
        self.check_candidate(candidate, stream)
    }

    /// Outside any lock: ask the device whether a busy-looking block is in fact free for `stream`.
    fn check_candidate(&self, block: Block<D>, stream: u32) -> Option<Adopted<D>> {
        if block.ready_query(stream) {
            Some(block.adopt(stream))
        } else {
            self.push(block);
            None
        }
    }

    /// Takes every cached block out of every pool (for `empty_cache` and OOM recovery).
    pub(crate) fn drain(&self) -> Vec<Block<D>> {
        let mut all = Vec::new();
        for pool in self.classes.iter() {
            all.append(&mut pool.lock());
        }
        all
    }
}

/// The newest block reusable by `stream` without a device call, preferring one last used on `stream`
/// itself (no cross-stream ordering needed).
fn ready_position<D: Device>(list: &[Block<D>], stream: u32) -> Option<usize> {
    list.iter()
        .rposition(|b| b.stream == stream && b.ready_known(stream))
        .or_else(|| list.iter().rposition(|b| b.ready_known(stream)))
}
