//! [`CudaStream`]: one pool slot's native stream, with its staging buffers and its host-function failure.
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
//! - The handle is used under a read lock and destroyed under the write lock (`shutdown`),
//!   so a thread that raced the pool's shutdown gets [`braid_runtime::RuntimeError::Dropped`] instead of
//!   encoding onto a destroyed stream. The lock is the stream's own (one uncontended atomic per call,
//!   on a line other streams do not touch); the pool's shutdown is its only writer.
//! - Host functions ([`crate::CudaDevice::launch_host_fn`]) run in stream order on the driver's callback
//!   thread. A panic in one is caught (unwinding into the driver would abort), marks the stream failed
//!   as a faulting kernel would on the CPU backend, skips the stream's later host functions, and is
//!   reported by every later synchronize as [`braid_runtime::RuntimeError::StreamFailed`].
//! - Host-to-device copies are staged in page-locked memory (the `staging` module) so the caller's slice
//!   is free on return and the copy does not wait for the stream.
//! - One cuBLAS handle per stream, created on the stream's first GEMM and bound to it for its life
//!   (cuBLAS handles are cheap to use but costly to create, and one per stream means no two threads ever
//!   reconfigure a shared handle).

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use braid_runtime::{Result, RuntimeError};
use cudarc::driver::{result, sys};
use parking_lot::{Mutex, RwLock};

use crate::blas::Blas;
use crate::context::Context;
use crate::error;
use crate::staging::Staging;

/// A stream handle that may be null (after shutdown).
struct RawStream(sys::CUstream);

// SAFETY: a `CUstream` is a driver handle usable from any thread (the driver API is thread-safe); the
// `RwLock` around it orders its use against its destruction.
unsafe impl Send for RawStream {}
// SAFETY: as for `Send`.
unsafe impl Sync for RawStream {}

/// The failure of a host function on a stream, written by the driver's callback thread.
#[derive(Default)]
struct HostFailure {
    /// Set (Release) after `message` is written; read (Acquire) before reading it.
    failed: AtomicBool,
    message: Mutex<Option<String>>,
}

/// A native CUDA stream of one pool slot. See the module doc.
pub struct CudaStream {
    index: usize,
    context: Arc<Context>,
    raw: RwLock<RawStream>,
    staging: Mutex<Staging>,
    host_failure: Arc<HostFailure>,
    /// The stream's cuBLAS handle, created on first use.
    blas: std::sync::OnceLock<Blas>,
}

impl CudaStream {
    /// Creates the stream of slot `index` (the caller has made `context` current).
    pub(crate) fn create(index: usize, context: Arc<Context>) -> Result<Self> {
        let raw = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(|e| error::device("cuStreamCreate", e))?;
        Ok(Self {
            index,
            context,
            raw: RwLock::new(RawStream(raw)),
            staging: Mutex::new(Staging::new()),
            host_failure: Arc::new(HostFailure::default()),
            blas: std::sync::OnceLock::new(),
        })
    }

    /// The slot index this stream was created for (0 = the pool's default stream).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The raw handle, for cudarc's safe API (`CudaContext::wrap_borrowed_stream`, cuBLAS). Null after the
    /// stream was shut down; valid until then. Do not destroy it.
    pub fn cu_stream(&self) -> sys::CUstream {
        self.raw.read().0
    }

    /// Page-locked bytes this stream holds for staging host-to-device copies.
    pub fn pinned_staging_bytes(&self) -> usize {
        self.staging.lock().pinned_bytes()
    }

    /// Runs `f` with the live handle, the context current, and shutdown held off.
    #[inline]
    pub(crate) fn with_raw<R>(&self, f: impl FnOnce(sys::CUstream) -> Result<R>) -> Result<R> {
        let raw = self.raw.read();
        if raw.0.is_null() {
            return Err(error::dropped(self.index));
        }
        self.context.bind()?;
        f(raw.0)
    }

