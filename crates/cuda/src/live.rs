//! [`LiveObjects`]: how many driver objects braid-cuda holds right now, process-wide — what a leak test
//! compares before and after (`tests/cuda_lifetime.rs`).
//!
//! Every place that creates one of these objects counts it up, and the one place that destroys it
//! counts it down, so a count that stays above its starting value after every handle was dropped is a
//! leak path (an `Arc` cycle, a forgotten `Drop`). The counters are plain relaxed atomics touched only
//! on creation and destruction, never per op; they own nothing.
//!
//! The primary context is counted as braid's retains of it ([`LiveObjects::contexts`]); whether the
//! driver then destroys it is the driver's business (the CUDA runtime inside cuBLAS retains it too,
//! for the rest of the process, once cuBLAS has been used).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Driver objects held by braid-cuda right now, in the whole process ([`live_objects`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveObjects {
    /// braid's retains of a device's primary context (one per `CudaDevice::new` still alive through
    /// any clone, stream, event, buffer pool or download).
    pub contexts: usize,
    /// Native streams (`cuStreamCreate` not yet destroyed).
    pub streams: usize,
    /// Native events: the runtime's pooled events and the staging and download events of streams.
    pub events: usize,
    /// cuBLAS handles.
    pub blas_handles: usize,
    /// Loaded kernel modules.
    pub modules: usize,
    /// Page-locked host buffers (upload staging and download staging).
    pub pinned_buffers: usize,
    /// Raw device allocations (`alloc_raw` not yet freed).
    pub device_buffers: usize,
    /// Instantiated CUDA graphs (`cuGraphInstantiate` not yet destroyed).
    pub graphs: usize,
}

/// One counter of [`LiveObjects`].
pub(crate) struct Counter(AtomicUsize);

impl Counter {
    const fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    /// One more object exists.
    #[inline]
    pub(crate) fn up(&self) {
        // Relaxed: a statistic; nothing is ordered by it.
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// One object was destroyed.
    #[inline]
    pub(crate) fn down(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

pub(crate) static CONTEXTS: Counter = Counter::new();
pub(crate) static STREAMS: Counter = Counter::new();
pub(crate) static EVENTS: Counter = Counter::new();
pub(crate) static BLAS_HANDLES: Counter = Counter::new();
pub(crate) static MODULES: Counter = Counter::new();
pub(crate) static PINNED_BUFFERS: Counter = Counter::new();
pub(crate) static DEVICE_BUFFERS: Counter = Counter::new();
pub(crate) static GRAPHS: Counter = Counter::new();

/// The driver objects braid-cuda holds right now, summed over every device of the process.
pub fn live_objects() -> LiveObjects {
    LiveObjects {
        contexts: CONTEXTS.get(),
        streams: STREAMS.get(),
        events: EVENTS.get(),
        blas_handles: BLAS_HANDLES.get(),
        modules: MODULES.get(),
        pinned_buffers: PINNED_BUFFERS.get(),
        device_buffers: DEVICE_BUFFERS.get(),
        graphs: GRAPHS.get(),
    }
}
