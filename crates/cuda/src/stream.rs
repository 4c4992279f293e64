//! [`CudaStream`]: one pool slot's native stream, with its cuBLAS handle, its upload staging, its
//! download pool and its host-function failure.
//!
//! # What a stream owns and promises
//!
//! - A `CUstream` created with `CU_STREAM_NON_BLOCKING`, for every slot including the default stream
//!   (index 0). A non-blocking stream never synchronises implicitly with the legacy NULL stream, so slot 0
//!   is an ordinary in-order queue like the others and no work anywhere (cuBLAS, another library on the
//!   NULL stream) serialises braid's streams behind it. Nothing in braid relies on the NULL stream's
//!   implicit barriers: cross-stream order comes only from events.
//! - Work goes straight to the stream when it is encoded; there is no command buffer, so `commit` is
//!   a no-op for CUDA.
//! - The handle (and the cuBLAS handle bound to it) is used under a read lock and destroyed under the
//!   write lock (`shutdown`), so a thread that raced the pool's shutdown gets
//!   [`braid_runtime::RuntimeError::Dropped`] instead of encoding onto a destroyed stream. The lock is
//!   the stream's own (one uncontended atomic per call, on a line other streams do not touch); the
//!   pool's shutdown is its only writer.
//! - Host functions ([`crate::CudaDevice::launch_host_fn`]) run in stream order on the driver's callback
//!   thread. A panic in one is caught (unwinding into the driver would abort), marks the stream failed
//!   as a faulting kernel would on the CPU backend, skips the stream's later host functions, and is
//!   reported by every later synchronize (and download) as [`braid_runtime::RuntimeError::StreamFailed`].
//! - Host-to-device copies are staged in page-locked memory (the `staging` module) so the caller's slice
//!   is free on return and the copy does not wait for the stream.
//! - Device-to-host copies are downloads (the `download` module): page-locked buffers and an event from
//!   the stream's own pool, so `download` returns at once and `finish_download` waits for that copy
//!   alone, not for the whole stream.
//! - One cuBLAS handle per stream, created on the stream's first GEMM and bound to it for its life
//!   (cuBLAS handles are cheap to use but costly to create, and one per stream means no two threads ever
//!   reconfigure a shared handle).
//! - `shutdown` (the pool's drop) drains the stream and releases everything it holds: the cuBLAS handle
//!   (before the stream it is bound to), the staging buffers and events, the idle download buffers, the
//!   stream. Downloads still in flight keep their pool (and the context) until they are finished or
//!   dropped.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use braid_runtime::{Result, RuntimeError};
use cudarc::driver::{result, sys};
use parking_lot::{Mutex, RwLock};

use crate::blas::Blas;
use crate::context::Context;
use crate::download::{CudaDownload, Downloads};
use crate::staging::Staging;
use crate::{error, live};

/// The native stream and the cuBLAS handle bound to it; the stream is null after shutdown.
struct Live {
    stream: sys::CUstream,
    /// Created on the first GEMM; destroyed by shutdown, before the stream.
    blas: OnceLock<Blas>,
}

// SAFETY: a `CUstream` is a driver handle usable from any thread (the driver API is thread-safe); the
// `RwLock` around it orders its use against its destruction. `Blas` is `Send + Sync` itself.
unsafe impl Send for Live {}
// SAFETY: as for `Send`.
unsafe impl Sync for Live {}

/// The failure of a host function on a stream, written by the driver's callback thread.
#[derive(Default)]
pub(crate) struct HostFailure {
    /// Set (Release) after `message` is written; read (Acquire) before reading it.
    failed: AtomicBool,
    message: Mutex<Option<String>>,
}

impl HostFailure {
    /// The failure of stream `index`, if one of its host functions panicked.
    pub(crate) fn check(&self, index: usize) -> Result<()> {
        // Acquire pairs with the Release in `HostFailure::record`: the message written before is visible.
        if self.failed.load(Ordering::Acquire) {
            let message = self.message.lock().clone().unwrap_or_default();
            return Err(RuntimeError::StreamFailed {
                stream: index,
                message: format!("a host function panicked: {message}"),
            });
        }
        Ok(())
    }
}

/// A native CUDA stream of one pool slot. See the module doc.
pub struct CudaStream {
    index: usize,
    context: Arc<Context>,
    live: RwLock<Live>,
    staging: Mutex<Staging>,
    downloads: Arc<Downloads>,
    host_failure: Arc<HostFailure>,
}

