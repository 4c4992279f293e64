//! S5 — slot leasing (design fix 5): the worker-slot free list under three loads. Every case marks a
//! slot held from the moment a thread gets it until just before it gives it back ([`SlotFlags`]), so
//! a slot handed to two threads at once is caught, and checks at the end that every slot came back.
//!
//! - **S5a, lease loop**: each thread leases a slot explicitly and releases it, in a loop (the seed's
//!   31 slots, so up to 16 threads never wait).
//! - **S5b, thread churn**: 20,000 short-lived threads, at most 64 alive, each asking for its current
//!   stream once (an implicit lease, returned when the thread exits) and touching it. With 31 slots
//!   and 64 threads, half of them wait (`wait:10000`). Throughput is threads per second; latency is
//!   the time from a thread's start to having its stream.
//! - **S5c, oversubscription**: 32 and 48 threads wanting 31 slots under `wait:5000`: each leases,
//!   holds the slot for a short piece of work (about a microsecond), and releases. Latency is the
//!   wait for a slot; a timeout fails the run.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_runtime::{ExhaustionPolicy, RuntimeError, StreamPool};
use parking_lot::Mutex;

use super::s4_stream_lookup::SEED_WORKER_SLOTS;
use super::{Ctx, SlotFlags, STANDARD_THREADS};
use crate::before::stream_pool::BeforeStreamPool;
use crate::device::{bench_device, BenchDevice};
use crate::error::BenchError;
use crate::harness::latency::LatencyHistogram;
use crate::harness::workers::{from_fn, run_workers, NoHooks, Worker};
use crate::harness::{CaseSpec, Check, Extra, RepResult, Role, Timing, Unit, AFTER, BEFORE};
use crate::subjects::PoolUnderTest;

/// Lease+release pairs per timed batch in S5a.
const LEASES_PER_BATCH: u64 = 16;
/// Threads alive at once in S5b.
const CHURN_ALIVE: usize = 64;
/// How long S5b's threads may wait for a slot.
const CHURN_WAIT: Duration = Duration::from_secs(10);
/// How long S5c's threads may wait for a slot.
const CONTENDED_WAIT: Duration = Duration::from_secs(5);
/// Iterations of the short piece of work an S5c thread does while holding its slot.
const HOLD_ITERATIONS: u64 = 500;

/// Runs S5a–S5c.
pub fn run(ctx: &mut Ctx) -> Result<(), BenchError> {
    let timing = ctx.timing;
    let spec = CaseSpec {
        id: "S5a",
        title: "slot leasing, lease + release loop, 31 slots".into(),
        op: "lease + release",
        latency_of: "per op, sampled batches of 16",
        arms: vec![BEFORE, AFTER],
        threads: ctx.sweep(&STANDARD_THREADS),
    };
    ctx.run_case(spec, |arm, threads| match arm.role {
        Role::Before => lease_loop::<BeforeStreamPool<BenchDevice>>(threads, &timing),
        Role::After => lease_loop::<StreamPool<BenchDevice>>(threads, &timing),
    })?;

    let churn_threads = ctx.scaled(20_000, 2_000);
    let spec = CaseSpec {
        id: "S5b",
        title: format!(
            "slot leasing, thread churn: {churn_threads} short-lived threads, at most {CHURN_ALIVE} alive, 31 slots, wait:10000"
        ),
        op: "thread (start, get current stream, exit)",
        latency_of: "thread start to having its stream",
        arms: vec![BEFORE, AFTER],
        threads: vec![CHURN_ALIVE],
    };
    ctx.run_case(spec, |arm, _| match arm.role {
        Role::Before => churn::<BeforeStreamPool<BenchDevice>>(churn_threads),
        Role::After => churn::<StreamPool<BenchDevice>>(churn_threads),
    })?;

    let spec = CaseSpec {
        id: "S5c",
        title:
            "slot leasing, oversubscribed: more threads than the 31 slots, wait:5000, ~1 µs hold"
                .into(),
        op: "lease + hold + release",
        latency_of: "wait for a slot",
        arms: vec![BEFORE, AFTER],
        threads: if ctx.quick { vec![48] } else { vec![32, 48] },
    };
    ctx.run_case(spec, |arm, threads| match arm.role {
        Role::Before => oversubscribed::<BeforeStreamPool<BenchDevice>>(threads, &timing),
        Role::After => oversubscribed::<StreamPool<BenchDevice>>(threads, &timing),
    })
}

