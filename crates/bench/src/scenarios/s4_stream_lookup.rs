//! S4 — stream lookup (design fixes 3 and 4): three loops, one case each, every thread on its own
//! leased stream.
//!
//! - **S4a `current_stream`**: the thread's current stream, native and ready for work. Before: a
//!   thread-local index, then `get_stream(index)` under the creation mutex. After: a thread-local
//!   read, then the slot's lock-free `raw()`.
//! - **S4b `set_current_stream`**: make the thread's own stream current and restore the previous one
//!   (guard drop). Before: scan the stream array under the mutex to find the index. After: a
//!   thread-local write.
//! - **S4c `get_stream(i)`**: stream `i` (an existing one), native. Before: the creation mutex on
//!   every call. After: one Acquire load.
//!
//! The pool has the seed's 31 worker slots (more if `--threads` asks for more threads); when the
//! threads have exited every slot must be back.

use std::hint::black_box;
use std::sync::Arc;

use braid_runtime::{ExhaustionPolicy, StreamPool, MAX_WORKER_SLOTS};

use super::{Ctx, STANDARD_THREADS};
use crate::before::stream_pool::BeforeStreamPool;
use crate::device::{bench_device, BenchDevice};
use crate::error::BenchError;
use crate::harness::workers::{run_workers, MakeWorker, NoHooks, Worker};
use crate::harness::{CaseSpec, Check, RepResult, Role, Timing, AFTER, BEFORE};
use crate::subjects::PoolUnderTest;

/// Lookups per timed batch.
const LOOKUPS_PER_BATCH: u64 = 256;
/// The seed's worker slots.
pub const SEED_WORKER_SLOTS: usize = 31;

/// Which loop a case runs.
#[derive(Clone, Copy)]
enum Lookup {
    Current,
    SetCurrent,
    Get,
}

/// Runs S4a–S4c.
pub fn run(ctx: &mut Ctx) -> Result<(), BenchError> {
    let threads = ctx.sweep(&STANDARD_THREADS);
    let timing = ctx.timing;
    let cases = [
        (
            "S4a",
            "current_stream(): the thread's current stream, ready for work",
            Lookup::Current,
        ),
        (
            "S4b",
            "set_current_stream(own stream) and restore (guard drop)",
            Lookup::SetCurrent,
        ),
        (
            "S4c",
            "get_stream(i) of an existing stream, ready for work",
            Lookup::Get,
        ),
    ];
    for (id, title, lookup) in cases {
        let spec = CaseSpec {
            id,
            title: format!("stream lookup, {title}"),
            op: "lookup",
            latency_of: "per lookup, sampled batches of 256",
            arms: vec![BEFORE, AFTER],
            threads: threads.clone(),
        };
        ctx.run_case(spec, |arm, threads| match arm.role {
            Role::Before => repetition::<BeforeStreamPool<BenchDevice>>(lookup, threads, &timing),
            Role::After => repetition::<StreamPool<BenchDevice>>(lookup, threads, &timing),
        })?;
    }
    Ok(())
}

fn repetition<P: PoolUnderTest>(
    lookup: Lookup,
    threads: usize,
    timing: &Timing,
) -> Result<RepResult, BenchError> {
    let slots = threads.clamp(SEED_WORKER_SLOTS, MAX_WORKER_SLOTS);
    let pool = Arc::new(P::create(bench_device(), slots, ExhaustionPolicy::Error)?);
    let lookups = Lookups {
        pool: pool.clone(),
        lookup,
        slots,
    };
    let measured = run_workers(threads, timing, lookups, &mut NoHooks)?;
    Ok(RepResult {
        ops_per_sec: measured.ops_per_sec,
        latency: measured.latency,
        extras: Vec::new(),
        checks: vec![Check::equal(
            "slots still leased after the threads exit",
            pool.leased_slots(),
            0,
        )],
    })
}

/// Builds the lookup workers; they borrow its pool (and the current stream of each, from it).
struct Lookups<P> {
    pool: Arc<P>,
    lookup: Lookup,
    slots: usize,
}

impl<P: PoolUnderTest> MakeWorker for Lookups<P> {
    type Worker<'a>
        = LookupWorker<'a, P>
    where
        Self: 'a;

    fn make(&self, index: usize) -> Result<LookupWorker<'_, P>, BenchError> {
        let pool = &*self.pool;
        // First use leases this thread's slot; creating the streams is not part of the loop.
        let current = pool.current_stream()?;
        pool.current_raw()?;
        let other = 1 + index % self.slots;
        pool.get_raw(other)?;
        Ok(LookupWorker {
            pool,
            lookup: self.lookup,
            current,
            other,
        })
    }
}

/// One thread's lookup loop.
struct LookupWorker<'a, P: PoolUnderTest> {
    pool: &'a P,
    lookup: Lookup,
    current: P::Current<'a>,
    /// The stream `get_stream` looks up.
    other: usize,
}

impl<P: PoolUnderTest> Worker for LookupWorker<'_, P> {
    fn batch(&mut self, _measuring: bool) -> Result<u64, BenchError> {
        let pool = self.pool;
        match self.lookup {
            Lookup::Current => {
                for _ in 0..LOOKUPS_PER_BATCH {
                    black_box(pool.current_raw()?);
                }
            }
            Lookup::SetCurrent => {
                for _ in 0..LOOKUPS_PER_BATCH {
                    // Checked, then dropped where it lies (the guard restores the previous stream
                    // at the end of this block): moving a guard out of its `Result` (`?`, `match`)
                    // reloads it with one 16-byte load over the smaller stores that built it, a
                    // store-forwarding stall that costs more than the switch. `black_box` keeps
                    // the switch and its restore from being folded away.
                    let switched = pool.set_current_stream(black_box(self.current));
                    if let Err(e) = switched {
                        return Err(e.into());
                    }
                    black_box(&switched);
                }
            }
            Lookup::Get => {
                for _ in 0..LOOKUPS_PER_BATCH {
                    black_box(pool.get_raw(black_box(self.other))?);
                }
            }
        }
        Ok(LOOKUPS_PER_BATCH)
    }
}
