//! [`StreamPool`], [`Stream`] and [`StreamLease`]: which thread runs work on which stream.
//!
//! A pool has a default stream (index 0) and N worker slots (31 by default, at most
//! [`MAX_WORKER_SLOTS`]), streams `1..=N`. It carries three of the design's five fixes, each by name:
//!
//! - **Fix 3, thread-local current stream.** A [`Stream`] knows its index; [`StreamPool::current_stream`]
//!   is a thread-local read and [`StreamPool::set_current_stream`] a thread-local write returning a
//!   [`CurrentStreamGuard`] that restores the previous stream. No array scan, no lock.
//! - **Fix 4, lock-free stream lookup.** Each slot creates its native stream lazily, once, in a
//!   [`LazySlot`]; [`Stream::raw`] is one `Acquire` load once the stream exists, and
//!   [`StreamPool::synchronize_all`] waits for every created stream without blocking creation.
//! - **Fix 5, lock-free slot bitmask.** Worker slots are leased from a [`SlotBitmask`]. A thread that asks
//!   for its current stream without having set one gets a slot leased to it (the main thread gets the
//!   default stream, see [`StreamPoolConfig::main_thread_uses_default`]); the lease is returned when
//!   the thread exits, after the stream has drained (when its thread-locals are destroyed: a
//!   `JoinHandle::join` waits for that, `std::thread::scope` may not). When all slots are leased the
//!   [`ExhaustionPolicy`] decides: `error` (default), `wait:<ms>`, or `share` (round-robin over the
//!   worker streams; a shared stream's command buffer is then filled by several threads).
//!
//! # Lifetime
//!
//! A pool's shared state lives for the rest of the process once created (a few hundred bytes per
//! slot): [`Stream`] is a `Copy` handle of a `&'static` reference and an index, so handing streams
//! around and asking for the current one needs no reference counting — an `Arc` per stream handle
//! would put every thread on one contended cache line, which is the kind of global cost this runtime
//! exists to remove. Dropping the [`StreamPool`] drains and shuts down its streams (the CPU backend's
//! executor threads exit); a stream used afterwards returns [`RuntimeError::Dropped`], and leases
//! returned afterwards (by exiting threads) are simply cleared.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};

use crate::commit::CommitPolicy;
use crate::lazy::LazySlot;
use crate::slots::{SlotBitmask, MAX_WORKER_SLOTS};
use crate::{Device, Event, Result, RuntimeError};

/// The environment variable that sets the exhaustion policy.
pub const EXHAUSTION_POLICY_ENV: &str = "BRAID_STREAM_POOL_EXHAUSTED";

/// What [`StreamPool`] does when a thread needs a worker slot and all are leased.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExhaustionPolicy {
    /// Fail with [`RuntimeError::StreamSlotsExhausted`] naming the limit and the variable.
    #[default]
    Error,
    /// Wait up to this long for a slot to be released, then fail as `Error` does.
    Wait(Duration),
    /// Share a worker stream round-robin (its commit policy under `auto` becomes "off").
    Share,
}

impl ExhaustionPolicy {
    /// The policy from `BRAID_STREAM_POOL_EXHAUSTED`, or `Error` when unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var(EXHAUSTION_POLICY_ENV) {
            Ok(v) => v.parse(),
            Err(_) => Ok(Self::Error),
        }
    }
}

impl FromStr for ExhaustionPolicy {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        let invalid = || RuntimeError::InvalidConfig {
            name: EXHAUSTION_POLICY_ENV,
            value: s.clone(),
            allowed: "error, wait:<milliseconds> or share",
        };
        match s.as_str() {
            "error" => Ok(Self::Error),
            "share" => Ok(Self::Share),
            _ => {
                let ms = s.strip_prefix("wait:").ok_or_else(invalid)?;
                Ok(Self::Wait(Duration::from_millis(
                    ms.parse().map_err(|_| invalid())?,
                )))
            }
        }
    }
}

impl fmt::Display for ExhaustionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error => f.write_str("error"),
            Self::Wait(d) => write!(f, "wait:{}", d.as_millis()),
            Self::Share => f.write_str("share"),
        }
    }
}

/// How a [`StreamPool`] is set up.
#[derive(Clone, Debug)]
pub struct StreamPoolConfig {
    /// Worker slots besides the default stream (1..=64; default 31, as the seed's pool of 32).
    pub worker_slots: usize,
    /// What to do when all worker slots are leased.
    pub exhaustion: ExhaustionPolicy,
    /// When encoded work is submitted.
    pub commit: CommitPolicy,
    /// Whether the thread named "main" uses the default stream instead of leasing a slot.
    pub main_thread_uses_default: bool,
}

