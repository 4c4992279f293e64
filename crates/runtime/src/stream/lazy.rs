//! [`LazySlot`]: a value created once, on first use, with a lock-free read once it exists (fix 4,
//! "lock-free stream lookup").
//!
//! The seed's `getStream(i)` took the creation mutex on every call, even when the stream existed; its
//! `once_flag` rewrite let "synchronize all streams" race creation and put the mutex back. Here each
//! pool slot holds a `LazySlot<Stream>`:
//!
//! - [`get`](LazySlot::get) is one `Acquire` load: `Some` once creation has finished, `None` before.
//!   `synchronize_all` uses it, so it never waits for (or races) a creation in progress — a stream still
//!   being created has no work to wait for.
//! - [`get_or_try_init`](LazySlot::get_or_try_init) runs the fallible constructor in exactly one thread;
//!   others that arrive meanwhile yield until it finishes. If creation fails the slot goes back to empty
//!   and the error is returned, so a later call can try again.
//!
//! Written by hand because std's `OnceLock::get_or_try_init` is unstable and loom cannot model std's
//! `OnceLock`; this version is model-checked (see `loom_tests`).
//!
//! # States
//!
//! `EMPTY → CREATING` (CAS, by the creating thread) `→ READY` (store `Release`, after the value is
//! written) or `→ EMPTY` (on failure). The value cell is written only in `CREATING` by the thread that
//! won the CAS and read only in `READY`, which is never left.

use crate::sync::{yield_now, AtomicU8, Ordering, UnsafeCell};
use std::mem::MaybeUninit;

const EMPTY: u8 = 0;
const CREATING: u8 = 1;
const READY: u8 = 2;

/// A lazily created, then immutable, value. See the module doc.
pub(crate) struct LazySlot<T> {
    state: AtomicU8,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: the value is written by one thread (the CAS winner) before the Release store of READY and only
// read after an Acquire load observes READY, so `&LazySlot<T>` hands out `&T` across threads: this needs
// `T: Sync`, and moving the creation between threads needs `T: Send`.
unsafe impl<T: Send + Sync> Sync for LazySlot<T> {}
// SAFETY: sending the slot sends the `T` it may hold.
unsafe impl<T: Send> Send for LazySlot<T> {}

impl<T> LazySlot<T> {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU8::new(EMPTY),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// The value if it has been created, without waiting.
    #[inline]
    pub(crate) fn get(&self) -> Option<&T> {
        // Acquire pairs with the Release store of READY in `get_or_try_init`.
        if self.state.load(Ordering::Acquire) == READY {
            // SAFETY: READY is only stored after the value was written, and never left, so the cell is
            // initialised and no longer written.
            Some(self.value.with(|p| unsafe { (*p).assume_init_ref() }))
        } else {
            None
        }
    }

    /// The value, creating it with `create` if this is the first call. See the module doc.
    #[inline]
    pub(crate) fn get_or_try_init<E>(
        &self,
        create: impl FnOnce() -> Result<T, E>,
    ) -> Result<&T, E> {
        if let Some(value) = self.get() {
            return Ok(value);
        }
        self.init_slow(create)
    }

    #[cold]
    fn init_slow<E>(&self, create: impl FnOnce() -> Result<T, E>) -> Result<&T, E> {
        let mut create = Some(create);
        loop {
            // Acquire on success is not needed for the value (nobody wrote it), but keeps a failed
            // creator's effects ordered before ours. Acquire on failure too: a loser that then sees
            // READY in `get` is ordered after the value's write either way; it only loops.
            match self
                .state
                .compare_exchange(EMPTY, CREATING, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => {
                    let create = create
                        .take()
                        .expect("invariant violated: creator ran twice (this is a bug)");
                    match create() {
                        Ok(value) => {
                            // SAFETY: we won the CAS into CREATING, so no other thread reads or writes the cell.
                            self.value.with_mut(|p| unsafe { (*p).write(value) });
                            // Release pairs with the Acquire in `get`.
                            self.state.store(READY, Ordering::Release);
                            return Ok(self.get().expect(
                                "invariant violated: READY without value (this is a bug)",
                            ));
                        }
                        Err(e) => {
                            self.state.store(EMPTY, Ordering::Release);
                            return Err(e);
                        }
                    }
                }
                Err(READY) => {
                    return Ok(self
                        .get()
                        .expect("invariant violated: READY without value (this is a bug)"))
                }
                // Another thread is creating: wait for it to finish or fail.
                Err(_) => yield_now(),
            }
        }
    }
}

impl<T> Drop for LazySlot<T> {
    fn drop(&mut self) {
        if self.state.load(Ordering::Acquire) == READY {
            // SAFETY: READY means initialised; `&mut self` means no other reference exists.
            self.value.with_mut(|p| unsafe { (*p).assume_init_drop() });
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn creates_once_and_retries_after_failure() {
        let slot = LazySlot::<String>::new();
        assert!(slot.get().is_none());
        let err: Result<&String, &str> = slot.get_or_try_init(|| Err("no device"));
        assert_eq!(err.unwrap_err(), "no device");
        assert!(
            slot.get().is_none(),
            "a failed creation leaves the slot empty"
        );
        let v = slot
            .get_or_try_init::<()>(|| Ok("stream".to_string()))
            .unwrap();
        assert_eq!(v, "stream");
        let again = slot
            .get_or_try_init::<()>(|| panic!("created twice"))
            .unwrap();
        assert_eq!(again, "stream");
    }

    #[test]
    fn many_threads_create_exactly_once() {
        let slot = LazySlot::<usize>::new();
        let created = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    let v = slot
                        .get_or_try_init::<()>(|| {
                            std::thread::sleep(std::time::Duration::from_millis(2));
                            Ok(created.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 7)
                        })
                        .unwrap();
                    assert_eq!(*v, 7);
                });
            }
        });
        assert_eq!(created.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}

/// Loom model: lazy creation racing a `synchronize_all`-style reader. The reader either sees nothing
/// (creation unfinished) or the fully written value, never a torn one, and creation happens once.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn creation_races_synchronize_all() {
        loom::model(|| {
            let slot = Arc::new(LazySlot::<usize>::new());
            let created = Arc::new(AtomicUsize::new(0));
            let creators: Vec<_> = (0..2)
                .map(|_| {
                    let slot = slot.clone();
                    let created = created.clone();
                    thread::spawn(move || {
                        let v = *slot
                            .get_or_try_init::<()>(|| {
                                created.fetch_add(1, Ordering::SeqCst);
                                Ok(42)
                            })
                            .unwrap();
                        assert_eq!(v, 42);
                    })
                })
                .collect();
            // The "synchronize_all" reader: never blocks, sees either nothing or the finished value.
            let reader = {
                let slot = slot.clone();
                thread::spawn(move || {
                    if let Some(v) = slot.get() {
                        assert_eq!(*v, 42);
                    }
                })
            };
            for c in creators {
                c.join().unwrap();
            }
            reader.join().unwrap();
            assert_eq!(
                created.load(Ordering::SeqCst),
                1,
                "stream created more than once"
            );
            assert_eq!(slot.get().copied(), Some(42));
        });
    }
}
