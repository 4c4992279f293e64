//! [`run_workers`]: N worker threads, started together, warmed up, measured for a fixed time, and
//! parked so the scenario can read figures before anything is torn down.
//!
//! # Phases
//!
//! 1. Each thread builds its [`Worker`] (leases a stream, fills caches …) with the scenario's
//!    [`MakeWorker`], then waits at the start gate until every thread is ready. Every thread holds the
//!    one `MakeWorker` through an `Arc` and its worker may borrow from it — a stream pool and the
//!    stream handles and leases that borrow the pool, an allocator — so a worker touches no reference
//!    count per op.
//! 2. *Warm-up*: workers run batches that are not counted.
//! 3. *Measure*: a batch that starts in this phase is counted, even if it ends after the phase. A
//!    thread's rate is its counted ops over its measured span: from the start of its first counted
//!    batch to the moment it sees the phase end (which is right after its last counted batch), two
//!    clock reads per thread in all. The total throughput is the sum of the threads' rates. Latency is
//!    sampled: every [`SAMPLE_EVERY`]th counted batch is timed and `batch time / ops` is recorded in
//!    the thread's histogram, weighted by the ops — so a batch of many cheap ops costs one clock read
//!    pair among several batches, and the clock does not distort what it measures.
//! 4. *Parked*: every thread has stopped and waits with its worker still alive; the scenario's
//!    [`PhaseHooks::workers_parked`] reads figures (bytes held in thread caches …). Then each thread
//!    drops its worker and exits, so its thread-locals (stream lease, allocator thread cache) are gone
//!    when [`run_workers`] returns — threads are spawned with `std::thread::spawn` and joined, because
//!    `std::thread::scope` may return before a thread's thread-locals are destroyed.
//!
//! A worker that fails or panics stops the run: the gates open, every thread returns, and the first
//! failure is the error.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};

use super::latency::LatencyHistogram;
use super::Timing;
use crate::error::BenchError;

/// One thread's workload.
pub trait Worker {
    /// Runs one batch of ops and returns how many ran. `measuring` says whether this batch counts,
    /// for workers that record figures of their own.
    fn batch(&mut self, measuring: bool) -> Result<u64, BenchError>;
}

/// Builds each thread's [`Worker`], on that thread (module doc, phase 1). Shared by every worker
/// thread through an `Arc`; a worker may borrow from it for as long as it lives.
///
/// [`from_fn`] makes one of a closure, for workers that borrow nothing.
pub trait MakeWorker: Send + Sync + 'static {
    /// The worker, borrowing from `self`.
    type Worker<'a>: Worker
    where
        Self: 'a;

    /// The worker of thread `index` (0-based).
    fn make(&self, index: usize) -> Result<Self::Worker<'_>, BenchError>;
}

/// A [`MakeWorker`] of a closure that builds thread `index`'s worker (see [`from_fn`]).
pub struct FromFn<F>(F);

/// A [`MakeWorker`] that calls `make(thread_index)`: for workers that borrow nothing from it.
pub fn from_fn<W, F>(make: F) -> FromFn<F>
where
    W: Worker,
    F: Fn(usize) -> Result<W, BenchError> + Send + Sync + 'static,
{
    FromFn(make)
}

impl<W, F> MakeWorker for FromFn<F>
where
    W: Worker,
    F: Fn(usize) -> Result<W, BenchError> + Send + Sync + 'static,
{
    type Worker<'a>
        = W
    where
        F: 'a;

    fn make(&self, index: usize) -> Result<W, BenchError> {
        (self.0)(index)
    }
}

/// Points at which a scenario reads figures; each runs on the thread that called [`run_workers`].
pub trait PhaseHooks {
    /// Just before the measured phase starts.
    fn measure_starting(&mut self) {}
    /// Just after the measured phase has been told to stop (batches in flight may still finish).
    fn measure_ended(&mut self) {}
    /// Every worker has stopped and is parked, its worker still alive.
    fn workers_parked(&mut self) {}
}

/// No hooks.
pub struct NoHooks;
impl PhaseHooks for NoHooks {}

/// What the workers of one repetition did in the measured phase.
pub struct Measured {
    /// Ops counted.
    pub ops: u64,
    /// Sum over threads of ops / span (module doc).
    pub ops_per_sec: f64,
    /// Per-op latency (batch time / ops), weighted by ops.
    pub latency: LatencyHistogram,
}

/// Every how many counted batches one is timed for the latency histogram.
pub const SAMPLE_EVERY: u64 = 4;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

#[derive(Default)]
struct GateState {
    ready: usize,
    parked: usize,
    started: bool,
    released: bool,
    failure: Option<String>,
}

