//! [`CudaDownload`]: a device-to-host copy in flight ([`braid_runtime::Device::download`]), and
//! `Downloads`, the per-stream pool of page-locked buffers and events behind it.
//!
//! # How a download runs
//!
//! `Downloads::start` takes page-locked buffers for the bytes (chunks of at most 1 MiB from the
//! stream's `PinnedCache`, see the `pinned` module) and an event, encodes one `cuMemcpyDtoHAsync` per
//! chunk on the stream, records the event behind them and returns at once: the copy runs when the
//! stream reaches it, while the host goes on encoding. `download_ready` queries the event;
//! `finish_download` synchronizes on the event (not the whole stream), reports a failure of the
//! stream's work, copies the chunks into the caller's slice and gives the buffers and the event back to
//! the pool. So steady state allocates no page-locked memory and creates no event.
//!
//! # Promises
//!
//! - **A buffer is reused only after its copy has run.** A buffer goes back to the pool from
//!   `finish` (its event has completed) or, for a download dropped unfinished, once its event is seen
//!   complete: `Drop` does not wait; it hands the buffers and event to the pool's *orphans*, which the
//!   pool reclaims at its next download (one `cuEventQuery` each) and, at the latest, when the pool
//!   itself goes (after synchronizing each orphan's event). Nothing frees memory a copy may still write.
//! - **Failures.** A fault of the stream's earlier work makes the event's synchronize fail (the
//!   context's sticky error): `finish` reports [`RuntimeError::StreamFailed`]. A panicked host function
//!   on the stream (see [`crate::stream`]) is reported the same way.
//! - **Lifetime.** The pool is shared (`Arc`) by its stream and its downloads in flight, and holds the
//!   context, so a download may be finished or dropped after its stream was shut down. A shut-down
//!   stream's pool keeps nothing idle: a buffer returned afterwards is freed at once, and the pool
//!   frees whatever is left when its last download is gone.
//! - **Fallback.** When page-locked memory is refused a chunk is a `Vec`; the driver then copies into
//!   pageable memory synchronously (`cuMemcpyDtoHAsync` returns once the stream reached the copy), so
//!   `download` blocks the host but stays correct.
//!
//! A download, like a buffer, must not be dropped on the driver's callback thread (inside a host
//! function): dropping one makes driver calls.
//!
//! [`RuntimeError::StreamFailed`]: braid_runtime::RuntimeError::StreamFailed

use std::ffi::c_void;
use std::sync::Arc;

use braid_runtime::Result;
use cudarc::driver::{result, sys, DriverError};
use parking_lot::Mutex;

use crate::context::Context;
use crate::error;
use crate::event::{create_raw, destroy_raw};
use crate::pinned::{PinnedCache, Staged, CHUNK};
use crate::stream::HostFailure;

/// One stream's download buffers and events (module doc). Shared by the stream and its downloads.
pub(crate) struct Downloads {
    /// The stream's index in its pool (for errors).
    stream: usize,
    context: Arc<Context>,
    host_failure: Arc<HostFailure>,
    state: Mutex<PoolState>,
}

struct PoolState {
    cache: PinnedCache,
    /// Events of finished downloads, for the next ones.
    spare_events: Vec<sys::CUevent>,
    /// Downloads dropped before their copy was known complete: their event and buffers.
    orphans: Vec<InFlight>,
    /// Set when the stream shut down: nothing is kept idle any more.
    closed: bool,
}

// SAFETY: the event handles are owned by this value alone (buffers are `Send` themselves); the driver
// calls made on them are thread-safe, and the mutex around the state orders every use.
unsafe impl Send for PoolState {}

/// The resources of one download until its copy has run.
struct InFlight {
    event: sys::CUevent,
    chunks: Vec<Staged>,
}

/// A device-to-host copy in flight on a CUDA stream (module doc).
pub struct CudaDownload {
    pool: Arc<Downloads>,
    /// Bytes copied.
    len: usize,
    /// `None` once finished.
    flight: Option<InFlight>,
}

// SAFETY: the event handle is owned by this download until it is given back to its pool (buffers are
// `Send` themselves); the driver calls made on it are thread-safe.
unsafe impl Send for CudaDownload {}

impl std::fmt::Debug for CudaDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDownload")
            .field("stream", &self.pool.stream)
            .field("len", &self.len)
            .finish()
    }
}