impl CudaStream {
    /// Creates the stream of slot `index` (the caller has made `context` current).
    pub(crate) fn create(index: usize, context: Arc<Context>) -> Result<Self> {
        let raw = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(|e| error::device("cuStreamCreate", e))?;
        live::STREAMS.up();
        let host_failure = Arc::new(HostFailure::default());
        Ok(Self {
            index,
            downloads: Arc::new(Downloads::new(index, context.clone(), host_failure.clone())),
            context,
            live: RwLock::new(Live {
                stream: raw,
                blas: OnceLock::new(),
            }),
            staging: Mutex::new(Staging::new()),
            host_failure,
        })
    }

    /// The slot index this stream was created for (0 = the pool's default stream).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The raw handle, for cudarc's safe API (`CudaContext::wrap_borrowed_stream`, cuBLAS). Null after the
    /// stream was shut down; valid until then. Do not destroy it.
    pub fn cu_stream(&self) -> sys::CUstream {
        self.live.read().stream
    }

    /// Page-locked bytes this stream holds for staging host-to-device copies.
    pub fn pinned_staging_bytes(&self) -> usize {
        self.staging.lock().pinned_bytes()
    }

    /// Page-locked bytes this stream holds for downloads (idle, or in a download not yet finished).
    pub fn pinned_download_bytes(&self) -> usize {
        self.downloads.pinned_bytes()
    }

    /// Runs `f` with the live handle, the context current, and shutdown held off.
    #[inline]
    pub(crate) fn with_raw<R>(&self, f: impl FnOnce(sys::CUstream) -> Result<R>) -> Result<R> {
        let live = self.live.read();
        if live.stream.is_null() {
            return Err(error::dropped(self.index));
        }
        self.context.bind()?;
        f(live.stream)
    }

    /// [`CudaStream::with_raw`] with the stream's cuBLAS handle too (created on first use).
    pub(crate) fn with_blas<R>(
        &self,
        f: impl FnOnce(sys::CUstream, &Blas) -> Result<R>,
    ) -> Result<R> {
        let live = self.live.read();
        if live.stream.is_null() {
            return Err(error::dropped(self.index));
        }
        self.context.bind()?;
        let blas = match live.blas.get() {
            Some(blas) => blas,
            None => {
                let created = Blas::new(live.stream)?;
                // Two threads may race to create it (a shared stream); the loser's handle is destroyed.
                live.blas.get_or_init(|| created)
            }
        };
        f(live.stream, blas)
    }

    /// Makes the cuBLAS and cuBLASLt handles now (they are otherwise made on the first GEMM), then
    /// starts capturing the stream (`CU_STREAM_CAPTURE_MODE_THREAD_LOCAL`: this thread may not make
    /// calls that are unsafe during a capture; other threads are not restricted). See [`crate::graph`].
    pub(crate) fn begin_capture(&self) -> Result<()> {
        self.with_blas(|raw, blas| {
            let _ = blas.lt();
            // SAFETY: `raw` is live (read lock held) in the current context.
            unsafe {
                result::stream::begin_capture(
                    raw,
                    sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                )
            }
            .map_err(|e| error::device("cuStreamBeginCapture", e))
        })
    }

    /// Ends the capture and instantiates what it recorded (see [`crate::graph`]).
    pub(crate) fn end_capture(&self) -> Result<crate::graph::CudaGraph> {
        self.with_raw(|raw| {
            // SAFETY: `raw` is live (read lock held) in the current context and capturing (the
            // caller's `begin_capture` succeeded).
            let graph = unsafe { result::stream::end_capture(raw) }
                .map_err(|e| error::device("cuStreamEndCapture", e))?;
            crate::graph::CudaGraph::instantiate(graph, self.context.clone())
        })
    }

