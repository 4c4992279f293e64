//! The stream machinery: which thread runs work on which stream, when that work is submitted, and the
//! events that order streams.
//!
//! - [`StreamPool`] (`pool`): a default stream and N worker slots, created lazily; leasing with an
//!   [`ExhaustionPolicy`] ([`StreamPoolConfig`] in `config`).
//! - [`Stream`] (`handle`): a `Copy` handle borrowing its pool; encode, commit, synchronize, wait.
//! - `current`: the thread-local current stream and implicit leases; [`CurrentStreamGuard`].
//! - [`StreamLease`] (`lease`): an explicitly leased worker stream.
//! - `slots` and `lazy`: the lock-free slot bitmask and the once-created native stream.
//! - [`CommitPolicy`] (`commit`): when encoded work is submitted.
//! - [`Event`] / [`EventPool`] (`event`): pooled events; record, stream-side wait, query, host wait.
//!
//! Four of the design's five fixes live here, each by name:
//!
//! - **Fix 2, commit-and-continue policy** — [`CommitPolicy`], `BRAID_COMMIT_AND_CONTINUE`.
//! - **Fix 3, thread-local current stream** — `current`: [`StreamPool::current_stream`] is a
//!   thread-local read, [`StreamPool::set_current_stream`] a thread-local write. No array scan, no lock.
//! - **Fix 4, lock-free stream lookup** — `lazy::LazySlot`: [`Stream::raw`] is two `Acquire` loads once
//!   the stream exists, and [`StreamPool::synchronize_all`] never blocks or races creation.
//! - **Fix 5, lock-free slot bitmask** — `slots::SlotBitmask`, with [`ExhaustionPolicy`]
//!   (`BRAID_STREAM_POOL_EXHAUSTED`).

mod commit;
mod config;
mod current;
mod event;
mod handle;
mod lazy;
mod lease;
mod pool;
mod slots;

pub use self::commit::{CommitPolicy, COMMIT_POLICY_ENV};
pub use self::config::{ExhaustionPolicy, StreamPoolConfig, EXHAUSTION_POLICY_ENV};
pub use self::current::CurrentStreamGuard;
pub use self::event::{Event, EventPool};
pub use self::handle::Stream;
pub use self::lease::StreamLease;
pub use self::pool::StreamPool;
pub(crate) use self::pool::StreamPoolState;
pub use self::slots::MAX_WORKER_SLOTS;