impl Downloads {
    pub(crate) fn new(
        stream: usize,
        context: Arc<Context>,
        host_failure: Arc<HostFailure>,
    ) -> Self {
        Self {
            stream,
            context,
            host_failure,
            state: Mutex::new(PoolState {
                cache: PinnedCache::new(),
                spare_events: Vec::new(),
                orphans: Vec::new(),
                closed: false,
            }),
        }
    }

    /// Encodes a copy of `len` bytes at `src` into pooled page-locked memory on `stream`, records an
    /// event behind it and returns at once.
    ///
    /// # Safety
    /// `stream` is the live stream this pool belongs to, its context is current, and `src` addresses
    /// `len` bytes of device memory that stay allocated until the copy has run (stream order).
    pub(crate) unsafe fn start(
        self: &Arc<Self>,
        stream: sys::CUstream,
        src: sys::CUdeviceptr,
        len: usize,
    ) -> Result<CudaDownload> {
        let (event, mut chunks) = {
            let mut state = self.state.lock();
            state.reclaim_orphans();
            let event = match state.spare_events.pop() {
                Some(event) => event,
                None => create_raw().map_err(|e| error::device("cuEventCreate", e))?,
            };
            let chunks: Vec<Staged> = (0..len.div_ceil(CHUNK))
                .map(|i| state.cache.take((len - i * CHUNK).min(CHUNK)))
                .collect();
            (event, chunks)
        };
        let mut encoded: std::result::Result<(), (&str, DriverError)> = Ok(());
        for (i, chunk) in chunks.iter_mut().enumerate() {
            let bytes = (len - i * CHUNK).min(CHUNK);
            // SAFETY: `chunk` holds at least `bytes` bytes and is owned by this download until its event
            // (recorded below, after every chunk's copy) completes; `src + i * CHUNK` addresses `bytes`
            // live device bytes and `stream` is live (the caller's contract).
            let copied = unsafe {
                sys::cuMemcpyDtoHAsync_v2(
                    chunk.as_mut_ptr().cast::<c_void>(),
                    src + (i * CHUNK) as u64,
                    bytes,
                    stream,
                )
                .result()
            };
            if let Err(e) = copied {
                encoded = Err(("cuMemcpyDtoHAsync", e));
                break;
            }
        }
        if encoded.is_ok() {
            // SAFETY: `event` is a live event of this context, `stream` per the caller.
            encoded =
                unsafe { result::event::record(event, stream) }.map_err(|e| ("cuEventRecord", e));
        }
        match encoded {
            Ok(()) => Ok(CudaDownload {
                pool: self.clone(),
                len,
                flight: Some(InFlight { event, chunks }),
            }),
            Err((call, e)) => {
                // Some chunks' copies may be encoded and nothing says when they have run: wait for the
                // stream before the buffers are reused.
                // SAFETY: `stream` per the caller.
                let _ = unsafe { result::stream::synchronize(stream) };
                self.give_back(InFlight { event, chunks });
                Err(error::device(call, e))
            }
        }
    }

    /// Takes back the event and buffers of a download whose copy has run (or will never run).
    fn give_back(&self, flight: InFlight) {
        let mut state = self.state.lock();
        let keep = !state.closed;
        state.give_back(flight, keep);
    }

    /// The stream shut down (drained): frees what is idle, and from now on what comes back.
    pub(crate) fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.reclaim_orphans();
        state.release_idle();
    }

    /// Page-locked bytes this stream holds for downloads (idle or in a download not yet finished).
    pub(crate) fn pinned_bytes(&self) -> usize {
        self.state.lock().cache.pinned_bytes()
    }
}

impl PoolState {
    fn give_back(&mut self, flight: InFlight, keep: bool) {
        for chunk in flight.chunks {
            self.cache.recycle(chunk, keep);
        }
        if keep {
            self.spare_events.push(flight.event);
        } else {
            // SAFETY: the event is owned here and destroyed once; the caller made the context current.
            unsafe { destroy_raw(flight.event) };
        }
    }

