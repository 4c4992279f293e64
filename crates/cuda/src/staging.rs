//! [`Staging`]: the host copies behind [`braid_runtime::Device::copy_from_host`], one set per stream.
//!
//! The contract is that the caller may reuse `src` as soon as `copy_from_host` returns, while the copy
//! itself runs later in stream order. So the bytes are first copied into a staging buffer that braid owns,
//! `cuMemcpyHtoDAsync` is encoded from it, and an event recorded behind the copy says when the buffer may
//! be reused — PyTorch's `CachingHostAllocator` does the same (a pinned block plus an event per use).
//!
//! - Bytes are staged in page-locked memory (`cuMemHostAlloc`), so every copy is a true asynchronous
//!   DMA and `copy_from_host` never waits for the stream. A copy up to [`CHUNK`] (1 MiB) takes one buffer
//!   of a power-of-two size class from 4 KiB; a larger one (weights, uploaded once) is split into 1 MiB
//!   chunks, each copied and fenced on its own, so earlier chunks are reclaimed while later ones are
//!   staged. Buffers are kept per stream and reused, so steady state allocates nothing; past
//!   [`RETAIN_MAX`] bytes of idle buffers a stream frees them instead of keeping them.
//! - Pageable memory (a `Vec`) is used only if page-locked memory is refused. The CUDA documentation lets
//!   `cuMemcpyHtoDAsync` from pageable memory synchronise with the stream, and it does: on an H100 with
//!   driver 580 such a copy waited for a host function still pending on the stream. So on that fallback
//!   a copy may block the host until the stream's earlier work is done.
//! - Reuse is decided by events, not by host callbacks: a `cuLaunchHostFunc` per copy would stall the
//!   stream until the driver's callback thread ran. [`Staging::reclaim`] pops completed entries from the
//!   front of the pending queue (one `cuEventQuery` each) before every new copy and after a synchronize.
//!
//! Ownership: a [`Staging`] belongs to one stream and sits behind that stream's own mutex (uncontended
//! unless the pool's `share` policy puts several threads on the stream). Its methods make driver calls
//! and expect the stream's context to be current. It has no `Drop`: the stream calls
//! [`Staging::release_all`] once it has drained.

use std::collections::VecDeque;
use std::ffi::c_void;

use cudarc::driver::{result, sys, DriverError};

/// The largest staging buffer; bigger copies go in chunks of this size.
pub(crate) const CHUNK: usize = 1 << 20;
/// Idle page-locked bytes a stream keeps for reuse; buffers reclaimed past this are freed.
pub(crate) const RETAIN_MAX: usize = 16 << 20;
/// The smallest pinned class, log2 (4 KiB).
const MIN_SHIFT: u32 = 12;
/// Pinned size classes: 4 KiB, 8 KiB, …, 1 MiB.
const CLASSES: usize = (CHUNK.trailing_zeros() - MIN_SHIFT + 1) as usize;

/// A page-locked host buffer of `1 << (class + MIN_SHIFT)` bytes.
struct Pinned {
    ptr: *mut u8,
    class: usize,
}

impl Pinned {
    fn size(&self) -> usize {
        class_size(self.class)
    }
}

/// Bytes held until the copy reading them has run.
enum Staged {
    Pinned(Pinned),
    Pageable(Vec<u8>),
}

impl Staged {
    fn as_ptr(&self) -> *const u8 {
        match self {
            Staged::Pinned(p) => p.ptr,
            Staged::Pageable(v) => v.as_ptr(),
        }
    }
}

/// One stream's staging buffers and the copies still reading them (module doc).
pub(crate) struct Staging {
    /// Reusable pinned buffers by size class.
    free: [Vec<Pinned>; CLASSES],
    /// Copies encoded but not known complete, in encoding order, each with the event recorded behind it.
    pending: VecDeque<(sys::CUevent, Staged)>,
    /// Events of completed entries, for the next records.
    spare_events: Vec<sys::CUevent>,
    /// Pinned bytes held (free or pending).
    pinned_bytes: usize,
    /// Pinned bytes in `free` (at most [`RETAIN_MAX`]).
    free_bytes: usize,
}

// SAFETY: the raw pointers are page-locked host buffers and event handles owned by this value alone
// (nothing else holds them); moving that ownership to another thread is sound, and the driver calls made
// on them are thread-safe.
unsafe impl Send for Staging {}

impl Staging {
    pub(crate) fn new() -> Self {
        Self {
            free: Default::default(),
            pending: VecDeque::new(),
            spare_events: Vec::new(),
            pinned_bytes: 0,
            free_bytes: 0,
        }
    }

    /// Encodes `cuMemcpyHtoDAsync(dst, copy of src)` on `stream` and keeps the copy until it has run.
    ///
    /// # Safety
    /// `stream` is a live stream of the current context and `dst` addresses `src.len()` bytes of device
    /// memory that stay allocated until the copy has run (the caller's stream-order contract).
    pub(crate) unsafe fn copy_to_device(
        &mut self,
        stream: sys::CUstream,
        src: &[u8],
        dst: sys::CUdeviceptr,
    ) -> Result<(), DriverError> {
        for (i, chunk) in src.chunks(CHUNK).enumerate() {
            // SAFETY: the caller's guarantees for `dst..dst + src.len()` cover this chunk's sub-range.
            unsafe { self.copy_chunk(stream, chunk, dst + (i * CHUNK) as u64) }?;
        }
        Ok(())
    }