impl Default for StreamPoolConfig {
    fn default() -> Self {
        Self {
            worker_slots: 31,
            exhaustion: ExhaustionPolicy::Error,
            commit: CommitPolicy::Auto,
            main_thread_uses_default: true,
        }
    }
}

impl StreamPoolConfig {
    /// The defaults, with the policies taken from `BRAID_STREAM_POOL_EXHAUSTED` and
    /// `BRAID_COMMIT_AND_CONTINUE` where set.
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            exhaustion: ExhaustionPolicy::from_env()?,
            commit: CommitPolicy::from_env()?,
            ..Self::default()
        })
    }
}

/// Process-unique pool ids; 0 means "none" in the thread-local cache.
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// One slot: its lazily created stream and how many leases use it.
struct Slot<D: Device> {
    stream: LazySlot<D::Stream>,
    /// Leases using this slot: 0 or 1 for an exclusive lease, more under `share`. Written on lease and
    /// release only; read by the commit policy (Relaxed: a stale count only delays a policy switch by
    /// one op, and ordering of the work itself comes from the stream).
    users: AtomicU32,
}

/// The pool's shared state; lives for the process (module doc, "Lifetime").
pub(crate) struct PoolShared<D: Device> {
    id: u64,
    device: D,
    /// Index 0 = default stream, 1..=workers = worker slots.
    slots: Box<[CachePadded<Slot<D>>]>,
    /// Worker slot `i` ↔ bit `i - 1`.
    leased: SlotBitmask,
    workers: usize,
    exhaustion: Mutex<ExhaustionPolicy>,
    commit: AtomicU8,
    main_thread_uses_default: bool,
    /// Set once, when the `StreamPool` is dropped (Release; read with Acquire before using a stream).
    closed: AtomicBool,
    /// Threads waiting under `wait:<ms>`; with `wait_lock` and `wait_cv` this is the only blocking part
    /// of the pool, and it is reached only when all slots are leased.
    waiters: AtomicUsize,
    wait_lock: Mutex<()>,
    wait_cv: Condvar,
    /// Round-robin cursor for `share`.
    share_cursor: AtomicUsize,
}

/// Owns a pool's lifetime: dropping it drains and shuts down the streams. Shared by reference or `Arc`.
pub struct StreamPool<D: Device> {
    shared: &'static PoolShared<D>,
}

/// A stream of a pool: a `Copy` handle (the pool's `&'static` state and the index). See the module doc.
pub struct Stream<D: Device> {
    pool: &'static PoolShared<D>,
    index: u32,
}

impl<D: Device> Clone for Stream<D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D: Device> Copy for Stream<D> {}

impl<D: Device> PartialEq for Stream<D> {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}
impl<D: Device> Eq for Stream<D> {}

impl<D: Device> fmt::Debug for Stream<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Stream(pool {}, index {})", self.pool.id, self.index)
    }
}

