//! Leases of worker slots: [`SlotLease`], the backend-independent token a thread-local or a
//! [`StreamLease`] holds, and [`StreamLease`], an explicitly leased stream.
//!
//! A lease returns its slot when dropped, after the slot's stream has drained, so the next holder
//! starts clean; a double release is harmless. A lease holds its pool only weakly: a thread that exits
//! after its pool was dropped has nothing left to return (the pool drained its streams when it closed).

use std::sync::Weak;

use super::handle::Stream;
use crate::device::Device;

/// A leased slot not yet wrapped in what returns it: `lease_slot`'s result, which the caller turns into
/// a [`StreamLease`] or a [`SlotLease`] at once.
#[must_use = "a raw lease must be wrapped, or its slot is never returned"]
pub(super) struct RawLease {
    pub(super) index: u32,
    /// Leased under `share` (does not own a bit).
    pub(super) shared: bool,
}

/// What a lease returns its slot to (a pool's state, whatever its device type).
pub(super) trait LeaseOwner: Send + Sync {
    /// Returns slot `index` (after draining its stream unless the pool is closed).
    fn release(&self, index: u32, shared: bool);
}

/// A thread's implicit lease of a worker slot, returned when dropped if its pool still exists.
pub(super) struct SlotLease {
    owner: Weak<dyn LeaseOwner>,
    lease: RawLease,
}

impl SlotLease {
    pub(super) fn new(owner: Weak<dyn LeaseOwner>, lease: RawLease) -> Self {
        Self { owner, lease }
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.upgrade() {
            owner.release(self.lease.index, self.lease.shared);
        }
    }
}

/// An explicitly leased worker stream; the slot is returned (after the stream drains) when dropped.
/// Releasing twice ([`release`](Self::release) then drop) is harmless.
pub struct StreamLease<'a, D: Device> {
    stream: Stream<'a, D>,
    lease: Option<RawLease>,
}

impl<'a, D: Device> StreamLease<'a, D> {
    pub(super) fn new(stream: Stream<'a, D>, lease: RawLease) -> Self {
        Self {
            stream,
            lease: Some(lease),
        }
    }

    /// The leased stream.
    pub fn stream(&self) -> Stream<'a, D> {
        self.stream
    }

    /// Returns the slot now (after draining the stream). Later calls and the drop do nothing.
    pub fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.stream.pool.release(lease.index, lease.shared);
        }
    }

    /// Whether this lease shares its stream with other leases (`share` policy).
    pub fn is_shared(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.shared)
    }
}

impl<D: Device> Drop for StreamLease<'_, D> {
    fn drop(&mut self) {
        self.release();
    }
}
