//! [`SlotBitmask`]: the lock-free free-list of worker stream slots (fix 5, "lock-free slot bitmask").
//!
//! The seed kept its 31 free slot indices in a `Vec` behind a mutex, which serialised every lease and
//! release under thread churn. Here the whole free-list is one 64-bit word: bit `i` set means worker
//! slot `i` is leased. Leasing is a compare-and-swap that sets the lowest clear bit; releasing is one
//! `fetch_and`. Nothing blocks, and a thread that loses a CAS retries only because another thread made
//! progress.
//!
//! Written by hand because the structure is one atomic word; a general lock-free queue (crossbeam's
//! `ArrayQueue`) would cost two atomics and a slot array per operation for no gain.
//!
//! # Ordering
//!
//! A lease's successful CAS is `Acquire` and a release is `Release`: they pair, so everything the
//! previous holder did with the slot (its stream's work was drained before release) happens-before the
//! next holder's use. `SeqCst` is used instead where the pool's `wait:<ms>` policy (`super::pool`) needs a total order
//! between "bit released" and "waiter registered" (see there).

use crate::sync::{AtomicU64, Ordering};

/// The most worker slots one pool can have (one bit each in a `u64`).
pub const MAX_WORKER_SLOTS: usize = 64;

/// A set of `capacity` slots, each free or leased.
#[derive(Debug)]
pub(crate) struct SlotBitmask {
    /// Bit `i` set: slot `i` is leased. Written by [`lease`](Self::lease) (CAS) and
    /// [`release`](Self::release) (`fetch_and`) from any thread.
    leased: AtomicU64,
    /// Mask of the bits that exist (`capacity` low bits). Immutable.
    valid: u64,
}

impl SlotBitmask {
    /// A bitmask of `capacity` (1..=64) free slots.
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(
            (1..=MAX_WORKER_SLOTS).contains(&capacity),
            "invariant violated: slot capacity {capacity} outside 1..={MAX_WORKER_SLOTS}"
        );
        let valid = if capacity == 64 {
            u64::MAX
        } else {
            (1u64 << capacity) - 1
        };
        Self {
            leased: AtomicU64::new(0),
            valid,
        }
    }

    /// Leases the lowest free slot, or returns `None` when all are leased.
    #[inline]
    pub(crate) fn lease(&self) -> Option<usize> {
        // Relaxed first read: it only picks a candidate; the CAS below validates it.
        let mut current = self.leased.load(Ordering::Relaxed);
        loop {
            let free = !current & self.valid;
            if free == 0 {
                return None;
            }
            let bit = free.trailing_zeros() as usize;
            // Acquire on success pairs with the Release in `release` of the previous holder. SeqCst is
            // stronger than Acquire and is what the pool's wait policy needs (module doc).
            match self.leased.compare_exchange_weak(
                current,
                current | (1 << bit),
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(bit),
                Err(actual) => current = actual,
            }
        }
    }

    /// Returns slot `index` to the free set. Returns whether it was leased; releasing a free slot
    /// changes nothing (the caller's lease token makes that impossible anyway, see `super::lease::SlotLease`).
    #[inline]
    pub(crate) fn release(&self, index: usize) -> bool {
        debug_assert!(index < MAX_WORKER_SLOTS && self.valid & (1 << index) != 0);
        // Release (as part of SeqCst) pairs with the Acquire in `lease` of the next holder.
        let before = self.leased.fetch_and(!(1u64 << index), Ordering::SeqCst);
        before & (1 << index) != 0
    }

    /// How many slots are leased now (a snapshot).
    pub(crate) fn leased_count(&self) -> usize {
        self.leased.load(Ordering::SeqCst).count_ones() as usize
    }

    /// Whether slot `index` is leased now (a snapshot).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn is_leased(&self, index: usize) -> bool {
        self.leased.load(Ordering::SeqCst) & (1 << index) != 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn leases_lowest_free_slot_and_reports_exhaustion() {
        let slots = SlotBitmask::new(3);
        assert_eq!(slots.lease(), Some(0));
        assert_eq!(slots.lease(), Some(1));
        assert_eq!(slots.lease(), Some(2));
        assert_eq!(slots.lease(), None);
        assert!(slots.release(1));
        assert_eq!(slots.lease(), Some(1));
        assert_eq!(slots.leased_count(), 3);
    }

    #[test]
    fn double_release_is_harmless() {
        let slots = SlotBitmask::new(2);
        let a = slots.lease().unwrap();
        assert!(slots.release(a));
        assert!(
            !slots.release(a),
            "second release reports the slot was already free"
        );
        assert_eq!(slots.leased_count(), 0);
        assert!(!slots.is_leased(a));
    }

    #[test]
    fn full_width_mask() {
        let slots = SlotBitmask::new(64);
        for i in 0..64 {
            assert_eq!(slots.lease(), Some(i));
        }
        assert_eq!(slots.lease(), None);
    }

    #[test]
    #[should_panic(expected = "invariant violated")]
    fn zero_capacity_is_a_bug() {
        SlotBitmask::new(0);
    }
}

/// Loom model: threads leasing and releasing concurrently never hold one slot twice and lose none.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn lease_release_conserves_slots() {
        loom::model(|| {
            // Two slots, three threads: exhaustion is reachable in some interleavings.
            let slots = Arc::new(SlotBitmask::new(2));
            let holders: Arc<[AtomicUsize; 2]> =
                Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
            let handles: Vec<_> = (0..3)
                .map(|_| {
                    let slots = slots.clone();
                    let holders = holders.clone();
                    thread::spawn(move || {
                        if let Some(i) = slots.lease() {
                            // No other thread holds slot i right now.
                            assert_eq!(
                                holders[i].fetch_add(1, Ordering::SeqCst),
                                0,
                                "slot {i} leased twice"
                            );
                            holders[i].fetch_sub(1, Ordering::SeqCst);
                            assert!(slots.release(i), "slot {i} was not leased at release");
                            1
                        } else {
                            0
                        }
                    })
                })
                .collect();
            let leased: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
            // At least two of the three got a slot (at most one can find both taken), and all came back.
            assert!(leased >= 2, "only {leased} leases succeeded");
            assert_eq!(slots.leased_count(), 0, "a slot was lost");
        });
    }
}
