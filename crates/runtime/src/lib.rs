//! braid's runtime: many threads submit device work at once, each on its own stream, sharing one
//! caching allocator, with no global lock on any per-op path.
//!
//! # Vocabulary
//!
//! - **Device** ([`Device`], [`ops::Ops`]): a backend — raw memory, streams, events and the op set.
//!   [`cpu::CpuDevice`] always builds; it behaves like a GPU (executor threads run committed work).
//! - **StreamPool / Slot / Lease / Stream** ([`pool`]): a default stream and N worker slots; a thread's
//!   first use leases a slot, returned when the thread exits. A [`Stream`] is a `Copy` handle.
//! - **Event** ([`event`]): pooled; record, stream-side wait, query, host synchronize.
//! - **CachingAllocator / Block / Buffer** ([`alloc`]): stream-ordered caching of device memory;
//!   **SizeClass**, **ThreadCache** and the **shared pools** (small / large) are its layers.
//! - **CommitPolicy** ([`commit`]): when encoded work is submitted (`auto | on | off`).
//! - **Runtime / Tensor** ([`runtime`], [`tensor`]): a device's pool + allocator + events, and tensor
//!   ops encoded on the current stream.
//!
//! # The five fixes of the design brief, by name
//!
//! 1. *Sharded allocator with per-thread caches* — [`alloc`] (`thread_cache`, `pools`): no global mutex
//!    across malloc, free and event recording.
//! 2. *Commit-and-continue policy* — [`commit::CommitPolicy`], `BRAID_COMMIT_AND_CONTINUE`.
//! 3. *Thread-local current stream* — [`StreamPool::current_stream`] / [`StreamPool::set_current_stream`].
//! 4. *Lock-free stream lookup* — `lazy::LazySlot`, used by [`Stream::raw`] and
//!    [`StreamPool::synchronize_all`].
//! 5. *Lock-free slot bitmask* — `slots::SlotBitmask`, with [`ExhaustionPolicy`] (`BRAID_STREAM_POOL_EXHAUSTED`).
//!
//! # Environment
//!
//! `BRAID_STREAM_POOL_EXHAUSTED` (`error` | `wait:<ms>` | `share`), `BRAID_COMMIT_AND_CONTINUE`
//! (`auto` | `on` | `off`), `BRAID_MEMORY_LIMIT` (bytes or a fraction of device memory). Read by
//! [`RuntimeConfig::from_env`]; an invalid value is an error naming the variable and what is allowed.

pub mod alloc;
pub mod commit;
pub mod cpu;
mod device;
mod env;
mod error;
pub mod event;
mod lazy;
pub mod ops;
pub mod pool;
pub mod runtime;
mod slots;
mod sync;
pub mod tensor;

pub use alloc::{
    AllocatorConfig, AllocatorStats, Buffer, CachingAllocator, MemoryLimit, PoolStats,
};
pub use commit::CommitPolicy;
pub use device::{DType, Device, DevicePtr, ALIGNMENT};
pub use error::{Result, RuntimeError};
pub use event::{Event, EventPool};
pub use pool::{
    CurrentStreamGuard, ExhaustionPolicy, Stream, StreamId, StreamLease, StreamPool,
    StreamPoolConfig,
};
pub use runtime::{Runtime, RuntimeConfig};
pub use slots::MAX_WORKER_SLOTS;
pub use tensor::Tensor;
