//! [`RuntimeError`]: every way a runtime call can fail, worded for the person who has to fix it.
//!
//! Messages say what was wrong, what is allowed, and which knob (API or environment variable) changes it.
//! Caller bugs (a shape mismatch the type system could not catch) are errors too when they come from
//! data; broken internal invariants panic with "this is a bug".
//!
//! Errors belong to the layer that knows them: a backend reports that the device refused an allocation
//! ([`RuntimeError::DeviceOutOfMemory`], with the bytes asked for); only the caching allocator, which
//! knows its limit and statistics, reports [`RuntimeError::OutOfMemory`]. This module depends on nothing in the
//! runtime but [`crate::device::DType`].

/// A runtime error. Backends convert their native errors into [`RuntimeError::Device`] at their edge.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// All worker slots are leased and the exhaustion policy is `error` (or `wait` timed out).
    #[error(
        "all {slots} worker stream slots are leased ({detail}); raise the limit with \
         StreamPoolConfig::worker_slots, or set BRAID_STREAM_POOL_EXHAUSTED=wait:<ms> or =share \
         (now: {policy})"
    )]
    StreamSlotsExhausted {
        /// The number of worker slots in the pool.
        slots: usize,
        /// The policy in force, as it would be written in the environment variable.
        policy: String,
        /// What happened: "no free slot" or "waited N ms".
        detail: String,
    },

    /// A stream, event or buffer was used after the pool or allocator it belongs to was dropped.
    #[error("{what} was used after its {owner} was dropped; keep the {owner} alive while its streams and buffers are in use")]
    Dropped {
        /// What was used ("stream 3").
        what: String,
        /// What was already gone ("stream pool").
        owner: &'static str,
    },

    /// The device refused an allocation (reported by a backend). The caching allocator frees its cache
    /// and retries before it gives up with [`RuntimeError::OutOfMemory`].
    #[error("the device refused an allocation of {requested} bytes: {detail}")]
    DeviceOutOfMemory {
        /// Bytes asked for.
        requested: usize,
        /// What the device said (its capacity, the driver's error).
        detail: String,
    },

    /// An allocation did not fit under the memory limit or in device memory, even after the caching
    /// allocator freed its cache (reported by the allocator only).
    #[error(
        "out of device memory: {requested} bytes requested, limit {limit}; after freeing the cache: {stats}. \
         Raise the limit with CachingAllocator::set_memory_limit or BRAID_MEMORY_LIMIT (e.g. 80% or 12GiB)"
    )]
    OutOfMemory {
        /// Bytes asked for.
        requested: usize,
        /// The limit in force, as text ("none (device memory)" or "1048576 bytes").
        limit: String,
        /// The allocator's statistics at the time of failure, as text (`CachingAllocator::stats` has
        /// them as numbers).
        stats: String,
    },

    /// A configuration value (API argument or environment variable) could not be used.
    #[error("invalid {name} value {value:?}: {allowed}")]
    InvalidConfig {
        /// The setting, e.g. "BRAID_COMMIT_AND_CONTINUE".
        name: &'static str,
        /// What was given.
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },

    /// Tensor shapes or dtypes do not fit the operation.
    #[error("{op}: {detail}")]
    Shape {
        /// The operation, e.g. "matmul".
        op: &'static str,
        /// What does not fit, with the shapes.
        detail: String,
    },

    /// The backend does not implement this operation for this dtype.
    #[error("{op} is not implemented for {dtype} on the {backend} backend")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The dtype asked for.
        dtype: crate::device::DType,
        /// The backend's name.
        backend: &'static str,
    },

    /// Work on a stream failed on the device (a kernel panicked on the CPU backend, a CUDA error, ...).
    /// The stream stays unusable: later work on it reports the same failure.
    #[error("stream {stream} failed: {message}")]
    StreamFailed {
        /// The stream's index in its pool.
        stream: usize,
        /// What the device reported.
        message: String,
    },

    /// A device call failed (driver missing, launch failure, ...).
    #[error("device error: {0}")]
    Device(String),
}

/// Shorthand used across the runtime.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
