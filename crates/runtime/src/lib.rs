//! braid's runtime: many threads submit device work at once, each on its own stream, sharing one
//! caching allocator, with no global lock on any per-op path.
//!
//! # Vocabulary
//!
//! - **Device** ([`device::Device`], [`ops::Ops`]): a backend — buffers, streams, events, copies and the
//!   op set. [`cpu::CpuDevice`] always builds; it behaves like a GPU (executor threads run committed
//!   work). Memory is a backend **buffer** handle; ops and copies name it by [`device::View`] (buffer,
//!   byte offset, length), never by address.
//! - **Stream machinery** ([`stream`]): **StreamPool** (a default stream and N worker **slots**, each
//!   **leased** by a thread), **Stream** (a `Copy` handle borrowing its pool), **CommitPolicy**, pooled
//!   **Events**.
//! - **CachingAllocator / Block / Buffer** ([`alloc`]): stream-ordered caching of device memory;
//!   **SizeClass**, **ThreadCache** and the **shared free lists** (small / large) are its layers.
//! - **Runtime / Tensor** ([`runtime`], [`tensor`]): a device's stream pool + allocator + events, and
//!   tensor ops encoded on the current stream.
//! - **Graph / GraphPool** ([`graph`], [`alloc::GraphPool`]): work captured once and replayed with one
//!   launch, where the backend can capture (CUDA graphs), with its memory kept private.
//!
//! # The five fixes of the design brief, by name
//!
//! 1. *Sharded allocator with per-thread caches* — [`alloc`] (`thread_cache`, `free_lists`): no global
//!    mutex across malloc, free and event recording.
//! 2. *Commit-and-continue policy* — [`stream::CommitPolicy`], `BRAID_COMMIT_AND_CONTINUE`.
//! 3. *Thread-local current stream* — [`stream::StreamPool::current_stream`] /
//!    [`stream::StreamPool::set_current_stream`] (`stream::current`).
//! 4. *Lock-free stream lookup* — `stream::lazy::LazySlot`, used by [`stream::Stream::raw`] and
//!    [`stream::StreamPool::synchronize_all`].
//! 5. *Lock-free slot bitmask* — `stream::slots::SlotBitmask`, with [`stream::ExhaustionPolicy`]
//!    (`BRAID_STREAM_POOL_EXHAUSTED`).
//!
//! # Lifetime
//!
//! Nothing is leaked: a [`Runtime`] owns its stream pool, allocator and events; dropping the last
//! `Runtime` and every buffer and tensor made from it releases everything the device holds (executor
//! threads, a CUDA context, its events, cuBLAS handles and kernels).
//!
//! # Environment
//!
//! `BRAID_STREAM_POOL_EXHAUSTED` (`error` | `wait:<ms>` | `share`), `BRAID_COMMIT_AND_CONTINUE`
//! (`auto` | `on` | `off`), `BRAID_MEMORY_LIMIT` (a share of device memory, `80%` or `0.8`, or a size such as `12GiB`). Read by
//! [`RuntimeConfig::from_env`]; an invalid value is an error naming the variable and what is allowed.

pub mod alloc;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod cpu;
pub mod device;
mod env;
mod error;
pub mod graph;
pub mod ops;
pub mod runtime;
pub mod stream;
mod sync;
pub mod tensor;

pub use alloc::{
    AllocatorConfig, AllocatorStats, Buffer, CachingAllocator, GraphPool, MemoryLimit, PoolRoute,
    PoolStats,
};
pub use device::{DType, Device, DeviceGraph, View, ALIGNMENT};
pub use error::{Result, RuntimeError};
pub use graph::Graph;
pub use runtime::{Runtime, RuntimeConfig};
pub use stream::{
    CommitPolicy, CurrentStreamGuard, Event, EventPool, ExhaustionPolicy, Stream, StreamLease,
    StreamPool, StreamPoolConfig, MAX_WORKER_SLOTS,
};
pub use tensor::{PackedSequences, Tensor};
