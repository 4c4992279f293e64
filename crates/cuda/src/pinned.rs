//! [`PinnedCache`]: page-locked host buffers in power-of-two size classes, kept for reuse — the host
//! memory behind both directions of copy (the `staging` module for uploads, the `download` module for
//! downloads).
//!
//! - A buffer holds at most [`CHUNK`] (1 MiB) in one of the classes 4 KiB, 8 KiB, …, 1 MiB; a larger
//!   copy is split by its owner into chunks of [`CHUNK`], so any copy size reuses the same few classes.
//! - Idle buffers are kept for the next copy, up to [`RETAIN_MAX`] bytes per cache; past that a
//!   returned buffer is freed. So steady state allocates no page-locked memory.
//! - When page-locked memory is refused (`cuMemHostAlloc` fails) a buffer is a `Vec` instead
//!   ([`Staged::Pageable`]); the owner's copy still works, only without a true asynchronous DMA (see
//!   its module).
//!
//! A cache is owned by one stream's staging or download state, behind that owner's mutex. Its methods
//! make driver calls and expect the owner's context to be current. The owner returns every buffer it
//! took (or frees it with [`PinnedCache::recycle`] past the limit) and calls
//! [`PinnedCache::release_idle`] when it is done; `Drop` frees what is left (context current too).

use std::ffi::c_void;

use cudarc::driver::result;

use crate::live;

/// The largest buffer; bigger copies go in chunks of this size.
pub(crate) const CHUNK: usize = 1 << 20;
/// Idle page-locked bytes a cache keeps for reuse; buffers returned past this are freed.
pub(crate) const RETAIN_MAX: usize = 16 << 20;
/// The smallest class, log2 (4 KiB).
const MIN_SHIFT: u32 = 12;
/// Size classes: 4 KiB, 8 KiB, …, 1 MiB.
const CLASSES: usize = (CHUNK.trailing_zeros() - MIN_SHIFT + 1) as usize;

/// A page-locked host buffer of `1 << (class + MIN_SHIFT)` bytes, owned (freed by its cache).
pub(crate) struct Pinned {
    ptr: *mut u8,
    class: usize,
}

// SAFETY: a `Pinned` is the sole owner of a page-locked host allocation; moving that ownership to
// another thread is sound (the driver's free is thread-safe), and every access to the bytes is ordered
// by its owner (stream order and events).
unsafe impl Send for Pinned {}

impl Pinned {
    fn size(&self) -> usize {
        class_size(self.class)
    }
}

/// Host bytes that a copy reads or writes: page-locked, or a `Vec` when page-locked memory is refused.
pub(crate) enum Staged {
    Pinned(Pinned),
    Pageable(Vec<u8>),
}

impl Staged {
    /// The first byte.
    pub(crate) fn as_ptr(&self) -> *const u8 {
        match self {
            Staged::Pinned(p) => p.ptr,
            Staged::Pageable(v) => v.as_ptr(),
        }
    }

    /// The first byte, for a copy that writes it.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            Staged::Pinned(p) => p.ptr,
            Staged::Pageable(v) => v.as_mut_ptr(),
        }
    }
}

/// Idle page-locked buffers by size class (module doc).
pub(crate) struct PinnedCache {
    free: [Vec<Pinned>; CLASSES],
    /// Page-locked bytes allocated through this cache and not yet freed (idle or taken).
    pinned_bytes: usize,
    /// Page-locked bytes idle in `free` (at most [`RETAIN_MAX`]).
    free_bytes: usize,
}

impl PinnedCache {
    pub(crate) fn new() -> Self {
        Self {
            free: Default::default(),
            pinned_bytes: 0,
            free_bytes: 0,
        }
    }

    /// A buffer of at least `len` (at most [`CHUNK`]) bytes: an idle one of its class, a new page-locked
    /// one, or a `Vec` if page-locked memory is refused. Contents unspecified.
    pub(crate) fn take(&mut self, len: usize) -> Staged {
        let class = class_of(len);
        if let Some(p) = self.free[class].pop() {
            self.free_bytes -= p.size();
            return Staged::Pinned(p);
        }
        match self.alloc(class) {
            Some(p) => Staged::Pinned(p),
            None => Staged::Pageable(vec![0; len]),
        }
    }

