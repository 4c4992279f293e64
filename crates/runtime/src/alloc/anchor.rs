//! [`Anchor`]: a value shared by one owner and the many handles it issues, counted with *biased
//! reference counting* — the owner counts its handles with a plain integer, and only a handle released
//! away from the owner touches an atomic.
//!
//! The caching allocator uses it so that buffers keep the allocator's state alive without an atomic
//! operation per allocation: each thread's cache owns an anchor of the state; a buffer holds one share
//! of the anchor of the thread that allocated it; a buffer freed by that thread's cache gives its share
//! back with a plain decrement (`super::thread_cache`), one freed on another thread (or after its
//! thread's cache is gone) with [`Anchor::release_remote`]. Written by hand because `Arc` has no biased
//! mode; model-checked below (`loom_tests`).
//!
//! # The protocol
//!
//! `remote` starts at 0 and, while the owner lives, only goes down (one per remote release), so it is
//! never 1 before the owner lets go. When the owner lets go ([`Anchor::orphan`]) it adds the number of
//! shares it issued and did not take back: `remote` is then exactly the number of shares still out.
//! Whoever brings it to 0 — the owner, if none are out, or the last remote release — frees the anchor,
//! and with it the value. A share issued with no owner at hand comes from a detached anchor whose
//! `remote` starts at 1 (no owner, one share out). `AcqRel` on every update: the freeing thread sees
//! every other thread's last use of the value.

use std::ptr::NonNull;

use crate::sync::{AtomicIsize, Ordering};

/// A value kept alive by its owner and the shares it issued (module doc).
pub(crate) struct Anchor<T> {
    value: T,
    /// Shares still out once the owner let go, minus remote releases (module doc, "The protocol").
    remote: AtomicIsize,
}

impl<T> Anchor<T> {
    /// An anchor with an owner, which counts the shares it issues and ends with [`Anchor::orphan`].
    pub(crate) fn owned(value: T) -> NonNull<Self> {
        Self::boxed(value, 0)
    }

    /// An anchor with no owner and one share out, freed by that share's [`Anchor::release_remote`].
    pub(crate) fn detached(value: T) -> NonNull<Self> {
        Self::boxed(value, 1)
    }

    fn boxed(value: T, remote: isize) -> NonNull<Self> {
        let anchor = Box::new(Self {
            value,
            remote: AtomicIsize::new(remote),
        });
        NonNull::new(Box::into_raw(anchor)).expect("Box::into_raw is never null")
    }

    /// The shared value.
    pub(crate) fn value(&self) -> &T {
        &self.value
    }

    /// The owner lets go with `issued` shares still out; frees the anchor if none are.
    ///
    /// # Safety
    /// `anchor` came from [`Anchor::owned`], this is its owner's one call, and the owner touches the
    /// anchor no more.
    pub(crate) unsafe fn orphan(anchor: NonNull<Self>, issued: usize) {
        // SAFETY: the owner's hold keeps the anchor alive until this update.
        let before = unsafe { anchor.as_ref() }
            .remote
            .fetch_add(issued as isize, Ordering::AcqRel);
        if before + issued as isize == 0 {
            // SAFETY: no share is out and the owner has let go: nobody else can reach the anchor.
            drop(unsafe { Box::from_raw(anchor.as_ptr()) });
        }
    }

    /// A share ends away from its owner; frees the anchor if it was the last one out after the owner
    /// let go.
    ///
    /// # Safety
    /// The caller holds one issued share of `anchor` and gives it up here; it touches neither the anchor
    /// nor its value afterwards.
    pub(crate) unsafe fn release_remote(anchor: NonNull<Self>) {
        // SAFETY: the caller's share keeps the anchor alive until this update.
        let before = unsafe { anchor.as_ref() }
            .remote
            .fetch_sub(1, Ordering::AcqRel);
        if before == 1 {
            // SAFETY: the count reached 0 after the owner let go: this was the last share.
            drop(unsafe { Box::from_raw(anchor.as_ptr()) });
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;
    use loom::thread;

    /// Counts its drops, so the model can check the value is freed exactly once, and last.
    struct Tracked(Arc<AtomicUsize>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Share<T>(NonNull<Anchor<T>>);
    // SAFETY: a share only reads the anchor through `&` and its atomic (as `Buffer` does).
    unsafe impl<T: Send + Sync> Send for Share<T> {}

    /// The owner issues three shares: it takes one back itself, two go to other threads that release
    /// them remotely, while the owner lets go; the value is dropped exactly once, after every share.
    #[test]
    fn owner_and_remote_releases_free_the_value_once() {
        loom::model(|| {
            let drops = Arc::new(AtomicUsize::new(0));
            let anchor = Anchor::owned(Tracked(drops.clone()));
            let mut issued = 3usize;
            let remote: Vec<_> = (0..2)
                .map(|_| {
                    let share = Share(anchor);
                    thread::spawn(move || {
                        let share = share;
                        // SAFETY: the share is live until released below.
                        assert_eq!(
                            unsafe { share.0.as_ref() }.value().0.load(Ordering::SeqCst),
                            0
                        );
                        // SAFETY: this thread gives up its share and touches nothing after.
                        unsafe { Anchor::release_remote(share.0) };
                    })
                })
                .collect();
            issued -= 1; // the owner's own share, taken back with a plain decrement
                         // SAFETY: the owner's one call; it touches the anchor no more.
            unsafe { Anchor::orphan(anchor, issued) };
            for t in remote {
                t.join().unwrap();
            }
            assert_eq!(drops.load(Ordering::SeqCst), 1);
        });
    }

    /// A detached anchor is freed by its one share.
    #[test]
    fn a_detached_anchor_is_freed_by_its_share() {
        loom::model(|| {
            let drops = Arc::new(AtomicUsize::new(0));
            let anchor = Anchor::detached(Tracked(drops.clone()));
            let share = Share(anchor);
            thread::spawn(move || {
                let share = share;
                // SAFETY: the one share, given up here.
                unsafe { Anchor::release_remote(share.0) };
            })
            .join()
            .unwrap();
            assert_eq!(drops.load(Ordering::SeqCst), 1);
        });
    }
}