/// The phase flag and the two gates.
struct Control {
    /// WARMUP, MEASURE or STOP. Read Relaxed by workers before each batch: it carries no data, only
    /// "which phase this batch belongs to", and a late view only moves one batch across a boundary.
    phase: CachePadded<AtomicU8>,
    gates: Mutex<GateState>,
    changed: Condvar,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            phase: CachePadded::new(AtomicU8::new(WARMUP)),
            gates: Mutex::default(),
            changed: Condvar::new(),
        }
    }
}

impl Control {
    /// Counts this thread in (`count`) and waits until `open` or a failure.
    fn arrive(
        &self,
        count: fn(&mut GateState) -> &mut usize,
        open: fn(&GateState) -> bool,
    ) -> Result<(), BenchError> {
        let mut gates = self.gates.lock();
        *count(&mut gates) += 1;
        self.changed.notify_all();
        while !open(&gates) && gates.failure.is_none() {
            self.changed.wait(&mut gates);
        }
        match &gates.failure {
            Some(_) => Err(BenchError::Worker("stopped: another worker failed".into())),
            None => Ok(()),
        }
    }

    /// Waits until `done` or a failure (returned as the error).
    fn wait_for(&self, done: impl Fn(&GateState) -> bool) -> Result<(), BenchError> {
        let mut gates = self.gates.lock();
        while !done(&gates) && gates.failure.is_none() {
            self.changed.wait(&mut gates);
        }
        match &gates.failure {
            Some(failure) => Err(BenchError::Worker(failure.clone())),
            None => Ok(()),
        }
    }

    fn open(&self, set: impl FnOnce(&mut GateState)) {
        set(&mut self.gates.lock());
        self.changed.notify_all();
    }

    /// Records the first failure and opens every gate.
    fn fail(&self, message: String) {
        self.phase.store(STOP, Ordering::Relaxed);
        self.open(|gates| {
            gates.failure.get_or_insert(message);
        });
    }
}

/// One thread's measured phase.
#[derive(Default)]
struct ThreadMeasure {
    ops: u64,
    span: Option<(Instant, Instant)>,
    latency: LatencyHistogram,
}

