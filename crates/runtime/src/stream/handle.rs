//! [`Stream`]: a `Copy` handle to one stream of a pool — its index and a borrow of the pool — and the
//! calls that encode on it, submit it and wait for it.
//!
//! A handle borrows its [`super::StreamPool`] (`Stream<'a, D>`), so it can never outlive the pool and
//! copying it or asking for the current one touches no reference count: an `Arc` per handle would put
//! every thread on one contended cache line, the kind of global cost this runtime exists to remove.
//! Whatever must outlive a borrow (the allocator's blocks, a thread's lease) keeps the stream's index
//! and holds the pool's state itself.

use std::fmt;
use std::sync::atomic::Ordering;

use super::commit::CommitPolicy;
use super::event::Event;
use super::pool::StreamPoolState;
use crate::device::Device;
use crate::error::{Result, RuntimeError};

/// A stream of a pool. See the module doc.
pub struct Stream<'a, D: Device> {
    pub(super) pool: &'a StreamPoolState<D>,
    pub(super) index: u32,
}

impl<D: Device> Clone for Stream<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D: Device> Copy for Stream<'_, D> {}

impl<D: Device> PartialEq for Stream<'_, D> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.pool, other.pool) && self.index == other.index
    }
}
impl<D: Device> Eq for Stream<'_, D> {}

impl<D: Device> fmt::Debug for Stream<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Stream(pool {}, index {})", self.pool.id, self.index)
    }
}

impl<'a, D: Device> Stream<'a, D> {
    /// The stream's index in its pool (0 = default).
    #[inline]
    pub fn index(&self) -> usize {
        self.index as usize
    }

    /// Whether this stream belongs to the pool whose state is `pool`.
    #[inline]
    pub(crate) fn is_of(&self, pool: &StreamPoolState<D>) -> bool {
        std::ptr::eq(self.pool, pool)
    }

    /// The device this stream runs on.
    #[inline]
    pub fn device(&self) -> &'a D {
        &self.pool.device
    }

    /// The native stream, created on first use (lock-free once created; fix 4). Two `Acquire` loads
    /// once it exists: the pool's closed flag and the slot's state. Fails with
    /// [`RuntimeError::Dropped`] after the pool is dropped.
    #[inline]
    pub fn raw(&self) -> Result<&'a D::Stream> {
        // Acquire pairs with the Release store in `StreamPool::drop`.
        if self.pool.closed.load(Ordering::Acquire) {
            return Err(RuntimeError::Dropped {
                what: format!("stream {}", self.index),
                owner: "stream pool",
            });
        }
        let pool = self.pool;
        pool.slots[self.index as usize]
            .stream
            .get_or_try_init(|| pool.device.create_stream(self.index as usize))
    }

    /// Whether the stream commits after each op right now (fix 2; see [`CommitPolicy`]).
    #[inline]
    pub fn commit_and_continue(&self) -> bool {
        let policy = CommitPolicy::from_u8(self.pool.commit.load(Ordering::Relaxed));
        policy.continues(self.index == 0, self.users())
    }

    /// Called by the op layer after encoding an op: submits it if the commit policy says so.
    #[inline]
    pub fn encoded(&self) -> Result<()> {
        if self.commit_and_continue() {
            self.pool.device.commit(self.raw()?)?;
        }
        Ok(())
    }

    /// Submits the work encoded so far.
    pub fn commit(&self) -> Result<()> {
        self.pool.device.commit(self.raw()?)
    }

    /// Submits and waits for all work on this stream (host blocks).
    pub fn synchronize(&self) -> Result<()> {
        self.pool.device.synchronize(self.raw()?)
    }

    /// Makes work encoded on this stream from now on wait for `event` (device-side; the host does not block).
    pub fn wait(&self, event: &Event<D>) -> Result<()> {
        self.pool
            .device
            .wait_event(self.raw()?, event.device_event())
    }

    /// Leases sharing this stream now (1 for an exclusively leased worker stream).
    pub fn users(&self) -> u32 {
        // Relaxed: a stale count only delays a commit-policy switch by one op (see `Slot::users`).
        self.pool.slots[self.index as usize]
            .users
            .load(Ordering::Relaxed)
    }
}