    /// A new page-locked buffer of `class`, or `None` if the driver refuses.
    #[cold]
    fn alloc(&mut self, class: usize) -> Option<Pinned> {
        let bytes = class_size(class);
        // SAFETY: plain allocation in the current context; the memory is only used as bytes.
        match unsafe { result::malloc_host(bytes, 0) } {
            Ok(ptr) => {
                live::PINNED_BUFFERS.up();
                self.pinned_bytes += bytes;
                Some(Pinned {
                    ptr: ptr.cast::<u8>(),
                    class,
                })
            }
            Err(e) => {
                tracing::debug!(bytes, error = %crate::error::describe(e), "cuMemHostAlloc refused; using pageable memory");
                None
            }
        }
    }

    /// Takes back a buffer that no copy reads or writes any more: kept for reuse up to
    /// [`RETAIN_MAX`] idle bytes (and only if `keep`), else freed.
    pub(crate) fn recycle(&mut self, staged: Staged, keep: bool) {
        let Staged::Pinned(p) = staged else {
            return;
        };
        if keep && self.free_bytes + p.size() <= RETAIN_MAX {
            self.free_bytes += p.size();
            self.free[p.class].push(p);
        } else {
            self.pinned_bytes -= p.size();
            free_pinned(p);
        }
    }

    /// Frees every idle buffer.
    pub(crate) fn release_idle(&mut self) {
        for p in self.free.iter_mut().flat_map(|list| list.drain(..)) {
            self.pinned_bytes -= p.size();
            free_pinned(p);
        }
        self.free_bytes = 0;
    }

    /// Page-locked bytes allocated through this cache and not yet freed (idle or in use by a copy).
    pub(crate) fn pinned_bytes(&self) -> usize {
        self.pinned_bytes
    }
}

impl Drop for PinnedCache {
    fn drop(&mut self) {
        self.release_idle();
    }
}

/// Returns a page-locked buffer to the driver (the context is current; no copy uses it any more).
fn free_pinned(p: Pinned) {
    // SAFETY: `p.ptr` came from `cuMemHostAlloc`, is owned by `p` (consumed here, so freed once), and the
    // caller has seen the copies using it complete.
    if let Err(e) = unsafe { result::free_host(p.ptr.cast::<c_void>()) } {
        tracing::warn!(error = %crate::error::describe(e), "cuMemFreeHost failed");
    }
    live::PINNED_BUFFERS.down();
}

/// Bytes in a buffer of `class`.
const fn class_size(class: usize) -> usize {
    1 << (class as u32 + MIN_SHIFT)
}

/// The size class for `len` (at most [`CHUNK`]) bytes.
fn class_of(len: usize) -> usize {
    debug_assert!(len <= CHUNK, "chunks are at most CHUNK bytes");
    len.max(1)
        .next_power_of_two()
        .trailing_zeros()
        .saturating_sub(MIN_SHIFT) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_cover_up_to_one_chunk() {
        assert_eq!(CLASSES, 9);
        assert_eq!(class_of(0), 0);
        assert_eq!(class_of(1), 0);
        assert_eq!(class_of(4096), 0);
        assert_eq!(class_of(4097), 1);
        assert_eq!(class_of(CHUNK), CLASSES - 1);
        assert_eq!(class_size(CLASSES - 1), CHUNK);
        for len in [1, 100, 4095, 4096, 5000, 65_536, 700_000, CHUNK] {
            let class = class_of(len);
            assert!(class_size(class) >= len, "class {class} holds {len}");
            assert!(
                class == 0 || class_size(class - 1) < len,
                "class {class} is the smallest for {len}"
            );
        }
    }

    #[test]
    fn an_empty_cache_holds_nothing() {
        // No driver call is made for an empty cache (this runs without a GPU).
        let mut cache = PinnedCache::new();
        cache.release_idle();
        assert_eq!(cache.pinned_bytes(), 0);
        cache.recycle(Staged::Pageable(vec![1, 2, 3]), true);
        assert_eq!(cache.pinned_bytes(), 0);
    }
}
