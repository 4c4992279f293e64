//! [`Context`]: the device's CUDA primary context and the cheap "is it current on this thread?" check.
//!
//! The driver API acts on the calling thread's *current* context, and a thread starts with none. Every
//! driver call braid makes goes through [`Context::bind`] first. Its fast path is one thread-local read:
//! the thread remembers the id of the last braid context it made current, so steady state costs no
//! driver call (cudarc's `CudaContext::bind_to_thread` asks the driver with `cuCtxGetCurrent` each time).
//!
//! Ids, not context pointers, are remembered: a primary context released and retained again may come
//! back at the same address, and a stale "already current" would then skip a needed `cuCtxSetCurrent`.
//!
//! # The one caveat
//!
//! The thread-local only knows about binds made here. Code outside braid-cuda that makes *another*
//! context current on a thread (cudarc's safe API on a second device, another library) leaves it stale;
//! such code should call [`crate::CudaDevice::bind_to_thread`] before handing the thread back to braid.
//! cudarc's safe API on the *same* device binds the same primary context, which is harmless.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use braid_runtime::Result;
use cudarc::driver::{result, sys, CudaContext};

use crate::{error, live};

/// Process-unique context ids; 0 means "none bound by braid" in the thread-local.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The id of the braid [`Context`] this thread made current last (0: none).
    static BOUND: Cell<u64> = const { Cell::new(0) };
}

/// A retained primary context, released when the last holder (device clone, stream, event, download
/// pool) is dropped.
pub(crate) struct Context {
    cudarc: Arc<CudaContext>,
    id: u64,
}

impl Context {
    pub(crate) fn new(cudarc: Arc<CudaContext>) -> Self {
        live::CONTEXTS.up();
        Self {
            cudarc,
            // Relaxed: only uniqueness matters.
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// cudarc's context object (for cudarc's safe API: modules, cuBLAS).
    pub(crate) fn cudarc(&self) -> &Arc<CudaContext> {
        &self.cudarc
    }

    /// The raw `CUcontext`.
    pub(crate) fn raw(&self) -> sys::CUcontext {
        self.cudarc.cu_ctx()
    }

    /// Makes this context current on the calling thread unless braid already did (module doc).
    #[inline]
    pub(crate) fn bind(&self) -> Result<()> {
        // `try_with`: during thread-local destruction (a lease returned at thread exit) the cell may be
        // gone; then bind unconditionally.
        if BOUND.try_with(Cell::get) == Ok(self.id) {
            return Ok(());
        }
        self.bind_now()
    }

    /// Makes this context current on the calling thread, whatever the thread-local says.
    #[cold]
    pub(crate) fn bind_now(&self) -> Result<()> {
        // SAFETY: the context is a live primary context: `self.cudarc` retains it for as long as `self`
        // lives.
        unsafe { result::ctx::set_current(self.raw()) }
            .map_err(|e| error::device("cuCtxSetCurrent", e))?;
        let _ = BOUND.try_with(|b| b.set(self.id));
        Ok(())
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // cudarc's `CudaContext` releases the primary context when its last `Arc` goes (this one,
        // unless code outside braid cloned it through `CudaDevice::context`).
        live::CONTEXTS.down();
    }
}