    /// Gives back the orphans whose copy has run (or failed for good: the context's error is sticky
    /// and nothing will write their buffers).
    fn reclaim_orphans(&mut self) {
        let mut i = 0;
        while i < self.orphans.len() {
            // SAFETY: the event is a live event owned by the orphan.
            let done = !matches!(
                unsafe { result::event::query(self.orphans[i].event) },
                Err(DriverError(sys::CUresult::CUDA_ERROR_NOT_READY))
            );
            if done {
                let flight = self.orphans.swap_remove(i);
                let keep = !self.closed;
                self.give_back(flight, keep);
            } else {
                i += 1;
            }
        }
    }

    /// Frees the idle buffers and events.
    fn release_idle(&mut self) {
        self.cache.release_idle();
        for event in self.spare_events.drain(..) {
            // SAFETY: owned here, destroyed once; the caller made the context current.
            unsafe { destroy_raw(event) };
        }
    }
}

impl Drop for Downloads {
    fn drop(&mut self) {
        // The last download and the stream are gone: wait for any orphan's copy, then free everything.
        if let Err(e) = self.context.bind() {
            tracing::warn!(error = %e, "binding the CUDA context to free download buffers failed");
        }
        let state = self.state.get_mut();
        for flight in std::mem::take(&mut state.orphans) {
            // SAFETY: the event is a live event owned by the orphan. An error is the context's sticky
            // error: the copy will never run, so its buffers are free either way.
            let _ = unsafe { result::event::synchronize(flight.event) };
            state.give_back(flight, false);
        }
        state.release_idle();
    }
}

impl CudaDownload {
    /// Whether the copy has run (never blocks). An error is the stream's failure.
    pub(crate) fn is_ready(&self) -> Result<bool> {
        let Some(flight) = &self.flight else {
            return Ok(true);
        };
        self.pool.context.bind()?;
        // SAFETY: the event is live (owned by this download) and of the current context.
        match unsafe { result::event::query(flight.event) } {
            Ok(()) => Ok(true),
            Err(DriverError(sys::CUresult::CUDA_ERROR_NOT_READY)) => Ok(false),
            Err(e) => Err(error::stream_failed(self.pool.stream, "cuEventQuery", e)),
        }
    }

    /// Waits for the copy, writes its bytes into `dst` (`dst.len()` = the download's length) and gives
    /// the buffers and event back; reports a failure of the stream's work before the copy.
    pub(crate) fn finish(mut self, dst: &mut [u8]) -> Result<()> {
        debug_assert_eq!(
            dst.len(),
            self.len,
            "finish_download: dst holds the view's bytes"
        );
        let len = dst.len().min(self.len);
        let dst = &mut dst[..len];
        let flight = self
            .flight
            .take()
            .expect("invariant violated: a download is finished once (this is a bug)");
        let pool = self.pool.clone();
        if let Err(e) = pool.context.bind() {
            // Nothing says the copy has run: leave its buffers to the pool's orphans.
            pool.state.lock().orphans.push(flight);
            return Err(e);
        }
        // SAFETY: the event is live (owned by `flight`) and of the current context.
        let outcome = unsafe { result::event::synchronize(flight.event) }
            .map_err(|e| error::stream_failed(pool.stream, "cuEventSynchronize", e))
            .and_then(|()| pool.host_failure.check(pool.stream))
            .map(|()| {
                for (chunk, out) in flight.chunks.iter().zip(dst.chunks_mut(CHUNK)) {
                    // SAFETY: the copy into `chunk` has completed (its event synchronized), `chunk`
                    // holds at least `out.len()` bytes (its chunk of the download), and `out` is a
                    // distinct slice.
                    unsafe {
                        std::ptr::copy_nonoverlapping(chunk.as_ptr(), out.as_mut_ptr(), out.len())
                    };
                }
            });
        // The copy has run, or failed for good (a sticky error: nothing will write the buffers).
        pool.give_back(flight);
        outcome
    }
}

impl Drop for CudaDownload {
    fn drop(&mut self) {
        let Some(flight) = self.flight.take() else {
            return;
        };
        // Never wait here: a copy not yet run leaves its buffers to the pool's orphans (module doc).
        // SAFETY: the event is live (owned by `flight`) and of the current context (when the bind
        // fails nothing is asked: the download is taken for pending).
        let pending = self.pool.context.bind().is_err()
            || matches!(
                unsafe { result::event::query(flight.event) },
                Err(DriverError(sys::CUresult::CUDA_ERROR_NOT_READY))
            );
        if pending {
            self.pool.state.lock().orphans.push(flight);
        } else {
            self.pool.give_back(flight);
        }
    }
}