    /// This stream's cuBLAS handle, bound to `raw` (the caller holds the read lock, so `raw` is live).
    pub(crate) fn blas(&self, raw: sys::CUstream) -> Result<&Blas> {
        if let Some(blas) = self.blas.get() {
            return Ok(blas);
        }
        let created = Blas::new(raw)?;
        // Two threads may race to create it (a shared stream); the loser's handle is destroyed.
        Ok(self.blas.get_or_init(|| created))
    }

    /// Waits for all work on the stream; reports a device fault or a host-function panic.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.with_raw(|raw| self.synchronize_raw(raw))
    }

    /// `synchronize` for a caller that already holds the handle (the read lock is not re-entrant).
    pub(crate) fn synchronize_raw(&self, raw: sys::CUstream) -> Result<()> {
        // SAFETY: `raw` is live: the caller holds the read lock that shutdown's destroy needs.
        unsafe { result::stream::synchronize(raw) }
            .map_err(|e| error::stream_failed(self.index, "cuStreamSynchronize", e))?;
        self.check()?;
        self.staging
            .lock()
            .reclaim()
            .map_err(|e| error::stream_failed(self.index, "cuEventQuery (staging)", e))
    }

    /// The stream's failure, if one of its host functions panicked.
    pub(crate) fn check(&self) -> Result<()> {
        // Acquire pairs with the Release in `HostFailure::record`: the message written before is visible.
        if self.host_failure.failed.load(Ordering::Acquire) {
            let message = self.host_failure.message.lock().clone().unwrap_or_default();
            return Err(RuntimeError::StreamFailed {
                stream: self.index,
                message: format!("a host function panicked: {message}"),
            });
        }
        Ok(())
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

    /// Copies `dst.len()` bytes from `src` after the stream's earlier work; returns when they are there.
    pub(crate) fn copy_to_host(&self, src: sys::CUdeviceptr, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return self.synchronize();
        }
        self.with_raw(|raw| {
            // SAFETY: `raw` is live; `src` addresses `dst.len()` live device bytes (caller's contract);
            // `dst` stays mutably borrowed until `synchronize_raw` below has waited for the copy. If that
            // wait fails the context has a sticky error and runs no further work, so nothing writes `dst`
            // after this returns.
            unsafe {
                sys::cuMemcpyDtoHAsync_v2(dst.as_mut_ptr().cast::<c_void>(), src, dst.len(), raw)
                    .result()
            }
            .map_err(|e| error::device("cuMemcpyDtoHAsync", e))?;
            self.synchronize_raw(raw)
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

    /// Drains the stream, frees its staging buffers and destroys it; later use fails with
    /// [`RuntimeError::Dropped`]. Waits for threads using the handle right now. Idempotent.
    pub(crate) fn shutdown(&self) {
        let mut raw = self.raw.write();
        if raw.0.is_null() {
            return;
        }
        if let Err(e) = self.context.bind() {
            tracing::warn!(stream = self.index, error = %e, "binding the CUDA context for a stream shutdown failed");
        }
        // SAFETY: `raw.0` is live (not yet null) and no other thread uses it (write lock held).
        if let Err(e) = unsafe { result::stream::synchronize(raw.0) } {
            tracing::warn!(stream = self.index, error = %error::describe(e), "stream failed before shutdown");
        }
        self.staging.lock().release_all();
        // SAFETY: `raw.0` was created by `cuStreamCreate`, is destroyed once (it is nulled below, under the
        // write lock), and has drained.
        if let Err(e) = unsafe { result::stream::destroy(raw.0) } {
            tracing::warn!(stream = self.index, error = %error::describe(e), "cuStreamDestroy failed");
        }
        raw.0 = std::ptr::null_mut();
    }
}

impl Drop for CudaStream {
    fn drop(&mut self) {
        // The cuBLAS handle is bound to the stream: destroy it while the stream still exists. (After a
        // `shutdown` alone it stays, unused: every use goes through `with_raw`, which refuses.)
        if let Some(blas) = self.blas.take() {
            let _ = self.context.bind();
            drop(blas);
        }
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
