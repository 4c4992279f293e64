//! The seed's designs, rebuilt on braid's [`Device`](braid_runtime::Device) trait so that "before" and
//! "after" pay the same device costs and differ only in the design being measured.
//!
//! The seed is the dML fork of PyTorch's MPS backend (DESIGN.md, "Where it comes from"). Each module
//! reproduces one of the five problems its author listed, and nothing else:
//!
//! - [`allocator`] — problem 1: one global recursive mutex held across malloc, free and event
//!   recording, and no per-thread caches. Size-class rounding and stream-ordered, event-gated reuse
//!   are braid's, so the lock is the only difference.
//! - [`stream_pool`] — problems 3, 4 and 5: `set_current_stream` scans the stream array under a mutex,
//!   `get_stream(i)` (and so `current_stream`) takes the creation mutex on every call, and worker
//!   slots come from a `Mutex<Vec<usize>>` free list.
//! - Problem 2 (commit-and-continue off everywhere) needs no code of its own: it is braid's
//!   [`CommitPolicy::Off`](braid_runtime::CommitPolicy::Off), "commit only at a sync point", which is
//!   what the seed did for every stream.
//!
//! These are fair baselines, not strawmen: each takes the fastest route its design allows (parking_lot
//! locks, no reference counting per op, the same pooled events braid uses), and their unit tests check
//! they are correct — the allocator never hands out a block that overlaps a live one and reuses blocks
//! only in stream order; the free list conserves slots.

pub mod allocator;
pub mod stream_pool;
