//! [`StreamPool`]: a device's default stream and worker slots — which streams exist, who leases them,
//! and what happens when all are leased.
//!
//! A pool has a default stream (index 0) and N worker slots (31 by default, at most
//! [`MAX_WORKER_SLOTS`]), streams `1..=N`. Each slot creates its native stream lazily, once, in a
//! [`LazySlot`] (fix 4): [`StreamPool::synchronize_all`] waits for every created stream without
//! blocking creation. Worker slots are leased from a [`SlotBitmask`] (fix 5); when all are leased the
//! [`ExhaustionPolicy`] decides: `error` (default), `wait:<ms>`, or `share` (round-robin over the worker
//! streams; a shared stream's command buffer is then filled by several threads). Which stream a thread
//! uses is `super::current`'s business (fix 3).
//!
//! # Capture streams
//!
//! Every stream `i` (default and workers) has a *capture partner*, index `workers + 1 + i`, created
//! on first use like the others and never leased or synchronised by [`StreamPool::synchronize_all`]:
//! graphs replayed on `i` are recorded on it ([`StreamPool::capture_stream`]). Nothing ever runs on a
//! capture stream, and no allocator block names one, so no other thread records an event on it or
//! waits for it while a capture is in progress (which would break the capture, or pull that thread's
//! work into the graph).
//!
//! # Lifetime
//!
//! The pool's state is an `Arc` held by the [`StreamPool`] and by the caching allocator built on it
//! (its blocks remember streams by index). [`Stream`] handles borrow the pool; a thread's lease holds
//! only a `Weak`. Dropping the [`StreamPool`] drains and shuts down its streams (the CPU backend's
//! executor threads exit); the state — native streams and the device handle with them — is freed when
//! the allocator is gone too, and leases returned afterwards by exiting threads find nothing to do.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};

use super::commit::CommitPolicy;
use super::config::{ExhaustionPolicy, StreamPoolConfig};
use super::current;
use super::handle::Stream;
use super::lazy::LazySlot;
use super::lease::{LeaseOwner, RawLease, StreamLease};
use super::slots::{SlotBitmask, MAX_WORKER_SLOTS};
use crate::device::Device;
use crate::error::{Result, RuntimeError};

/// Process-unique pool ids; 0 means "none" in the thread-local cache.
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// One slot: its lazily created stream and how many leases use it.
pub(super) struct Slot<D: Device> {
    pub(super) stream: LazySlot<D::Stream>,
    /// Leases using this slot: 0 or 1 for an exclusive lease, more under `share`. Written on lease and
    /// release only; read by the commit policy (Relaxed: a stale count only delays a policy switch by
    /// one op, and ordering of the work itself comes from the stream).
    pub(super) users: AtomicU32,
}

/// A pool's shared state (module doc, "Lifetime").
pub(crate) struct StreamPoolState<D: Device> {
    pub(super) id: u64,
    /// Index 0 = default stream, 1..=workers = worker slots. Declared before `device`, so the native
    /// streams are dropped while the device handle (a CUDA context, its kernels) still exists.
    pub(super) slots: Box<[CachePadded<Slot<D>>]>,
    pub(super) device: D,
    /// Worker slot `i` ↔ bit `i - 1`.
    leased: SlotBitmask,
    workers: usize,
    exhaustion: Mutex<ExhaustionPolicy>,
    pub(super) commit: AtomicU8,
    pub(super) main_thread_uses_default: bool,
    /// Set once, when the `StreamPool` is dropped (Release; read with Acquire before using a stream).
    pub(super) closed: AtomicBool,
    /// Threads waiting under `wait:<ms>`; with `wait_lock` and `wait_cv` this is the only blocking part
    /// of the pool, and it is reached only when all slots are leased.
    waiters: AtomicUsize,
    wait_lock: Mutex<()>,
    wait_cv: Condvar,
    /// Round-robin cursor for `share`.
    share_cursor: AtomicUsize,
}

/// Owns a pool: dropping it drains and shuts down the streams. Shared by reference or `Arc`.
pub struct StreamPool<D: Device> {
    state: Arc<StreamPoolState<D>>,
}

impl<D: Device> StreamPool<D> {
    /// A pool on `device`. Streams are created on first use.
    pub fn new(device: D, config: StreamPoolConfig) -> Result<Self> {
        if !(1..=MAX_WORKER_SLOTS).contains(&config.worker_slots) {
            return Err(RuntimeError::InvalidConfig {
                name: "StreamPoolConfig::worker_slots",
                value: config.worker_slots.to_string(),
                allowed: "1 to 64 worker slots",
            });
        }
        // Streams 0..=workers, then their capture partners (module doc).
        let slots = (0..2 * (config.worker_slots + 1))
            .map(|_| {
                CachePadded::new(Slot {
                    stream: LazySlot::new(),
                    users: AtomicU32::new(0),
                })
            })
            .collect();
        let state = Arc::new(StreamPoolState {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            slots,
            device,
            leased: SlotBitmask::new(config.worker_slots),
            workers: config.worker_slots,
            exhaustion: Mutex::new(config.exhaustion),
            commit: AtomicU8::new(config.commit as u8),
            main_thread_uses_default: config.main_thread_uses_default,
            closed: AtomicBool::new(false),
            waiters: AtomicUsize::new(0),
            wait_lock: Mutex::new(()),
            wait_cv: Condvar::new(),
            share_cursor: AtomicUsize::new(0),
        });
        Ok(Self { state })
    }