/// A pool with `slots` worker slots that waits up to `wait` when all are leased.
fn pool<P: PoolUnderTest>(slots: usize, wait: Duration) -> Result<Arc<P>, BenchError> {
    Ok(Arc::new(P::create(
        bench_device(),
        slots,
        ExhaustionPolicy::Wait(wait),
    )?))
}

/// The end-of-run checks every case makes.
fn slot_checks<P: PoolUnderTest>(pool: &P, flags: &SlotFlags) -> Vec<Check> {
    vec![
        flags.check(),
        Check::equal(
            "slots still leased after the run (lost)",
            pool.leased_slots(),
            0,
        ),
    ]
}

fn lease_loop<P: PoolUnderTest>(threads: usize, timing: &Timing) -> Result<RepResult, BenchError> {
    // The seed's 31 slots, or one per thread if more threads are asked for: S5a never waits.
    let slots = threads.clamp(SEED_WORKER_SLOTS, braid_runtime::MAX_WORKER_SLOTS);
    let pool = pool::<P>(slots, CONTENDED_WAIT)?;
    let flags = Arc::new(SlotFlags::new(braid_runtime::MAX_WORKER_SLOTS + 1));
    let (shared, shared_flags) = (pool.clone(), flags.clone());
    let measured = run_workers(
        threads,
        timing,
        from_fn(move |_| {
            Ok(LeaseLoop {
                pool: shared.clone(),
                flags: shared_flags.clone(),
            })
        }),
        &mut NoHooks,
    )?;
    Ok(RepResult {
        ops_per_sec: measured.ops_per_sec,
        latency: measured.latency,
        extras: Vec::new(),
        checks: slot_checks(&*pool, &flags),
    })
}

/// S5a's thread: lease, mark, unmark, release.
struct LeaseLoop<P> {
    pool: Arc<P>,
    flags: Arc<SlotFlags>,
}

impl<P: PoolUnderTest> Worker for LeaseLoop<P> {
    fn batch(&mut self, _measuring: bool) -> Result<u64, BenchError> {
        for _ in 0..LEASES_PER_BATCH {
            let lease = self.pool.lease()?;
            let index = P::lease_index(&lease);
            self.flags.acquire(index);
            self.flags.release(index);
            P::release(lease);
        }
        Ok(LEASES_PER_BATCH)
    }
}

/// What S5b's threads report back.
#[derive(Default)]
struct ChurnLog {
    waits: LatencyHistogram,
    failures: Vec<String>,
}

