//! [`Doorbell`]: how submitters wake idle executors without taking a lock on a busy engine's submit
//! path, and without a wake-up ever being lost.
//!
//! The bell counts items announced and not yet taken. An executor with nothing to do registers as
//! sleeping, looks at the count once more, and waits on a condvar; a submitter adds to the count, then
//! reads the sleeping count and takes the lock to notify only when it is not zero. A `SeqCst` fence
//! sits between each side's write and read, so of "executor registers, then looks" and "submitter
//! announces, then looks" at least one sees the other (without the fences loom finds both reading
//! stale values: it treats `SeqCst` accesses as acquire/release, and the fences are what the memory
//! model plainly promises this for). The executor looks, and checks its stop condition, while holding
//! the lock a notifier must take, so a notification cannot slip between its look and its wait. The
//! loom model below checks this: every announced item is taken and a stop wakes every sleeper, with
//! waits that never time out (the production timeout is only a safety net).
//!
//! An item may be taken before it is announced (the submitter pushes, an executor pops, then the
//! submitter rings); the count then wraps below zero for that moment, which reads as "not quiet", so
//! an executor looks again instead of sleeping — never the other way round.
//!
//! Its atomics and lock come from [`crate::sync`]: loom's under `--cfg loom`, std's otherwise.

use std::time::Duration;

use crate::sync::{fence, AtomicUsize, Condvar, Mutex, Ordering};

/// Announced-and-not-taken count plus the sleepers' lock and condvar (module doc).
pub(crate) struct Doorbell {
    announced: AtomicUsize,
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Doorbell {
    pub(crate) fn new() -> Self {
        Self {
            announced: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Announces `count` new items (after they are where executors look) and wakes one sleeper, if
    /// any; takes no lock when nobody sleeps.
    pub(crate) fn ring(&self, count: usize) {
        self.announced.fetch_add(count, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) > 0 {
            let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_one();
        }
    }

    /// Counts one item as taken (module doc: possibly before its announcement).
    pub(crate) fn took_one(&self) {
        self.announced.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether no announced item is left.
    pub(crate) fn is_quiet(&self) -> bool {
        self.announced.load(Ordering::SeqCst) == 0
    }

    /// Sleeps until a ring wakes it, `timeout` passes, or `stop()` is true (checked after registering,
    /// under the lock, so neither a ring nor a stop is lost). Returns at once when items are announced.
    pub(crate) fn sleep(&self, timeout: Duration, stop: impl Fn() -> bool) {
        let lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.sleeping.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let lock = if self.is_quiet() && !stop() {
            match self.wake.wait_timeout(lock, timeout) {
                Ok((lock, _)) => lock,
                Err(poisoned) => poisoned.into_inner().0,
            }
        } else {
            lock
        };
        self.sleeping.fetch_sub(1, Ordering::SeqCst);
        drop(lock);
    }

    /// Wakes every sleeper (after a stop condition became true).
    pub(crate) fn wake_all(&self) {
        let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }
}

#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use crate::sync::AtomicBool;
    use loom::sync::Arc;
    use loom::thread;

    /// Takes one announced item if there is one (the model's stand-in for popping the inbox).
    fn try_take(bell: &Doorbell, items: &AtomicUsize) -> bool {
        let mut left = items.load(Ordering::SeqCst);
        while left > 0 {
            match items.compare_exchange(left, left - 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    bell.took_one();
                    return true;
                }
                Err(now) => left = now,
            }
        }
        false
    }

    /// An executor that must take one item: it sleeps (with no timeout, under loom) until it can.
    /// A lost wake-up leaves it waiting forever, which loom reports as a deadlock. (`sleep` returns at
    /// once while an item is taken but not yet announced; the yield tells loom this loop spins.)
    fn executor_takes_one(bell: &Doorbell, items: &AtomicUsize) {
        while !try_take(bell, items) {
            bell.sleep(Duration::from_secs(3600), || false);
            thread::yield_now();
        }
    }

    #[test]
    fn two_submitters_wake_two_sleeping_executors() {
        loom::model(|| {
            let bell = Arc::new(Doorbell::new());
            let items = Arc::new(AtomicUsize::new(0));
            let submitters: Vec<_> = (0..2)
                .map(|_| {
                    let (bell, items) = (bell.clone(), items.clone());
                    thread::spawn(move || {
                        items.fetch_add(1, Ordering::SeqCst);
                        bell.ring(1);
                    })
                })
                .collect();
            let (b, i) = (bell.clone(), items.clone());
            let other = thread::spawn(move || executor_takes_one(&b, &i));
            executor_takes_one(&bell, &items);
            other.join().unwrap();
            for s in submitters {
                s.join().unwrap();
            }
            assert!(bell.is_quiet());
        });
    }

    #[test]
    fn a_stop_wakes_a_sleeping_executor() {
        loom::model(|| {
            let bell = Arc::new(Doorbell::new());
            let closing = Arc::new(AtomicBool::new(false));
            let (b, c) = (bell.clone(), closing.clone());
            let executor = thread::spawn(move || {
                while !c.load(Ordering::SeqCst) {
                    b.sleep(Duration::from_secs(3600), || c.load(Ordering::SeqCst));
                }
            });
            closing.store(true, Ordering::SeqCst);
            bell.wake_all();
            executor.join().unwrap();
        });
    }
}