    /// The shared state, for the caching allocator built on this pool.
    pub(crate) fn state(&self) -> &Arc<StreamPoolState<D>> {
        &self.state
    }

    /// The device the streams run on.
    pub fn device(&self) -> &D {
        &self.state.device
    }

    /// Worker slots (not counting the default stream).
    pub fn worker_slots(&self) -> usize {
        self.state.workers
    }

    /// Worker slots leased right now (a snapshot).
    pub fn leased_slots(&self) -> usize {
        self.state.leased.leased_count()
    }

    /// The default stream (index 0).
    pub fn default_stream(&self) -> Stream<'_, D> {
        self.state.stream(0)
    }

    /// Stream `index` (0 = default, 1..=worker_slots). Does not lease it and does not create it; creation
    /// happens on first use, lock-free afterwards (fix 4).
    pub fn stream(&self, index: usize) -> Result<Stream<'_, D>> {
        if index > self.state.workers {
            return Err(RuntimeError::InvalidConfig {
                name: "stream index",
                value: index.to_string(),
                allowed: "0 (default) to the pool's worker_slots",
            });
        }
        Ok(self.state.stream(index as u32))
    }

    /// The capture partner of `stream` (module doc, "Capture streams"): where graphs that will be
    /// replayed on `stream` are recorded. `stream` must be this pool's default or worker stream.
    pub fn capture_stream(&self, stream: Stream<'_, D>) -> Result<Stream<'_, D>> {
        match self.state.capture_partner(stream) {
            Some(index) => Ok(self.state.stream(index)),
            None => Err(RuntimeError::InvalidConfig {
                name: "capture_stream",
                value: format!("{stream:?}"),
                allowed: "the default or a worker stream of the pool (not a capture stream)",
            }),
        }
    }

    /// This thread's current stream: the one set with [`set_current_stream`](Self::set_current_stream),
    /// else the stream this thread leased, else a newly leased one (or the default stream on the main
    /// thread). A thread-local read after the first call (fix 3).
    #[inline]
    pub fn current_stream(&self) -> Result<Stream<'_, D>> {
        let index = match current::cached_index(self.state.id) {
            Some(index) => index,
            None => current::current_index_slow(&self.state)?,
        };
        Ok(self.state.stream(index))
    }

    /// Makes `stream` this thread's current stream until the guard is dropped (a thread-local write;
    /// fix 3). `stream` must be one of this pool's.
    pub fn set_current_stream(&self, stream: Stream<'_, D>) -> Result<current::CurrentStreamGuard> {
        if !stream.is_of(&self.state) {
            return Err(RuntimeError::InvalidConfig {
                name: "set_current_stream",
                value: format!("{stream:?}"),
                allowed: "a stream of the pool it is made current in",
            });
        }
        Ok(current::set_current(&self.state, stream.index))
    }

    /// Leases a worker slot explicitly, for as long as the returned lease lives (the engine's workers
    /// do this). Follows the exhaustion policy.
    pub fn lease(&self) -> Result<StreamLease<'_, D>> {
        let lease = self.state.lease_slot()?;
        Ok(StreamLease::new(self.state.stream(lease.index), lease))
    }

    /// Waits for all work on every stream created so far. Streams being created meanwhile are not waited
    /// for (they have no work yet) and their creation is not blocked (fix 4).
    pub fn synchronize_all(&self) -> Result<()> {
        let mut first_error = None;
        // Capture streams hold no work, and one may be capturing now: waiting for it would break that.
        for slot in self.state.slots[..=self.state.workers].iter() {
            if let Some(raw) = slot.stream.get() {
                if let Err(e) = self.state.device.synchronize(raw) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The exhaustion policy in force.
    pub fn exhaustion_policy(&self) -> ExhaustionPolicy {
        *self.state.exhaustion.lock()
    }

    /// Changes the exhaustion policy (read only when all slots are leased).
    pub fn set_exhaustion_policy(&self, policy: ExhaustionPolicy) {
        *self.state.exhaustion.lock() = policy;
    }

    /// The commit policy in force.
    pub fn commit_policy(&self) -> CommitPolicy {
        CommitPolicy::from_u8(self.state.commit.load(Ordering::Relaxed))
    }

    /// Changes the commit policy for work encoded from now on.
    pub fn set_commit_policy(&self, policy: CommitPolicy) {
        // Relaxed: each op reads the policy once; there is no data that must be ordered with it.
        self.state.commit.store(policy as u8, Ordering::Relaxed);
    }
}

impl<D: Device> Drop for StreamPool<D> {
    fn drop(&mut self) {
        // Release pairs with the Acquire in `Stream::raw`: a thread that sees `closed` stops using streams.
        self.state.closed.store(true, Ordering::Release);
        for slot in self.state.slots.iter() {
            if let Some(raw) = slot.stream.get() {
                self.state.device.shutdown_stream(raw);
            }
        }
        // This thread's entry goes now; other threads drop theirs on their next miss or at exit.
        current::forget_pool(self.state.id);
        // Wake waiters so they fail fast instead of waiting out their timeout.
        let _lock = self.state.wait_lock.lock();
        self.state.wait_cv.notify_all();
    }
}

impl<D: Device> StreamPoolState<D> {
    /// The handle of stream `index` (in range: the caller checked).
    #[inline]
    pub(crate) fn stream(&self, index: u32) -> Stream<'_, D> {
        Stream { pool: self, index }
    }

    /// The index of `stream`'s capture partner, if `stream` is a default or worker stream of this pool.
    pub(crate) fn capture_partner(&self, stream: Stream<'_, D>) -> Option<u32> {
        (stream.is_of(self) && stream.index() <= self.workers)
            .then(|| stream.index + self.workers as u32 + 1)
    }

    pub(super) fn lease_slot(&self) -> Result<RawLease> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.dropped());
        }
        if let Some(bit) = self.leased.lease() {
            return Ok(self.exclusive(bit));
        }
        self.lease_exhausted()
    }

    pub(super) fn owner(self: &Arc<Self>) -> Weak<dyn LeaseOwner> {
        let weak: Weak<Self> = Arc::downgrade(self);
        weak
    }

    fn exclusive(&self, bit: usize) -> RawLease {
        self.slots[bit + 1].users.fetch_add(1, Ordering::Relaxed);
        RawLease {
            index: bit as u32 + 1,
            shared: false,
        }
    }

    #[cold]
    fn lease_exhausted(&self) -> Result<RawLease> {
        let policy = *self.exhaustion.lock();
        match policy {
            ExhaustionPolicy::Error => Err(self.exhausted(policy, "no free slot".into())),
            ExhaustionPolicy::Share => {
                let index = self.share_cursor.fetch_add(1, Ordering::Relaxed) % self.workers + 1;
                self.slots[index].users.fetch_add(1, Ordering::Relaxed);
                Ok(RawLease {
                    index: index as u32,
                    shared: true,
                })
            }
            ExhaustionPolicy::Wait(timeout) => {
                let deadline = Instant::now() + timeout;
                let mut guard = self.wait_lock.lock();
                // SeqCst: this increment and the releaser's fetch_and in `SlotBitmask::release` are in one
                // total order with the releaser's read of `waiters`: either the releaser sees us and
                // notifies (under `wait_lock`, so not before we wait), or our next `lease` sees its bit.
                self.waiters.fetch_add(1, Ordering::SeqCst);
                let result = loop {
                    if let Some(bit) = self.leased.lease() {
                        break Ok(self.exclusive(bit));
                    }
                    if self.closed.load(Ordering::Acquire) {
                        break Err(self.dropped());
                    }
                    if self.wait_cv.wait_until(&mut guard, deadline).timed_out() {
                        if let Some(bit) = self.leased.lease() {
                            break Ok(self.exclusive(bit));
                        }
                        break Err(
                            self.exhausted(policy, format!("waited {} ms", timeout.as_millis()))
                        );
                    }
                };
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                result
            }
        }
    }

    fn exhausted(&self, policy: ExhaustionPolicy, detail: String) -> RuntimeError {
        RuntimeError::StreamSlotsExhausted {
            slots: self.workers,
            policy: policy.to_string(),
            detail,
        }
    }

    fn dropped(&self) -> RuntimeError {
        RuntimeError::Dropped {
            what: "a stream lease".into(),
            owner: "stream pool",
        }
    }
}

impl<D: Device> LeaseOwner for StreamPoolState<D> {
    fn release(&self, index: u32, shared: bool) {
        let slot = &self.slots[index as usize];
        if !self.closed.load(Ordering::Acquire) {
            if let Some(raw) = slot.stream.get() {
                // The lease ends after the stream's work has finished, so the next holder starts clean.
                if let Err(e) = self.device.synchronize(raw) {
                    tracing::warn!(stream = index, error = %e, "stream failed while its lease was returned");
                }
            }
        }
        slot.users.fetch_sub(1, Ordering::Relaxed);
        if !shared {
            self.leased.release(index as usize - 1);
            // SeqCst read: see `lease_exhausted`.
            if self.waiters.load(Ordering::SeqCst) > 0 {
                let _lock = self.wait_lock.lock();
                self.wait_cv.notify_one();
            }
        }
    }
}
