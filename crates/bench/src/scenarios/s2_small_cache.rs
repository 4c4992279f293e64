//! S2 — the small-block cache: LIFO bursts of 4–256 KiB buffers, some freed by another thread
//! (design fix 1, "per-thread caches for small blocks … no hoarding").
//!
//! An op is one buffer's alloc and its free. Each batch allocates a burst of 1–16 buffers
//! (log-uniform 4–256 KiB, all small-pool sizes) on the thread's stream and frees them in reverse
//! order (LIFO, as nested scratch buffers are). A fixed share of them — 0 %, 10 % or 50 %, one case
//! each — is instead handed to the next thread (through a mutex-guarded inbox, the same for both
//! arms), which frees it at the start of its next batch: a cross-thread, cross-stream free. At one
//! thread the next thread is the thread itself.
//!
//! An inbox holds at most [`INBOX_CAPACITY`] buffers. Without that bound a descheduled receiver lets
//! its sender's live buffers pile up without limit, and peak reserved would measure the backlog, not
//! the allocator. A sender that finds the inbox full waits for room — freeing what was handed to it
//! meanwhile, so two full inboxes cannot block each other — for up to [`HANDOVER_PATIENCE`], and
//! only then frees the buffer itself. The back-pressure matters: without it the arm whose cross-thread
//! frees are slower than its local ones silently does fewer of them. The share actually handed over
//! is reported ("freed by other"); it falls short of the case's share only when receivers are
//! off-CPU for longer than the patience (more runnable threads than cores, as on a 2-core machine).
//!
//! Reported besides throughput and latency: hit rate, bytes held in thread caches when the workers
//! stop (always 0 before: it has none), raw allocations, and peak reserved bytes, whose after/before
//! ratio must stay within +10 % (no hoarding).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_runtime::{CachingAllocator, CommitPolicy, Stream, StreamLease};
use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use super::{AllocFixture, AllocShared, Ctx, Rng, STANDARD_THREADS};
use crate::before::allocator::BeforeAllocator;
use crate::device::BenchDevice;
use crate::error::BenchError;
use crate::harness::workers::{run_workers, MakeWorker, PhaseHooks, Worker};
use crate::harness::{CaseSpec, Extra, RepResult, Role, Timing, Unit, AFTER, BEFORE};
use crate::subjects::AllocatorUnderTest;

/// The longest burst.
const MAX_BURST: u64 = 16;
/// Length of each thread's precomputed size sequence; a power of two.
const PLAN_LEN: usize = 4096;
/// The most buffers waiting in one inbox (four bursts' worth; module doc).
const INBOX_CAPACITY: usize = 4 * MAX_BURST as usize;
/// How long a sender waits for room in a full inbox before freeing the buffer itself (module doc).
const HANDOVER_PATIENCE: Duration = Duration::from_millis(1);

/// Buffers handed from one thread to another, one inbox per thread.
type Inboxes<B> = Arc<[CachePadded<Mutex<Vec<B>>>]>;

/// Runs S2a–S2c.
pub fn run(ctx: &mut Ctx) -> Result<(), BenchError> {
    let threads = ctx.sweep(&STANDARD_THREADS);
    let timing = ctx.timing;
    for (id, cross_percent) in [("S2a", 0), ("S2b", 10), ("S2c", 50)] {
        let spec = CaseSpec {
            id,
            title: format!(
                "small-block cache, LIFO bursts of 4-256 KiB, {cross_percent} % freed by another thread"
            ),
            op: "alloc + free of one buffer",
            latency_of: "per op, averaged over sampled bursts",
            arms: vec![BEFORE, AFTER],
            threads: threads.clone(),
        };
        ctx.run_case(spec, |arm, threads| match arm.role {
            Role::Before => {
                repetition::<BeforeAllocator<BenchDevice>>(cross_percent, threads, &timing)
            }
            Role::After => {
                repetition::<CachingAllocator<BenchDevice>>(cross_percent, threads, &timing)
            }
        })?;
    }
    Ok(())
}

/// Reads the bytes held in thread caches while the workers are parked (their caches still alive).
struct ThreadCacheProbe<A> {
    allocator: Arc<A>,
    thread_cached: i64,
}

impl<A: AllocatorUnderTest> PhaseHooks for ThreadCacheProbe<A> {
    fn workers_parked(&mut self) {
        self.thread_cached = self.allocator.stats().thread_cached_bytes;
    }
}

fn repetition<A: AllocatorUnderTest>(
    cross_percent: u64,
    threads: usize,
    timing: &Timing,
) -> Result<RepResult, BenchError> {
    let fixture = AllocFixture::<A>::new(CommitPolicy::Auto)?;
    let inboxes: Inboxes<A::Buffer> = (0..threads).map(|_| CachePadded::default()).collect();
    let handoffs = Arc::new(Handoffs::default());
    let mut probe = ThreadCacheProbe {
        allocator: fixture.allocator.clone(),
        thread_cached: 0,
    };
    let bursts = Bursts {
        shared: fixture.shared(),
        inboxes: inboxes.clone(),
        handoffs: handoffs.clone(),
        threads,
        cross_percent,
    };
    let measured = run_workers(threads, timing, bursts, &mut probe)?;
    // Buffers still in transit are freed here, before the leak checks.
    drop(inboxes);
    let thread_cached = probe.thread_cached;
    drop(probe);
    let stats = fixture.allocator.stats();
    Ok(RepResult {
        ops_per_sec: measured.ops_per_sec,
        latency: measured.latency,
        extras: vec![
            Extra::median("hit rate", stats.hit_rate(), Unit::Percent),
            Extra::median("freed by other", handoffs.share(), Unit::Percent),
            Extra::median("in thread caches", thread_cached.max(0) as f64, Unit::Bytes),
            Extra::median("raw allocs", stats.raw_allocs as f64, Unit::Count),
            Extra::median(
                "peak reserved",
                stats.peak_reserved_bytes as f64,
                Unit::Bytes,
            ),
        ],
        checks: fixture.teardown(),
    })
}

