//! Where the engine's model-checked piece ([`crate::doorbell`]) gets its atomics, lock and condvar:
//! loom's under `--cfg loom`, std's otherwise. The rest of the engine uses std and parking_lot
//! directly and is checked by stress tests.

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{fence, AtomicUsize, Ordering},
    Condvar, Mutex,
};

#[cfg(all(loom, test))]
pub(crate) use loom::sync::atomic::AtomicBool;

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{fence, AtomicUsize, Ordering},
    Condvar, Mutex,
};
