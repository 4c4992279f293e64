//! S1 — allocator throughput: alloc+free pairs, each thread on its own stream (design fix 1).
//!
//! Each thread keeps a window of [`WINDOW`] live buffers; an op allocates a new buffer and frees the
//! one it replaces in a random window slot, so frees come out of allocation order. Two cases:
//!
//! - **S1a, mixed sizes**: log-uniform from 256 B to 64 MiB (12 of 18 octaves, about 67 %, are
//!   ≤ 1 MiB and go to the small pools / thread caches; the rest to the large pool).
//! - **S1b, one size class**: every thread allocates 64 KiB — the worst case for a sharded design,
//!   where every thread lands in the same class. It must be no slower than before.
//!
//! Every thread replays the same seeded sequence of sizes under both arms. Reported besides
//! throughput and latency: cache hit rate, raw device allocations and peak reserved bytes.

use braid_runtime::{CachingAllocator, CommitPolicy, Stream, StreamLease};

use super::{AllocFixture, AllocShared, Ctx, Rng, STANDARD_THREADS};
use crate::before::allocator::BeforeAllocator;
use crate::device::BenchDevice;
use crate::error::BenchError;
use crate::harness::workers::{run_workers, MakeWorker, NoHooks, Worker};
use crate::harness::{CaseSpec, Extra, RepResult, Role, Timing, Unit, AFTER, BEFORE};
use crate::subjects::AllocatorUnderTest;

/// Live buffers per thread.
const WINDOW: usize = 4;
/// Ops per timed batch.
const OPS_PER_BATCH: u64 = 16;
/// Length of each thread's precomputed (size, slot) sequence; a power of two.
const PLAN_LEN: usize = 4096;

/// Which sizes a case allocates.
#[derive(Clone, Copy)]
enum Sizes {
    /// Log-uniform, 256 B – 64 MiB.
    Mixed,
    /// All 64 KiB.
    OneClass,
}

/// Runs S1a and S1b.
pub fn run(ctx: &mut Ctx) -> Result<(), BenchError> {
    let threads = ctx.sweep(&STANDARD_THREADS);
    let timing = ctx.timing;
    let cases = [
        (
            "S1a",
            "allocator, mixed sizes (log-uniform 256 B - 64 MiB), 4 live buffers per thread, own stream each",
            Sizes::Mixed,
        ),
        (
            "S1b",
            "allocator, one size class (64 KiB) for all threads - the sharding worst case, must be no slower than before",
            Sizes::OneClass,
        ),
    ];
    for (id, title, sizes) in cases {
        let spec = CaseSpec {
            id,
            title: title.into(),
            op: "alloc + free",
            latency_of: "per op, sampled batches of 16",
            arms: vec![BEFORE, AFTER],
            threads: threads.clone(),
        };
        ctx.run_case(spec, |arm, threads| match arm.role {
            Role::Before => repetition::<BeforeAllocator<BenchDevice>>(sizes, threads, &timing),
            Role::After => repetition::<CachingAllocator<BenchDevice>>(sizes, threads, &timing),
        })?;
    }
    Ok(())
}

fn repetition<A: AllocatorUnderTest>(
    sizes: Sizes,
    threads: usize,
    timing: &Timing,
) -> Result<RepResult, BenchError> {
    let fixture = AllocFixture::<A>::new(CommitPolicy::Auto)?;
    let windows = Windows {
        shared: fixture.shared(),
        sizes,
    };
    let measured = run_workers(threads, timing, windows, &mut NoHooks)?;
    let stats = fixture.allocator.stats();
    Ok(RepResult {
        ops_per_sec: measured.ops_per_sec,
        latency: measured.latency,
        extras: vec![
            Extra::median("hit rate", stats.hit_rate(), Unit::Percent),
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

/// Builds the window workers; they borrow its allocator and pool.
struct Windows<A> {
    shared: AllocShared<A>,
    sizes: Sizes,
}

impl<A: AllocatorUnderTest> MakeWorker for Windows<A> {
    type Worker<'a>
        = WindowWorker<'a, A>
    where
        Self: 'a;

    fn make(&self, index: usize) -> Result<WindowWorker<'_, A>, BenchError> {
        let lease = self.shared.streams.lease()?;
        WindowWorker::new(&self.shared.allocator, lease, self.sizes, index)
    }
}

/// One thread: a window of live buffers, replaced one op at a time (module doc).
struct WindowWorker<'a, A: AllocatorUnderTest> {
    // Field order is drop order: buffers are freed before the stream's lease is returned.
    window: Vec<Option<A::Buffer>>,
    /// (bytes, window slot) per op, replayed cyclically.
    plan: Vec<(usize, usize)>,
    next: usize,
    allocator: &'a A,
    stream: Stream<'a, BenchDevice>,
    _lease: StreamLease<'a, BenchDevice>,
}

impl<'a, A: AllocatorUnderTest> WindowWorker<'a, A> {
    fn new(
        allocator: &'a A,
        lease: StreamLease<'a, BenchDevice>,
        sizes: Sizes,
        index: usize,
    ) -> Result<Self, BenchError> {
        let mut rng = Rng::new(0x51 + index as u64);
        let bytes = match sizes {
            Sizes::Mixed => rng.log_uniform_sizes(PLAN_LEN, 256, 64 << 20),
            Sizes::OneClass => vec![64 << 10; PLAN_LEN],
        };
        let plan = bytes
            .into_iter()
            .map(|b| (b, rng.below(WINDOW as u64) as usize))
            .collect();
        Ok(Self {
            window: (0..WINDOW).map(|_| None).collect(),
            plan,
            next: 0,
            allocator,
            stream: lease.stream(),
            _lease: lease,
        })
    }
}

impl<A: AllocatorUnderTest> Worker for WindowWorker<'_, A> {
    fn batch(&mut self, _measuring: bool) -> Result<u64, BenchError> {
        for _ in 0..OPS_PER_BATCH {
            let (bytes, slot) = self.plan[self.next % PLAN_LEN];
            self.next += 1;
            let buffer = self.allocator.alloc(bytes, self.stream)?;
            drop(self.window[slot].replace(buffer));
        }
        Ok(OPS_PER_BATCH)
    }
}