    /// Waits for all work on the stream; reports a device fault or a host-function panic.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.with_raw(|raw| {
            // SAFETY: `raw` is live: the read lock that shutdown's destroy needs is held.
            unsafe { result::stream::synchronize(raw) }
                .map_err(|e| error::stream_failed(self.index, "cuStreamSynchronize", e))?;
            self.check()?;
            self.staging
                .lock()
                .reclaim()
                .map_err(|e| error::stream_failed(self.index, "cuEventQuery (staging)", e))
        })
    }

    /// The stream's failure, if one of its host functions panicked.
    pub(crate) fn check(&self) -> Result<()> {
        self.host_failure.check(self.index)
    }

    /// Encodes a staged copy of `src` to `dst` (see the `staging` module).
    pub(crate) fn copy_from_host(&self, src: &[u8], dst: sys::CUdeviceptr) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.with_raw(|raw| {
            // SAFETY: `raw` is live (read lock held) in the current context; `dst` addresses `src.len()`
            // bytes kept allocated until the copy has run (the `Device` contract: memory is freed only
            // after the work using it completed).
            unsafe { self.staging.lock().copy_to_device(raw, src, dst) }
                .map_err(|e| error::device("cuMemcpyHtoDAsync", e))
        })
    }

    /// Encodes a copy of `len` bytes at `src` into the stream's download buffers and returns at once
    /// (see the `download` module).
    pub(crate) fn download(&self, src: sys::CUdeviceptr, len: usize) -> Result<CudaDownload> {
        self.with_raw(|raw| {
            // SAFETY: `raw` is this pool's live stream (read lock held) in the current context; `src`
            // addresses `len` device bytes kept allocated until the copy has run (the `Device` contract).
            unsafe { self.downloads.start(raw, src, len) }
        })
    }

    /// Encodes `f` to run on the driver's callback thread when the stream reaches this point.
    pub(crate) fn launch_host_fn(&self, f: Box<dyn FnOnce() + Send>) -> Result<()> {
        self.with_raw(|raw| {
            let call = Box::into_raw(Box::new(HostCall {
                f,
                failure: self.host_failure.clone(),
            }));
            // SAFETY: `raw` is live; `run_host_call` takes ownership of `call` exactly once, when the
            // driver runs it; the driver runs it only if this call succeeds.
            let launched = unsafe {
                result::stream::launch_host_function(raw, run_host_call, call.cast::<c_void>())
            };
            if let Err(e) = launched {
                // SAFETY: the launch failed, so the driver never runs the callback: `call` is still ours.
                drop(unsafe { Box::from_raw(call) });
                return Err(error::device("cuLaunchHostFunc", e));
            }
            Ok(())
        })
    }

    /// Drains the stream, releases its cuBLAS handle, staging buffers, idle download buffers and events,
    /// and destroys it; later use fails with [`RuntimeError::Dropped`]. Waits for threads using the
    /// handle right now. Idempotent.
    pub(crate) fn shutdown(&self) {
        let mut live = self.live.write();
        if live.stream.is_null() {
            return;
        }
        if let Err(e) = self.context.bind() {
            tracing::warn!(stream = self.index, error = %e, "binding the CUDA context for a stream shutdown failed");
        }
        // SAFETY: `live.stream` is live (not yet null) and no other thread uses it (write lock held).
        if let Err(e) = unsafe { result::stream::synchronize(live.stream) } {
            tracing::warn!(stream = self.index, error = %error::describe(e), "stream failed before shutdown");
        }
        // The cuBLAS handle is bound to the stream: destroy it while the stream still exists.
        drop(live.blas.take());
        self.staging.lock().release_all();
        self.downloads.close();
        // SAFETY: `live.stream` was created by `cuStreamCreate`, is destroyed once (it is nulled below,
        // under the write lock), and has drained.
        if let Err(e) = unsafe { result::stream::destroy(live.stream) } {
            tracing::warn!(stream = self.index, error = %error::describe(e), "cuStreamDestroy failed");
        }
        live::STREAMS.down();
        live.stream = std::ptr::null_mut();
    }
}

impl Drop for CudaStream {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A host function in flight: the closure and where a panic is reported.
struct HostCall {
    f: Box<dyn FnOnce() + Send>,
    failure: Arc<HostFailure>,
}

impl HostFailure {
    fn record(&self, message: String) {
        let mut slot = self.message.lock();
        slot.get_or_insert(message);
        // Release pairs with the Acquire in `CudaStream::check`.
        self.failed.store(true, Ordering::Release);
    }
}

/// The `CUhostFn` trampoline: runs one [`HostCall`], catching a panic (unwinding into the driver aborts).
unsafe extern "C" fn run_host_call(data: *mut c_void) {
    // SAFETY: `data` is the `Box<HostCall>` leaked by `CudaStream::launch_host_fn`; the driver calls this
    // function once per successful launch, so the box is taken back exactly once.
    let call = unsafe { Box::from_raw(data.cast::<HostCall>()) };
    let HostCall { f, failure } = *call;
    // Acquire pairs with the Release in `HostFailure::record`. After a failure later host functions are
    // skipped, as later kernels are on the CPU backend.
    if failure.failed.load(Ordering::Acquire) {
        // Dropping the closure runs its captures' destructors: keep a panic there inside this function too.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(f)));
        return;
    }
    if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "host function panicked".into());
        failure.record(message);
    }
}
