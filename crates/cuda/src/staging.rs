//! [`Staging`]: the host copies behind [`braid_runtime::Device::copy_from_host`], one set per stream.
//!
//! The contract is that the caller may reuse `src` as soon as `copy_from_host` returns, while the copy
//! itself runs later in stream order. So the bytes are first copied into a staging buffer that braid owns,
//! `cuMemcpyHtoDAsync` is encoded from it, and an event recorded behind the copy says when the buffer may
//! be reused — PyTorch's `CachingHostAllocator` does the same (a pinned block plus an event per use).
//!
//! - Bytes are staged in page-locked memory from the stream's [`PinnedCache`] (the `pinned` module),
//!   so every copy is a true asynchronous DMA and `copy_from_host` never waits for the stream. A copy
//!   up to [`CHUNK`] (1 MiB) takes one buffer of a power-of-two size class from 4 KiB; a larger one
//!   (weights, uploaded once) is split into 1 MiB chunks, each copied and fenced on its own, so earlier
//!   chunks are reclaimed while later ones are staged. Buffers are reused, so steady state allocates
//!   nothing.
//! - Pageable memory (a `Vec`) is used only if page-locked memory is refused. The CUDA documentation lets
//!   `cuMemcpyHtoDAsync` from pageable memory synchronise with the stream, and it does: on an H100 with
//!   driver 580 such a copy waited for a host function still pending on the stream. So on that fallback
//!   a copy may block the host until the stream's earlier work is done.
//! - Reuse is decided by events, not by host callbacks: a `cuLaunchHostFunc` per copy would stall the
//!   stream until the driver's callback thread ran. [`Staging::reclaim`] pops completed entries from the
//!   front of the pending queue (one `cuEventQuery` each) before every new copy and after a synchronize.
//!   The events are kept and reused too.
//!
//! Ownership: a [`Staging`] belongs to one stream and sits behind that stream's own mutex (uncontended
//! unless the pool's `share` policy puts several threads on the stream). Its methods make driver calls
//! and expect the stream's context to be current. The stream calls [`Staging::release_all`] once it has
//! drained (its shutdown).

use std::collections::VecDeque;
use std::ffi::c_void;

use cudarc::driver::{result, sys, DriverError};

use crate::event::{create_raw, destroy_raw};
use crate::pinned::{PinnedCache, Staged, CHUNK};

/// One stream's staging buffers and the copies still reading them (module doc).
pub(crate) struct Staging {
    /// Idle page-locked buffers.
    cache: PinnedCache,
    /// Copies encoded but not known complete, in encoding order, each with the event recorded behind it.
    pending: VecDeque<(sys::CUevent, Staged)>,
    /// Events of completed entries, for the next records.
    spare_events: Vec<sys::CUevent>,
}

// SAFETY: the event handles are owned by this value alone (the buffers are `Send` themselves); moving
// that ownership to another thread is sound, and the driver calls made on them are thread-safe.
unsafe impl Send for Staging {}

impl Staging {
    pub(crate) fn new() -> Self {
        Self {
            cache: PinnedCache::new(),
            pending: VecDeque::new(),
            spare_events: Vec::new(),
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
        let mut staged = self.cache.take(src.len());
        // SAFETY: `staged` holds at least `src.len()` bytes (its class or length holds the chunk), is owned
        // here and read by no pending copy (it came idle from the cache or is new); `src` is a distinct
        // host slice.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), staged.as_mut_ptr(), src.len()) };
        // SAFETY: `staged` holds `src.len()` bytes and is kept in `pending` until the event recorded after
        // this copy completes (below), so it outlives the DMA; `dst` and `stream` per the caller.
        let copied = unsafe {
            sys::cuMemcpyHtoDAsync_v2(dst, staged.as_ptr().cast::<c_void>(), src.len(), stream)
                .result()
        };
        if let Err(e) = copied {
            // Nothing was encoded: the buffer is free again.
            self.cache.recycle(staged, true);
            return Err(e);
        }
        let recorded = match self.spare_events.pop() {
            Some(event) => Ok(event),
            None => create_raw(),
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
                self.cache.recycle(staged, true);
                Err(e)
            }
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
                    self.cache.recycle(staged, true);
                }
                Err(DriverError(sys::CUresult::CUDA_ERROR_NOT_READY)) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Page-locked bytes this stream holds for staging (idle or read by a pending copy).
    pub(crate) fn pinned_bytes(&self) -> usize {
        self.cache.pinned_bytes()
    }

    /// Frees every buffer and event. The caller has drained the stream (or it failed for good), so no
    /// pending copy still reads a buffer.
    pub(crate) fn release_all(&mut self) {
        while let Some((event, staged)) = self.pending.pop_front() {
            self.spare_events.push(event);
            self.cache.recycle(staged, false);
        }
        self.cache.release_idle();
        for event in self.spare_events.drain(..) {
            // SAFETY: `event` is owned here and destroyed once; the caller made the context current.
            unsafe { destroy_raw(event) };
        }
    }
}