/// Frees in the measured phase, and how many of them were handed to another thread.
#[derive(Default)]
struct Handoffs {
    frees: AtomicU64,
    handed_over: AtomicU64,
}

impl Handoffs {
    /// The share of frees handed to another thread.
    fn share(&self) -> f64 {
        let frees = self.frees.load(Ordering::Relaxed);
        if frees == 0 {
            return 0.0;
        }
        self.handed_over.load(Ordering::Relaxed) as f64 / frees as f64
    }
}

/// Builds the burst workers; they borrow its allocator, pool, inboxes and tallies.
struct Bursts<A: AllocatorUnderTest> {
    shared: AllocShared<A>,
    inboxes: Inboxes<A::Buffer>,
    handoffs: Arc<Handoffs>,
    threads: usize,
    cross_percent: u64,
}

impl<A: AllocatorUnderTest> MakeWorker for Bursts<A> {
    type Worker<'a>
        = BurstWorker<'a, A>
    where
        Self: 'a;

    fn make(&self, index: usize) -> Result<BurstWorker<'_, A>, BenchError> {
        let lease = self.shared.streams.lease()?;
        Ok(BurstWorker {
            stack: Vec::with_capacity(MAX_BURST as usize),
            inboxes: &self.inboxes,
            me: index,
            next_thread: (index + 1) % self.threads,
            cross_percent: self.cross_percent,
            sizes: Rng::new(0x52 + index as u64).log_uniform_sizes(PLAN_LEN, 4 << 10, 256 << 10),
            next: 0,
            rng: Rng::new(0x5200 + index as u64),
            frees: 0,
            handed_over: 0,
            handoffs: &self.handoffs,
            allocator: &self.shared.allocator,
            stream: lease.stream(),
            _lease: lease,
        })
    }
}

/// One thread: LIFO bursts, some frees handed to the next thread (module doc).
struct BurstWorker<'a, A: AllocatorUnderTest> {
    // Field order is drop order: buffers are freed before the stream's lease is returned.
    stack: Vec<A::Buffer>,
    inboxes: &'a [CachePadded<Mutex<Vec<A::Buffer>>>],
    me: usize,
    next_thread: usize,
    cross_percent: u64,
    sizes: Vec<usize>,
    next: usize,
    rng: Rng,
    /// This thread's measured frees and hand-overs, added to `handoffs` when the worker drops.
    frees: u64,
    handed_over: u64,
    handoffs: &'a Handoffs,
    allocator: &'a A,
    stream: Stream<'a, BenchDevice>,
    _lease: StreamLease<'a, BenchDevice>,
}

impl<A: AllocatorUnderTest> Worker for BurstWorker<'_, A> {
    fn batch(&mut self, measuring: bool) -> Result<u64, BenchError> {
        self.free_handed_to_me();
        let burst = 1 + self.rng.below(MAX_BURST);
        for _ in 0..burst {
            let bytes = self.sizes[self.next % PLAN_LEN];
            self.next += 1;
            self.stack.push(self.allocator.alloc(bytes, self.stream)?);
        }
        if measuring {
            self.frees += burst;
        }
        while let Some(buffer) = self.stack.pop() {
            if self.rng.below(100) < self.cross_percent {
                match self.hand_over(buffer) {
                    None => self.handed_over += u64::from(measuring),
                    Some(refused) => drop(refused),
                }
            } else {
                drop(buffer);
            }
        }
        Ok(burst)
    }
}

impl<A: AllocatorUnderTest> BurstWorker<'_, A> {
    /// Frees what other threads handed over, outside the inbox lock.
    fn free_handed_to_me(&mut self) {
        let handed_to_me = std::mem::take(&mut *self.inboxes[self.me].lock());
        drop(handed_to_me);
    }

    /// Puts `buffer` in the next thread's inbox, waiting for room up to [`HANDOVER_PATIENCE`]; hands
    /// the buffer back if there was none.
    fn hand_over(&mut self, buffer: A::Buffer) -> Option<A::Buffer> {
        let mut deadline = None;
        loop {
            {
                let mut inbox = self.inboxes[self.next_thread].lock();
                if inbox.len() < INBOX_CAPACITY {
                    inbox.push(buffer);
                    return None;
                }
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + HANDOVER_PATIENCE);
            if Instant::now() >= deadline {
                return Some(buffer);
            }
            self.free_handed_to_me();
            std::thread::yield_now();
        }
    }
}

impl<A: AllocatorUnderTest> Drop for BurstWorker<'_, A> {
    fn drop(&mut self) {
        self.handoffs.frees.fetch_add(self.frees, Ordering::Relaxed);
        self.handoffs
            .handed_over
            .fetch_add(self.handed_over, Ordering::Relaxed);
    }
}