/// Runs `threads` workers built by `make_worker.make(thread_index)` on their own threads through the
/// phases of the module doc. `make_worker` (and so whatever the workers borrow from it) is dropped
/// when every thread has been joined, before this returns.
pub fn run_workers<M: MakeWorker>(
    threads: usize,
    timing: &Timing,
    make_worker: M,
    hooks: &mut dyn PhaseHooks,
) -> Result<Measured, BenchError> {
    let control = Arc::new(Control::default());
    let make_worker = Arc::new(make_worker);
    let handles: Vec<_> = (0..threads)
        .map(|index| {
            let (control, make_worker) = (control.clone(), make_worker.clone());
            std::thread::Builder::new()
                .name(format!("bench-worker-{index}"))
                .spawn(move || {
                    let run = AssertUnwindSafe(|| worker_thread(index, &*make_worker, &control));
                    let result = catch_unwind(run).unwrap_or_else(|panic| {
                        Err(BenchError::Worker(format!(
                            "worker {index} panicked: {}",
                            panic_message(panic.as_ref())
                        )))
                    });
                    if let Err(e) = &result {
                        control.fail(e.to_string());
                    }
                    result
                })
                .map_err(|e| BenchError::Worker(format!("cannot spawn worker {index}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let outcome = drive(threads, timing, &control, hooks);
    if outcome.is_err() {
        control.fail("stopped by the harness".into());
    }
    let mut measured = Measured {
        ops: 0,
        ops_per_sec: 0.0,
        latency: LatencyHistogram::default(),
    };
    let mut first_error = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(thread)) => {
                measured.ops += thread.ops;
                if let Some((start, end)) = thread.span {
                    let seconds = (end - start).as_secs_f64();
                    if seconds > 0.0 {
                        measured.ops_per_sec += thread.ops as f64 / seconds;
                    }
                }
                measured.latency.merge(&thread.latency);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(BenchError::Worker("a worker thread died".into()));
            }
        }
    }
    // The gates' first failure names the cause; a thread's own error may only say it was stopped.
    outcome?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(measured),
    }
}

/// The calling thread's part: open the start gate, time the phases, run the hooks.
fn drive(
    threads: usize,
    timing: &Timing,
    control: &Control,
    hooks: &mut dyn PhaseHooks,
) -> Result<(), BenchError> {
    control.wait_for(|g| g.ready == threads)?;
    control.open(|g| g.started = true);
    std::thread::sleep(timing.warmup);
    hooks.measure_starting();
    control.phase.store(MEASURE, Ordering::Relaxed);
    std::thread::sleep(timing.measure);
    control.phase.store(STOP, Ordering::Relaxed);
    hooks.measure_ended();
    control.wait_for(|g| g.parked == threads)?;
    hooks.workers_parked();
    control.open(|g| g.released = true);
    Ok(())
}

fn worker_thread<M: MakeWorker>(
    index: usize,
    make_worker: &M,
    control: &Control,
) -> Result<ThreadMeasure, BenchError> {
    let mut worker = make_worker.make(index)?;
    control.arrive(|g| &mut g.ready, |g| g.started)?;
    let mut measure = ThreadMeasure::default();
    let mut first_start = None;
    let mut counted_batches = 0u64;
    loop {
        let phase = control.phase.load(Ordering::Relaxed);
        if phase == STOP {
            if let Some(first) = first_start {
                measure.span = Some((first, Instant::now()));
            }
            break;
        }
        let measuring = phase == MEASURE;
        let sampled = measuring && counted_batches % SAMPLE_EVERY == 0;
        let start = (sampled || (measuring && first_start.is_none())).then(Instant::now);
        if measuring {
            first_start = first_start.or(start);
        }
        // One call site for both phases, so the worker's code is compiled (and inlined) once.
        let ops = worker.batch(measuring)?;
        if measuring {
            counted_batches += 1;
            measure.ops += ops;
            if let (true, Some(start), 1..) = (sampled, start, ops) {
                let per_op_ps = start.elapsed().as_nanos() as u64 * 1000 / ops;
                measure.latency.record(per_op_ps, ops);
            }
        }
    }
    control.arrive(|g| &mut g.parked, |g| g.released)?;
    drop(worker);
    Ok(measure)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct Counter(u64);
    impl Worker for Counter {
        fn batch(&mut self, _measuring: bool) -> Result<u64, BenchError> {
            self.0 += 1;
            std::hint::black_box(&self.0);
            Ok(4)
        }
    }

    const SHORT: Timing = Timing {
        warmup: Duration::from_millis(2),
        measure: Duration::from_millis(10),
    };

    #[test]
    fn counts_ops_and_runs_hooks_in_order() {
        #[derive(Default)]
        struct Order(Vec<&'static str>);
        impl PhaseHooks for Order {
            fn measure_starting(&mut self) {
                self.0.push("start");
            }
            fn measure_ended(&mut self) {
                self.0.push("end");
            }
            fn workers_parked(&mut self) {
                self.0.push("parked");
            }
        }
        let mut order = Order::default();
        let measured = run_workers(3, &SHORT, from_fn(|_| Ok(Counter(0))), &mut order).unwrap();
        assert!(measured.ops > 0 && measured.ops % 4 == 0);
        assert!(measured.ops_per_sec > 0.0);
        let sampled = measured.latency.count();
        assert!(
            sampled > 0 && sampled <= measured.ops / SAMPLE_EVERY + 12,
            "{sampled}"
        );
        assert_eq!(order.0, ["start", "end", "parked"]);
    }

    #[test]
    fn a_failing_worker_stops_the_run_with_its_message() {
        struct Failing;
        impl Worker for Failing {
            fn batch(&mut self, _measuring: bool) -> Result<u64, BenchError> {
                Err(BenchError::Worker("no slot".into()))
            }
        }
        let err = run_workers(
            4,
            &SHORT,
            from_fn(|i| {
                if i == 2 {
                    Err(BenchError::Worker("setup failed".into()))
                } else {
                    Ok(Failing)
                }
            }),
            &mut NoHooks,
        )
        .err()
        .expect("the run fails");
        let message = err.to_string();
        assert!(
            message.contains("setup failed") || message.contains("no slot"),
            "{message}"
        );

        let panicking = run_workers(
            2,
            &SHORT,
            from_fn(|i| {
                assert_ne!(i, 1, "boom");
                Ok(Counter(0))
            }),
            &mut NoHooks,
        );
        assert!(panicking.err().unwrap().to_string().contains("boom"));
    }

    #[test]
    fn workers_borrow_their_maker_and_the_maker_is_gone_when_the_run_returns() {
        /// Each worker borrows its thread's slot of the maker.
        struct Slots(Arc<Vec<std::sync::atomic::AtomicU64>>);
        struct Borrowing<'a>(&'a std::sync::atomic::AtomicU64);
        impl Worker for Borrowing<'_> {
            fn batch(&mut self, _measuring: bool) -> Result<u64, BenchError> {
                self.0.fetch_add(1, Ordering::Relaxed);
                Ok(1)
            }
        }
        impl MakeWorker for Slots {
            type Worker<'a> = Borrowing<'a>;
            fn make(&self, index: usize) -> Result<Borrowing<'_>, BenchError> {
                Ok(Borrowing(&self.0[index]))
            }
        }
        let slots: Arc<Vec<_>> = Arc::new((0..2).map(|_| Default::default()).collect());
        let measured = run_workers(2, &SHORT, Slots(slots.clone()), &mut NoHooks).unwrap();
        assert_eq!(Arc::strong_count(&slots), 1, "the maker was dropped");
        let batches: u64 = slots.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        assert!(batches >= measured.ops && slots.iter().all(|s| s.load(Ordering::Relaxed) > 0));
    }
}
