//! Leases of worker slots: [`SlotLease`], the backend-independent token a thread-local or a
//! [`StreamLease`] holds, and [`StreamLease`], an explicitly leased stream.
//!
//! A lease returns its slot when dropped, after the slot's stream has drained, so the next holder
//! starts clean; a double release is harmless. A lease holds its pool only weakly: a thread that exits
//! after its pool was dropped has nothing left to return (the pool drained its streams when it closed).

use std::sync::Weak;

use super::handle::Stream;
use crate::device::Device;

/// What a lease returns its slot to (a pool's state, whatever its device type).
pub(super) trait LeaseOwner: Send + Sync {
    /// Returns slot `index` (after draining its stream unless the pool is closed).
    fn release(&self, index: u32, shared: bool);
}

/// A leased worker slot, returned when dropped.
pub(super) struct SlotLease {
    owner: Weak<dyn LeaseOwner>,
    index: u32,
    /// Leased under `share` (does not own a bit).
    shared: bool,
}

impl SlotLease {
    pub(super) fn new(owner: Weak<dyn LeaseOwner>, index: u32, shared: bool) -> Self {
        Self {
            owner,
            index,
            shared,
        }
    }

    /// The slot's stream index.
    pub(super) fn index(&self) -> u32 {
        self.index
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.upgrade() {
            owner.release(self.index, self.shared);
        }
    }
}

/// An explicitly leased worker stream; the slot is returned (after the stream drains) when dropped.
/// Releasing twice ([`release`](Self::release) then drop) is harmless.
pub struct StreamLease<'a, D: Device> {
    stream: Stream<'a, D>,
    lease: Option<SlotLease>,
}

impl<'a, D: Device> StreamLease<'a, D> {
    pub(super) fn new(stream: Stream<'a, D>, lease: SlotLease) -> Self {
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
        self.lease.take();
    }

    /// Whether this lease shares its stream with other leases (`share` policy).
    pub fn is_shared(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.shared)
    }
}