/// A process-unique stream identity (pool id and index), for the allocator's block bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamId(u64);

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
        let slots = (0..=config.worker_slots)
            .map(|_| {
                CachePadded::new(Slot {
                    stream: LazySlot::new(),
                    users: AtomicU32::new(0),
                })
            })
            .collect();
        let shared = Box::leak(Box::new(PoolShared {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            device,
            slots,
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
        }));
        Ok(Self { shared })
    }

    /// The device the streams run on.
    pub fn device(&self) -> &D {
        &self.shared.device
    }

    /// Worker slots (not counting the default stream).
    pub fn worker_slots(&self) -> usize {
        self.shared.workers
    }

    /// Worker slots leased right now (a snapshot).
    pub fn leased_slots(&self) -> usize {
        self.shared.leased.leased_count()
    }

    /// The default stream (index 0).
    pub fn default_stream(&self) -> Stream<D> {
        Stream {
            pool: self.shared,
            index: 0,
        }
    }

    /// Stream `index` (0 = default, 1..=worker_slots). Does not lease it and does not create it; creation
    /// happens on first use, lock-free afterwards (fix 4).
    pub fn stream(&self, index: usize) -> Result<Stream<D>> {
        if index > self.shared.workers {
            return Err(RuntimeError::InvalidConfig {
                name: "stream index",
                value: index.to_string(),
                allowed: "0 (default) to the pool's worker_slots",
            });
        }
        Ok(Stream {
            pool: self.shared,
            index: index as u32,
        })
    }

    /// This thread's current stream: the one set with [`set_current_stream`](Self::set_current_stream),
    /// else the stream this thread leased, else a newly leased one (or the default stream on the main
    /// thread). A thread-local read after the first call (fix 3).
    #[inline]
    pub fn current_stream(&self) -> Result<Stream<D>> {
        let (pool, index) = LAST_CURRENT.with(Cell::get);
        if pool == self.shared.id {
            return Ok(Stream {
                pool: self.shared,
                index,
            });
        }
        self.current_stream_slow()
    }

    #[cold]
    fn current_stream_slow(&self) -> Result<Stream<D>> {
        write_back_last_current();
        let index = with_thread_entry(self.shared.id, |entry| -> Result<u32> {
            if let Some(index) = entry.current {
                return Ok(index);
            }
            let index = if self.shared.main_thread_uses_default
                && std::thread::current().name() == Some("main")
            {
                0
            } else {
                let lease = self.shared.lease_slot()?;
                let index = lease.index;
                entry.lease = Some(lease);
                index
            };
            entry.current = Some(index);
            Ok(index)
        })?;
        LAST_CURRENT.with(|c| c.set((self.shared.id, index)));
        Ok(Stream {
            pool: self.shared,
            index,
        })
    }

    /// Makes `stream` this thread's current stream until the guard is dropped (a thread-local write; fix 3).
    pub fn set_current_stream(&self, stream: Stream<D>) -> CurrentStreamGuard {
        assert_eq!(
            stream.pool.id, self.shared.id,
            "invariant violated: stream belongs to another pool"
        );
        // Fast path: this pool is the one `LAST_CURRENT` names, so it holds the current index (the
        // thread entry may be stale; see `LAST_CURRENT`). Otherwise the entry is authoritative.
        let (last_pool, last_index) = LAST_CURRENT.with(Cell::get);
        let previous = if last_pool == self.shared.id {
            Some(last_index)
        } else {
            write_back_last_current();
            with_thread_entry(self.shared.id, |entry| entry.current)
        };
        LAST_CURRENT.with(|c| c.set((self.shared.id, stream.index)));
        CurrentStreamGuard {
            pool_id: self.shared.id,
            previous,
            _not_send: std::marker::PhantomData,
        }
    }

    /// Leases a worker slot explicitly, for as long as the returned lease lives (the engine's workers
    /// do this). Follows the exhaustion policy.
    pub fn lease(&self) -> Result<StreamLease<D>> {
        let lease = self.shared.lease_slot()?;
        Ok(StreamLease {
            stream: Stream {
                pool: self.shared,
                index: lease.index,
            },
            lease: Some(lease),
        })
    }

    /// Waits for all work on every stream created so far. Streams being created meanwhile are not waited
    /// for (they have no work yet) and their creation is not blocked (fix 4).
    pub fn synchronize_all(&self) -> Result<()> {
        let mut first_error = None;
        for slot in self.shared.slots.iter() {
            if let Some(raw) = slot.stream.get() {
                if let Err(e) = self.shared.device.synchronize(raw) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The exhaustion policy in force.
    pub fn exhaustion_policy(&self) -> ExhaustionPolicy {
        *self.shared.exhaustion.lock()
    }

    /// Changes the exhaustion policy (read only when all slots are leased).
    pub fn set_exhaustion_policy(&self, policy: ExhaustionPolicy) {
        *self.shared.exhaustion.lock() = policy;
    }

    /// The commit policy in force.
    pub fn commit_policy(&self) -> CommitPolicy {
        CommitPolicy::from_u8(self.shared.commit.load(Ordering::Relaxed))
    }

    /// Changes the commit policy for work encoded from now on.
    pub fn set_commit_policy(&self, policy: CommitPolicy) {
        // Relaxed: each op reads the policy once; there is no data that must be ordered with it.
        self.shared.commit.store(policy as u8, Ordering::Relaxed);
    }
}

impl<D: Device> Drop for StreamPool<D> {
    fn drop(&mut self) {
        // Release pairs with the Acquire in `Stream::raw`: a thread that sees `closed` stops using streams.
        self.shared.closed.store(true, Ordering::Release);
        for slot in self.shared.slots.iter() {
            if let Some(raw) = slot.stream.get() {
                self.shared.device.shutdown_stream(raw);
            }
        }
        // Wake waiters so they fail fast instead of waiting out their timeout.
        let _lock = self.shared.wait_lock.lock();
        self.shared.wait_cv.notify_all();
    }
}

impl<D: Device> PoolShared<D> {
    fn lease_slot(&'static self) -> Result<ErasedLease> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.dropped());
        }
        if let Some(bit) = self.leased.lease() {
            return Ok(self.exclusive(bit));
        }
        self.lease_exhausted()
    }

    fn exclusive(&'static self, bit: usize) -> ErasedLease {
        self.slots[bit + 1].users.fetch_add(1, Ordering::Relaxed);
        ErasedLease {
            owner: self,
            index: bit as u32 + 1,
            shared: false,
        }
    }

    #[cold]
    fn lease_exhausted(&'static self) -> Result<ErasedLease> {
        let policy = *self.exhaustion.lock();
        match policy {
            ExhaustionPolicy::Error => Err(self.exhausted(policy, "no free slot".into())),
            ExhaustionPolicy::Share => {
                let index = self.share_cursor.fetch_add(1, Ordering::Relaxed) % self.workers + 1;
                self.slots[index].users.fetch_add(1, Ordering::Relaxed);
                Ok(ErasedLease {
                    owner: self,
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

/// The part of a lease that does not depend on the backend, so thread-locals can hold it.
struct ErasedLease {
    owner: &'static dyn LeaseOwner,
    index: u32,
    /// Leased under `share` (does not own a bit).
    shared: bool,
}

impl Drop for ErasedLease {
    fn drop(&mut self) {
        self.owner.release(self.index, self.shared);
    }
}

trait LeaseOwner: Sync {
    fn release(&self, index: u32, shared: bool);
}

impl<D: Device> LeaseOwner for PoolShared<D> {
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

/// An explicitly leased worker stream; the slot is returned (after the stream drains) when dropped.
/// Releasing twice ([`release`](Self::release) then drop) is harmless.
pub struct StreamLease<D: Device> {
    stream: Stream<D>,
    lease: Option<ErasedLease>,
}

impl<D: Device> StreamLease<D> {
    /// The leased stream.
    pub fn stream(&self) -> Stream<D> {
        self.stream
    }

    /// Returns the slot now (after draining the stream). Later calls and the drop do nothing.
    pub fn release(&mut self) {
        self.lease.take();
    }

    /// Whether this lease shares its stream with other leases (`share` policy).
    pub fn is_shared(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.shared)
    }
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
                with_thread_entry(self.pool_id, |entry| entry.current = previous);
            }
        }
    }
}

/// Per-thread, per-pool state: the current stream and this thread's implicit lease.
struct ThreadEntry {
    pool_id: u64,
    current: Option<u32>,
    lease: Option<ErasedLease>,
}

thread_local! {
    /// (pool id, current index) of the pool this thread used last: the fast path of `current_stream`
    /// and `set_current_stream`. For the pool it names it is authoritative — that pool's entry in
    /// `THREAD_ENTRIES` may be stale until `write_back_last_current` runs, which every switch to another
    /// pool does first. (0, _) names no pool: look in `THREAD_ENTRIES`.
    static LAST_CURRENT: Cell<(u64, u32)> = const { Cell::new((0, 0)) };
    /// One entry per pool this thread used. Dropped at thread exit, which returns the leases.
    static THREAD_ENTRIES: RefCell<Vec<ThreadEntry>> = const { RefCell::new(Vec::new()) };
}

/// Stores the current index that `LAST_CURRENT` holds into its pool's thread entry, before
/// `LAST_CURRENT` is pointed at another pool.
#[cold]
fn write_back_last_current() {
    let (pool, index) = LAST_CURRENT.with(Cell::get);
    if pool != 0 {
        with_thread_entry(pool, |entry| entry.current = Some(index));
    }
}

fn with_thread_entry<R>(pool_id: u64, f: impl FnOnce(&mut ThreadEntry) -> R) -> R {
    THREAD_ENTRIES.with(|entries| {
        let mut entries = entries.borrow_mut();
        let position = match entries.iter().position(|e| e.pool_id == pool_id) {
            Some(p) => p,
            None => {
                entries.push(ThreadEntry {
                    pool_id,
                    current: None,
                    lease: None,
                });
                entries.len() - 1
            }
        };
        f(&mut entries[position])
    })
}

impl<D: Device> Stream<D> {
    /// The stream's index in its pool (0 = default).
    #[inline]
    pub fn index(&self) -> usize {
        self.index as usize
    }

    /// A process-unique identity.
    #[inline]
    pub fn id(&self) -> StreamId {
        StreamId(self.pool.id << 8 | u64::from(self.index))
    }

    /// The device this stream runs on.
    #[inline]
    pub fn device(&self) -> &D {
        &self.pool.device
    }

    /// The native stream, created on first use (lock-free once created; fix 4). Fails with
    /// [`RuntimeError::Dropped`] after the pool is dropped.
    #[inline]
    pub fn raw(&self) -> Result<&'static D::Stream> {
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
        policy.continues(
            self.index == 0,
            self.pool.slots[self.index as usize]
                .users
                .load(Ordering::Relaxed),
        )
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
        self.pool.slots[self.index as usize]
            .users
            .load(Ordering::Relaxed)
    }
}
