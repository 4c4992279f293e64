//! The shared pools: one per small size class and one large pool, each behind its own lock (fix 1,
//! "sharded allocator pools").
//!
//! The seed's allocator held one recursive mutex across malloc, free and event recording. Here a small
//! request locks only its size class's pool, a large one only the large pool, and no lock is ever held
//! across a device call: events are recorded before a block is pushed, and a block whose events are not
//! yet known to be complete is popped, queried outside the lock, and pushed back if still busy.
//!
//! Blocks are taken most-recently-freed first (LIFO), which keeps reuse cache-warm; a block last used on
//! the asking stream is preferred to one of another stream, so steady-state reuse needs no event.

use std::collections::BTreeMap;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use super::block::{Adopted, Block};
use super::size_class::{SizeClass, SMALL_CLASSES};
use crate::{Device, Stream};

/// How much larger than the rounded request a reused large block may be (1/4 more).
const LARGE_REUSE_SLACK: usize = 4;

/// One small size class's shared list of free blocks, on its own cache line.
type ClassPool<D> = CachePadded<Mutex<Vec<Block<D>>>>;

pub(crate) struct SharedPools<D: Device> {
    small: Box<[ClassPool<D>]>,
    /// Keyed by block size; each entry a LIFO list.
    large: CachePadded<Mutex<BTreeMap<usize, Vec<Block<D>>>>>,
}

impl<D: Device> SharedPools<D> {
    pub(crate) fn new() -> Self {
        Self {
            small: (0..SMALL_CLASSES)
                .map(|_| CachePadded::new(Mutex::new(Vec::new())))
                .collect(),
            large: CachePadded::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn push_small(&self, block: Block<D>) {
        let class = block
            .class
            .expect("invariant violated: large block in a small pool (this is a bug)");
        self.small[class.index()].lock().push(block);
    }

    fn push_large(&self, block: Block<D>) {
        self.large.lock().entry(block.size).or_default().push(block);
    }

    pub(crate) fn push(&self, block: Block<D>) {
        if block.class.is_some() {
            self.push_small(block)
        } else {
            self.push_large(block)
        }
    }

    /// A cached block of `class` reusable by `stream`, if any.
    pub(crate) fn take_small(&self, class: SizeClass, stream: Stream<D>) -> Option<Adopted<D>> {
        let pool = &self.small[class.index()];
        let candidate = {
            let mut list = pool.lock();
            if let Some(pos) = ready_position(&list, stream) {
                let block = list.swap_remove(pos);
                drop(list);
                return Some(block.adopt(stream));
            }
            list.pop()?
        };
        self.check_candidate(candidate, stream)
    }

    /// A cached large block of at least `size` (and at most a quarter more) reusable by `stream`.
    pub(crate) fn take_large(&self, size: usize, stream: Stream<D>) -> Option<Adopted<D>> {
        let candidate = {
            let mut map = self.large.lock();
            let mut found = None;
            let mut busy = None;
            for (&key, list) in map.range(size..=size + size / LARGE_REUSE_SLACK) {
                if let Some(pos) = ready_position(list, stream) {
                    found = Some((key, pos));
                    break;
                }
                if busy.is_none() && !list.is_empty() {
                    busy = Some((key, list.len() - 1));
                }
            }
            let (key, pos) = found.or(busy)?;
            let list = map
                .get_mut(&key)
                .expect("invariant violated: key vanished under the lock (this is a bug)");
            let block = list.swap_remove(pos);
            if list.is_empty() {
                map.remove(&key);
            }
            if found.is_some() {
                drop(map);
                return Some(block.adopt(stream));
            }
            block
        };
        self.check_candidate(candidate, stream)
    }

    /// Outside any lock: ask the device whether a busy-looking block is in fact free for `stream`.
    fn check_candidate(&self, block: Block<D>, stream: Stream<D>) -> Option<Adopted<D>> {
        if block.ready_query(stream.id()) {
            Some(block.adopt(stream))
        } else {
            self.push(block);
            None
        }
    }

    /// Takes every cached block out of every pool (for `empty_cache` and OOM recovery).
    pub(crate) fn drain(&self) -> Vec<Block<D>> {
        let mut all = Vec::new();
        for pool in self.small.iter() {
            all.append(&mut pool.lock());
        }
        for (_, mut list) in std::mem::take(&mut *self.large.lock()) {
            all.append(&mut list);
        }
        all
    }
}

/// The newest block reusable by `stream` without a device call, preferring one last used on `stream`
/// itself (no cross-stream ordering needed).
fn ready_position<D: Device>(list: &[Block<D>], stream: Stream<D>) -> Option<usize> {
    let id = stream.id();
    list.iter()
        .rposition(|b| b.stream == stream && b.ready_known(id))
        .or_else(|| list.iter().rposition(|b| b.ready_known(id)))
}
