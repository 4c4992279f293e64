//! [`EventPool`] and [`Event`]: pooled device events (no event is created in steady state).
//!
//! An [`Event`] is taken from its pool and goes back to it when dropped, so after warm-up recording and
//! waiting create nothing. The pool is a lock-free queue (crossbeam's `SegQueue`): taking and returning
//! an event never blocks another thread.
//!
//! Semantics: [`Event::record`] marks the point in a stream's work (and submits that work);
//! [`super::Stream::wait`] makes another stream's later work wait for it on the device, without blocking
//! the host; [`Event::query`] asks without waiting; [`Event::synchronize`] blocks the host.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::SegQueue;

use super::handle::Stream;
use crate::device::Device;
use crate::error::Result;

/// A pool of native events of one device. Shared through `Arc`; events keep their pool alive.
pub struct EventPool<D: Device> {
    device: D,
    free: SegQueue<D::Event>,
    /// Events ever created (only grows on a pool miss). Relaxed: a statistic.
    created: AtomicUsize,
}

impl<D: Device> EventPool<D> {
    /// An empty pool for `device`.
    pub fn new(device: D) -> Arc<Self> {
        Arc::new(Self {
            device,
            free: SegQueue::new(),
            created: AtomicUsize::new(0),
        })
    }

    /// An event from the pool, creating one only when the pool is empty.
    pub fn event(self: &Arc<Self>) -> Result<Event<D>> {
        let raw = match self.free.pop() {
            Some(raw) => raw,
            None => {
                self.created.fetch_add(1, Ordering::Relaxed);
                self.device.create_event()?
            }
        };
        Ok(Event {
            raw: Some(raw),
            pool: self.clone(),
            known_complete: AtomicBool::new(true),
        })
    }

    /// How many native events this pool has created so far.
    pub fn created(&self) -> usize {
        self.created.load(Ordering::Relaxed)
    }
}

/// A pooled event. Dropping it returns the native event to its pool.
pub struct Event<D: Device> {
    raw: Option<D::Event>,
    pool: Arc<EventPool<D>>,
    /// Set once a query or synchronize has seen the last record complete, so later checks (the
    /// allocator's, under its pool locks) need no device call. Cleared by `record`.
    known_complete: AtomicBool,
}

impl<D: Device> Event<D> {
    fn raw(&self) -> &D::Event {
        self.raw
            .as_ref()
            .expect("invariant violated: event used after drop (this is a bug)")
    }

    /// Records the event at the current end of `stream`'s work, submitting that work.
    pub fn record(&mut self, stream: &Stream<'_, D>) -> Result<()> {
        self.known_complete.store(false, Ordering::Relaxed);
        self.pool.device.record_event(self.raw(), stream.raw()?)
    }

    /// Whether the last record has completed; never blocks.
    pub fn query(&self) -> Result<bool> {
        if self.is_known_complete() {
            return Ok(true);
        }
        let done = self.pool.device.query_event(self.raw())?;
        if done {
            self.known_complete.store(true, Ordering::Release);
        }
        Ok(done)
    }

    /// Whether a previous query or synchronize already saw completion (no device call).
    #[inline]
    pub fn is_known_complete(&self) -> bool {
        // Acquire pairs with the Release stores below: a thread that trusts another thread's observation
        // of completion also sees everything that observation saw (the device's finished work).
        self.known_complete.load(Ordering::Acquire)
    }

    /// Blocks the host until the last record has completed.
    pub fn synchronize(&self) -> Result<()> {
        if self.is_known_complete() {
            return Ok(());
        }
        self.pool.device.event_synchronize(self.raw())?;
        self.known_complete.store(true, Ordering::Release);
        Ok(())
    }

    pub(crate) fn device_event(&self) -> &D::Event {
        self.raw()
    }
}

impl<D: Device> Drop for Event<D> {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            self.pool.free.push(raw);
        }
    }
}