fn churn<P: PoolUnderTest>(total_threads: usize) -> Result<RepResult, BenchError> {
    let pool = pool::<P>(SEED_WORKER_SLOTS, CHURN_WAIT)?;
    let flags = Arc::new(SlotFlags::new(braid_runtime::MAX_WORKER_SLOTS + 1));
    let log = Arc::new(Mutex::new(ChurnLog::default()));
    let mut alive = VecDeque::with_capacity(CHURN_ALIVE);
    let join = |handle: std::thread::JoinHandle<()>| {
        handle
            .join()
            .map_err(|_| BenchError::Worker("a churn thread panicked".into()))
    };
    let start = Instant::now();
    for _ in 0..total_threads {
        if alive.len() == CHURN_ALIVE {
            join(alive.pop_front().expect("a thread is alive"))?;
        }
        let (pool, flags, log) = (pool.clone(), flags.clone(), log.clone());
        let handle = std::thread::Builder::new()
            .spawn(move || {
                let started = Instant::now();
                let slot = pool.current_index().and_then(|index| {
                    pool.current_raw()?;
                    Ok(index)
                });
                let waited = started.elapsed();
                match slot {
                    Ok(index) => {
                        flags.acquire(index);
                        flags.release(index);
                        log.lock().waits.record_duration(waited);
                    }
                    Err(e) => log.lock().failures.push(e.to_string()),
                }
                // The slot is returned when this thread's thread-locals are destroyed, before `join`.
            })
            .map_err(|e| BenchError::Worker(format!("cannot spawn a churn thread: {e}")))?;
        alive.push_back(handle);
    }
    for handle in alive {
        join(handle)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let log = std::mem::take(&mut *log.lock());
    let mut checks = slot_checks(&*pool, &flags);
    checks.push(Check {
        name: "every thread got a stream",
        passed: log.failures.is_empty(),
        detail: match log.failures.first() {
            None => format!("{total_threads} of {total_threads}"),
            Some(first) => format!("{} failed, first: {first}", log.failures.len()),
        },
    });
    Ok(RepResult {
        ops_per_sec: total_threads as f64 / elapsed,
        extras: vec![Extra::max(
            "max wait",
            log.waits.max_ns().unwrap_or(0.0),
            Unit::Nanos,
        )],
        latency: log.waits,
        checks,
    })
}

fn oversubscribed<P: PoolUnderTest>(
    threads: usize,
    timing: &Timing,
) -> Result<RepResult, BenchError> {
    // Always the seed's 31 slots: more threads than slots is the point.
    let pool = pool::<P>(SEED_WORKER_SLOTS, CONTENDED_WAIT)?;
    let flags = Arc::new(SlotFlags::new(SEED_WORKER_SLOTS + 1));
    let waits = Arc::new(Mutex::new(LatencyHistogram::default()));
    let timeouts = Arc::new(AtomicU64::new(0));
    let (shared, shared_flags, shared_waits, shared_timeouts) =
        (pool.clone(), flags.clone(), waits.clone(), timeouts.clone());
    let measured = run_workers(
        threads,
        timing,
        from_fn(move |_| {
            Ok(Contender {
                pool: shared.clone(),
                flags: shared_flags.clone(),
                waits: LatencyHistogram::default(),
                all_waits: shared_waits.clone(),
                timeouts: shared_timeouts.clone(),
            })
        }),
        &mut NoHooks,
    )?;
    let waits = std::mem::take(&mut *waits.lock());
    let timeouts = timeouts.load(Ordering::Relaxed);
    let mut checks = slot_checks(&*pool, &flags);
    checks.push(Check::equal("waits that timed out", timeouts, 0));
    Ok(RepResult {
        ops_per_sec: measured.ops_per_sec,
        extras: vec![
            Extra::max("max wait", waits.max_ns().unwrap_or(0.0), Unit::Nanos),
            Extra::max("timeouts", timeouts as f64, Unit::Count),
        ],
        latency: waits,
        checks,
    })
}

/// S5c's thread: wait for a slot, hold it briefly, release it.
struct Contender<P> {
    pool: Arc<P>,
    flags: Arc<SlotFlags>,
    /// This thread's measured waits, merged into `all_waits` when the worker drops.
    waits: LatencyHistogram,
    all_waits: Arc<Mutex<LatencyHistogram>>,
    timeouts: Arc<AtomicU64>,
}

impl<P: PoolUnderTest> Worker for Contender<P> {
    fn batch(&mut self, measuring: bool) -> Result<u64, BenchError> {
        let asked = Instant::now();
        let lease = match self.pool.lease() {
            Ok(lease) => lease,
            Err(RuntimeError::StreamSlotsExhausted { .. }) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                return Ok(0);
            }
            Err(e) => return Err(e.into()),
        };
        if measuring {
            self.waits.record_duration(asked.elapsed());
        }
        let index = P::lease_index(&lease);
        self.flags.acquire(index);
        let mut work = 0u64;
        for i in 0..HOLD_ITERATIONS {
            work = black_box(work.wrapping_mul(31).wrapping_add(i));
        }
        self.flags.release(index);
        P::release(lease);
        Ok(1)
    }
}

impl<P> Drop for Contender<P> {
    fn drop(&mut self) {
        self.all_waits.lock().merge(&self.waits);
    }
}
