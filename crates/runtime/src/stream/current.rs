//! The thread-local current stream (fix 3, "thread-local current stream"): which stream of a pool the
//! calling thread encodes on, and the slot it leased implicitly.
//!
//! The seed's `setCurrentStream` scanned the stream array under a lock to find the slot index. Here a
//! stream knows its index; [`super::StreamPool::current_stream`] is one thread-local read
//! (`LAST_CURRENT`) when the thread used the same pool last, and
//! [`super::StreamPool::set_current_stream`] one thread-local write returning a
//! [`CurrentStreamGuard`] that restores the previous stream.
//!
//! A thread that asks for its current stream without having set one leases a worker slot (the thread
//! named "main" gets the default stream, see `StreamPoolConfig::main_thread_uses_default`); the lease
//! is returned when the thread exits, after the stream has drained (when its thread-locals are
//! destroyed: a `JoinHandle::join` waits for that, `std::thread::scope` may not).
//!
//! Entries hold their pool weakly. A dropped pool's entry goes at once on the thread that drops it and,
//! on other threads, on their next first use of a pool or at their exit — so creating and dropping
//! runtimes does not grow a long-lived thread's state.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Weak};

use super::lease::{LeaseOwner, SlotLease};
use super::pool::StreamPoolState;
use crate::device::Device;
use crate::error::Result;

/// Per-thread, per-pool state: the current stream and this thread's implicit lease.
struct ThreadEntry {
    pool_id: u64,
    pool: Weak<dyn LeaseOwner>,
    current: Option<u32>,
    lease: Option<SlotLease>,
}

thread_local! {
    /// (pool id, current index) of the pool this thread used last: the fast path of `current_stream`
    /// and `set_current_stream`. For the pool it names it is authoritative — that pool's entry in
    /// `THREAD_ENTRIES` may be stale until `write_back_last_current` runs, which every switch to another
    /// pool does first. (0, _) names no pool: look in `THREAD_ENTRIES`.
    static LAST_CURRENT: Cell<(u64, u32)> = const { Cell::new((0, 0)) };
    /// One entry per live pool this thread used. Dropped at thread exit, which returns the leases.
    static THREAD_ENTRIES: RefCell<Vec<ThreadEntry>> = const { RefCell::new(Vec::new()) };
}

/// The current index for pool `pool_id` if this thread used that pool last (the fast path).
#[inline]
pub(super) fn cached_index(pool_id: u64) -> Option<u32> {
    let (pool, index) = LAST_CURRENT.with(Cell::get);
    (pool == pool_id).then_some(index)
}

/// The current index from this thread's entry for `pool`, leasing a slot if it has none.
#[cold]
pub(super) fn current_index_slow<D: Device>(pool: &Arc<StreamPoolState<D>>) -> Result<u32> {
    write_back_last_current();
    let index = with_entry(pool, |entry| -> Result<u32> {
        if let Some(index) = entry.current {
            return Ok(index);
        }
        let index =
            if pool.main_thread_uses_default && std::thread::current().name() == Some("main") {
                0
            } else {
                let lease = pool.lease_slot()?;
                let index = lease.index;
                entry.lease = Some(SlotLease::new(pool.owner(), lease));
                index
            };
        entry.current = Some(index);
        Ok(index)
    })?;
    LAST_CURRENT.with(|c| c.set((pool.id, index)));
    Ok(index)
}

/// Makes `index` the current stream of `pool` on this thread until the guard drops.
pub(super) fn set_current<D: Device>(
    pool: &Arc<StreamPoolState<D>>,
    index: u32,
) -> CurrentStreamGuard {
    // Fast path: this pool is the one `LAST_CURRENT` names, so it holds the current index (the
    // thread entry may be stale; see `LAST_CURRENT`). Otherwise the entry is authoritative.
    let (last_pool, last_index) = LAST_CURRENT.with(Cell::get);
    let previous = if last_pool == pool.id {
        Some(last_index)
    } else {
        write_back_last_current();
        with_entry(pool, |entry| entry.current)
    };
    LAST_CURRENT.with(|c| c.set((pool.id, index)));
    CurrentStreamGuard {
        pool_id: pool.id,
        previous,
        _not_send: std::marker::PhantomData,
    }
}

/// Drops this thread's state for a pool being dropped (returning its lease).
pub(super) fn forget_pool(pool_id: u64) {
    LAST_CURRENT.with(|c| {
        if c.get().0 == pool_id {
            c.set((0, 0));
        }
    });
    let entry = THREAD_ENTRIES
        .try_with(|entries| {
            let mut entries = entries.borrow_mut();
            let position = entries.iter().position(|e| e.pool_id == pool_id)?;
            Some(entries.swap_remove(position))
        })
        .ok()
        .flatten();
    // Dropped outside the borrow: returning the lease drains a stream.
    drop(entry);
}

/// Restores the previous current stream when dropped. Not `Send`: it restores this thread's state.
pub struct CurrentStreamGuard {
    pool_id: u64,
    previous: Option<u32>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for CurrentStreamGuard {
    fn drop(&mut self) {
        let (last_pool, _) = LAST_CURRENT.with(Cell::get);
        match self.previous {
            // This pool is the named one: restoring is one thread-local write (the fast path).
            Some(index) if last_pool == self.pool_id => {
                LAST_CURRENT.with(|c| c.set((self.pool_id, index)))
            }
            previous => {
                if last_pool == self.pool_id {
                    LAST_CURRENT.with(|c| c.set((0, 0)));
                }
                with_existing_entry(self.pool_id, |entry| entry.current = previous);
            }
        }
    }
}

/// Stores the current index that `LAST_CURRENT` holds into its pool's thread entry, before
/// `LAST_CURRENT` is pointed at another pool.
#[cold]
fn write_back_last_current() {
    let (pool, index) = LAST_CURRENT.with(Cell::get);
    if pool != 0 {
        with_existing_entry(pool, |entry| entry.current = Some(index));
    }
}

/// Runs `f` on this thread's entry for `pool_id` if there is one (a dropped pool's may be gone).
fn with_existing_entry(pool_id: u64, f: impl FnOnce(&mut ThreadEntry)) {
    let _ = THREAD_ENTRIES.try_with(|entries| {
        if let Some(entry) = entries
            .borrow_mut()
            .iter_mut()
            .find(|e| e.pool_id == pool_id)
        {
            f(entry);
        }
    });
}

/// Runs `f` on this thread's entry for `pool`, creating it (and dropping the entries of pools that are
/// gone) on first use.
fn with_entry<D: Device, R>(
    pool: &Arc<StreamPoolState<D>>,
    f: impl FnOnce(&mut ThreadEntry) -> R,
) -> R {
    let mut dead = Vec::new();
    let result = THREAD_ENTRIES.with(|entries| {
        let mut entries = entries.borrow_mut();
        let position = match entries.iter().position(|e| e.pool_id == pool.id) {
            Some(p) => p,
            None => {
                let (live, gone): (Vec<_>, Vec<_>) =
                    entries.drain(..).partition(|e| e.pool.strong_count() > 0);
                *entries = live;
                dead = gone;
                entries.push(ThreadEntry {
                    pool_id: pool.id,
                    pool: pool.owner(),
                    current: None,
                    lease: None,
                });
                entries.len() - 1
            }
        };
        f(&mut entries[position])
    });
    drop(dead);
    result
}
