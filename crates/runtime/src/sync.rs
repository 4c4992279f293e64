//! The one place the lock-free pieces get their atomics, cells and threads from.
//!
//! Under `--cfg loom` these are loom's model-checked versions, otherwise std's. Only the code that loom
//! models (`crate::stream::slots`, `crate::stream::lazy` and `crate::alloc::anchor`) imports from here; everything else uses std directly,
//! because loom's atomics cannot live in `static`s and the rest of the runtime is checked by stress tests
//! instead.

#[cfg(loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::atomic::{AtomicIsize, AtomicU64, AtomicU8, Ordering},
    thread::yield_now,
};

#[cfg(not(loom))]
pub(crate) use std::{
    sync::atomic::{AtomicIsize, AtomicU64, AtomicU8, Ordering},
    thread::yield_now,
};

/// std's `UnsafeCell` with loom's closure-based access API, so `crate::stream::lazy` reads the same either way.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
