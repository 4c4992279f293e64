//! [`CudaEvent`]: a native `CUevent` created with `CU_EVENT_DISABLE_TIMING` (timing costs a timestamp
//! per record and braid only orders work with events), and the raw create/destroy pair that every
//! event of the crate goes through (the runtime's pooled events, and the events the `staging` and
//! `download` modules keep per stream), so [`crate::live_objects`] counts them all.
//!
//! The runtime's [`braid_runtime::EventPool`] creates these once and reuses them; the [`Device`] methods
//! in [`crate::device`] record, wait, query and synchronize them. An event owns its handle and destroys it
//! when dropped; the driver releases an event destroyed before its record completed once it completes.
//!
//! [`Device`]: braid_runtime::Device

use std::sync::Arc;

use braid_runtime::Result;
use cudarc::driver::{result, sys, DriverError};

use crate::context::Context;
use crate::{error, live};

/// A native CUDA event of one device.
pub struct CudaEvent {
    raw: sys::CUevent,
    context: Arc<Context>,
}

// SAFETY: a `CUevent` is a driver handle that the driver lets any thread use (the driver API is
// thread-safe); this type adds no unsynchronised state of its own.
unsafe impl Send for CudaEvent {}
// SAFETY: as for `Send`: every method takes `&self` and only passes the handle to thread-safe driver calls.
unsafe impl Sync for CudaEvent {}

impl CudaEvent {
    /// Creates an event in `context` (which the caller has made current).
    pub(crate) fn create(context: Arc<Context>) -> Result<Self> {
        let raw = create_raw().map_err(|e| error::device("cuEventCreate", e))?;
        Ok(Self { raw, context })
    }

    /// The raw handle (owned by this event: do not destroy it).
    pub fn cu_event(&self) -> sys::CUevent {
        self.raw
    }
}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        if let Err(e) = self.context.bind() {
            tracing::warn!(error = %e, "binding the CUDA context to destroy an event failed");
        }
        // SAFETY: `raw` was created by `create_raw` and is destroyed once, here.
        unsafe { destroy_raw(self.raw) };
    }
}

/// A timing-free event in the current context (counted in [`crate::live_objects`]).
pub(crate) fn create_raw() -> Result<sys::CUevent, DriverError> {
    let raw = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)?;
    live::EVENTS.up();
    Ok(raw)
}

/// Destroys an event from [`create_raw`]; an event still pending is released by the driver when it
/// completes. Failures are logged.
///
/// # Safety
/// `raw` came from [`create_raw`], is destroyed once, and its context is current.
pub(crate) unsafe fn destroy_raw(raw: sys::CUevent) {
    // SAFETY: forwarded from the caller.
    if let Err(e) = unsafe { result::event::destroy(raw) } {
        tracing::warn!(error = %error::describe(e), "cuEventDestroy failed");
    }
    live::EVENTS.down();
}