    /// [`Staging::copy_to_device`] for at most [`CHUNK`] bytes.
    ///
    /// # Safety
    /// As for [`Staging::copy_to_device`].
    unsafe fn copy_chunk(
        &mut self,
        stream: sys::CUstream,
        src: &[u8],
        dst: sys::CUdeviceptr,
    ) -> Result<(), DriverError> {
        self.reclaim()?;
        let staged = self.stage(src);
        // SAFETY: `staged` holds `src.len()` bytes and is kept in `pending` until the event recorded after
        // this copy completes (below), so it outlives the DMA; `dst` and `stream` per the caller.
        let copied = unsafe {
            sys::cuMemcpyHtoDAsync_v2(dst, staged.as_ptr().cast::<c_void>(), src.len(), stream)
                .result()
        };
        if let Err(e) = copied {
            // Nothing was encoded: the buffer is free again.
            self.recycle(staged);
            return Err(e);
        }
        let recorded = match self.spare_events.pop() {
            Some(event) => Ok(event),
            None => result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING),
        }
        .and_then(|event| {
            // SAFETY: `event` is a live event of this context (new or reclaimed), `stream` per the caller.
            match unsafe { result::event::record(event, stream) } {
                Ok(()) => Ok(event),
                Err(e) => {
                    self.spare_events.push(event);
                    Err(e)
                }
            }
        });
        match recorded {
            Ok(event) => {
                self.pending.push_back((event, staged));
                Ok(())
            }
            Err(e) => {
                // Without an event nothing says when the DMA is done: wait for it before reusing the buffer.
                // SAFETY: `stream` per the caller.
                let _ = unsafe { result::stream::synchronize(stream) };
                self.recycle(staged);
                Err(e)
            }
        }
    }

    /// Copies `src` (at most [`CHUNK`] bytes) into a reused or new pinned buffer, or a `Vec` if
    /// page-locked memory is refused.
    fn stage(&mut self, src: &[u8]) -> Staged {
        let class = class_of(src.len());
        let pinned = match self.free[class].pop() {
            Some(p) => {
                self.free_bytes -= p.size();
                Some(p)
            }
            None => self.alloc_pinned(class),
        };
        match pinned {
            Some(p) => {
                // SAFETY: `p` is a live pinned buffer of at least `src.len()` bytes (its class holds the
                // length) owned by this value and not read by any pending copy (it came from `free` or is
                // new); `src` is a distinct host slice.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p.ptr, src.len()) };
                Staged::Pinned(p)
            }
            None => Staged::Pageable(src.to_vec()),
        }
    }

    /// A new pinned buffer of `class`, or `None` if page-locked memory is refused (then a `Vec` is used).
    #[cold]
    fn alloc_pinned(&mut self, class: usize) -> Option<Pinned> {
        let bytes = class_size(class);
        // SAFETY: plain allocation in the current context; the memory is only used as bytes.
        match unsafe { result::malloc_host(bytes, 0) } {
            Ok(ptr) => {
                self.pinned_bytes += bytes;
                Some(Pinned {
                    ptr: ptr.cast::<u8>(),
                    class,
                })
            }
            Err(e) => {
                tracing::debug!(bytes, error = %crate::error::describe(e), "cuMemHostAlloc refused; staging in pageable memory");
                None
            }
        }
    }

    /// Takes back a buffer no copy reads any more: kept for reuse up to [`RETAIN_MAX`], else freed.
    fn recycle(&mut self, staged: Staged) {
        let Staged::Pinned(p) = staged else {
            return;
        };
        if self.free_bytes + p.size() <= RETAIN_MAX {
            self.free_bytes += p.size();
            self.free[p.class].push(p);
        } else {
            self.pinned_bytes -= p.size();
            free_pinned(p);
        }
    }

    /// Makes the buffers of completed copies reusable: pops from the front while the events report done.
    /// An error other than "not ready" is the stream's failure.
    pub(crate) fn reclaim(&mut self) -> Result<(), DriverError> {
        while let Some(&(event, _)) = self.pending.front() {
            // SAFETY: `event` is a live event owned by this value.
            match unsafe { result::event::query(event) } {
                Ok(()) => {
                    let (event, staged) = self
                        .pending
                        .pop_front()
                        .expect("invariant violated: front() was Some (this is a bug)");
                    self.spare_events.push(event);
                    self.recycle(staged);
                }
                Err(DriverError(sys::CUresult::CUDA_ERROR_NOT_READY)) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Page-locked bytes this stream holds for staging.
    pub(crate) fn pinned_bytes(&self) -> usize {
        self.pinned_bytes
    }

    /// Frees every buffer and event. The caller has drained the stream (or it failed for good), so no
    /// pending copy still reads a buffer.
    pub(crate) fn release_all(&mut self) {
        let pending: Vec<_> = self.pending.drain(..).collect();
        for (event, staged) in pending {
            self.spare_events.push(event);
            self.recycle(staged);
        }
        for p in self.free.iter_mut().flat_map(|list| list.drain(..)) {
            free_pinned(p);
        }
        self.pinned_bytes = 0;
        self.free_bytes = 0;
        for event in self.spare_events.drain(..) {
            // SAFETY: `event` is owned here and destroyed once.
            if let Err(e) = unsafe { result::event::destroy(event) } {
                tracing::warn!(error = %crate::error::describe(e), "cuEventDestroy failed");
            }
        }
    }
}

/// Returns a pinned buffer to the driver (the context is current; no copy reads the buffer any more).
fn free_pinned(p: Pinned) {
    // SAFETY: `p.ptr` came from `cuMemHostAlloc`, is owned by `p` (consumed here, so freed once), and the
    // caller has seen the copies reading it complete.
    if let Err(e) = unsafe { result::free_host(p.ptr.cast::<c_void>()) } {
        tracing::warn!(error = %crate::error::describe(e), "cuMemFreeHost failed");
    }
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
}
