//! S3 — stream-ordered reuse: alloc → enqueue work → free → alloc again on the same stream, with no
//! host sync in between (design: "Allocator", "Events").
//!
//! Each op allocates a buffer on the thread's stream, encodes a kernel that writes it (the CPU
//! backend's `fill`), submits it per the commit policy, and frees the buffer while that kernel may
//! still be pending; the next op reuses the block. Sizes alternate between 64 KiB (small pool /
//! thread cache) and 2 MiB (large pool, freed behind an event), so both reuse paths are exercised.
//!
//! The invariants are the point: in the measured (steady-state) phase no event may be created and
//! no host sync (stream or event synchronize, the building blocks of a device-wide sync) may happen —
//! both counted by the [`CountedDevice`](crate::device::CountedDevice) under each arm.
//!
//! Steady state starts once the event pools have grown to their bound: each block waiting in a shared
//! pool holds one event, so a pool stops creating events once every block has been cached at the same
//! moment — which, with several threads interleaving, can take longer than `--quick`'s 5 ms warm-up.
//! The warm-up is therefore at least [`MIN_WARMUP`].
//!
//! The two zero-counts are checked (a failure fails the run) on the after-arm: they are braid's
//! promise. The before-arm's counts are reported only: the seed allocator holds an event per cached
//! block, so at 16 threads (32 blocks) its event pool is occasionally still growing after warm-up.

use std::sync::Arc;
use std::time::Duration;

use braid_runtime::cpu::CpuDevice;
use braid_runtime::ops::{Fill, Ops};
use braid_runtime::{CachingAllocator, CommitPolicy, Stream, StreamLease};

use super::{AllocFixture, AllocShared, Ctx, STANDARD_THREADS};
use crate::before::allocator::BeforeAllocator;
use crate::device::{inner_view, BenchDevice, DeviceCounts};
use crate::error::BenchError;
use crate::harness::workers::{run_workers, MakeWorker, PhaseHooks, Worker};
use crate::harness::{CaseSpec, Check, Extra, RepResult, Role, Timing, Unit, AFTER, BEFORE};
use crate::subjects::{AllocatorUnderTest, RawStream};

/// The sizes ops alternate between.
const SIZES: [usize; 2] = [64 << 10, 2 << 20];
/// f32 elements each kernel writes.
const KERNEL_ELEMENTS: usize = 64;
/// Ops per timed batch.
const OPS_PER_BATCH: u64 = 8;
/// The shortest warm-up before steady state (module doc).
const MIN_WARMUP: Duration = Duration::from_millis(30);

/// Runs S3.
pub fn run(ctx: &mut Ctx) -> Result<(), BenchError> {
    let timing = Timing {
        warmup: ctx.timing.warmup.max(MIN_WARMUP),
        ..ctx.timing
    };
    let spec = CaseSpec {
        id: "S3",
        title: "stream-ordered reuse: alloc, kernel, free, alloc again on the same stream, no host sync (64 KiB / 2 MiB)".into(),
        op: "alloc + kernel + free",
        latency_of: "per op, sampled batches of 8",
        arms: vec![BEFORE, AFTER],
        threads: ctx.sweep(&STANDARD_THREADS),
    };
    ctx.run_case(spec, |arm, threads| match arm.role {
        Role::Before => repetition::<BeforeAllocator<BenchDevice>>(threads, &timing, arm.role),
        Role::After => repetition::<CachingAllocator<BenchDevice>>(threads, &timing, arm.role),
    })
}

/// Device counters and raw allocations over the measured phase.
struct SteadyState<A> {
    device: BenchDevice,
    allocator: Arc<A>,
    at_start: (DeviceCounts, u64),
    during: (DeviceCounts, u64),
}

impl<A: AllocatorUnderTest> SteadyState<A> {
    fn now(&self) -> (DeviceCounts, u64) {
        (self.device.counts(), self.allocator.stats().raw_allocs)
    }
}

impl<A: AllocatorUnderTest> PhaseHooks for SteadyState<A> {
    fn measure_starting(&mut self) {
        self.at_start = self.now();
    }

    fn measure_ended(&mut self) {
        let (counts, raw_allocs) = self.now();
        self.during = (counts - self.at_start.0, raw_allocs - self.at_start.1);
    }
}

fn repetition<A: AllocatorUnderTest>(
    threads: usize,
    timing: &Timing,
    role: Role,
) -> Result<RepResult, BenchError> {
    let fixture = AllocFixture::<A>::new(CommitPolicy::Auto)?;
    let mut steady = SteadyState {
        device: fixture.device.clone(),
        allocator: fixture.allocator.clone(),
        at_start: Default::default(),
        during: Default::default(),
    };
    let reusers = Reusers(fixture.shared());
    let measured = run_workers(threads, timing, reusers, &mut steady)?;
    let (counts, raw_allocs) = steady.during;
    drop(steady);
    // braid's promise, checked on the after-arm only (module doc).
    let mut checks = match role {
        Role::After => vec![
            Check::equal("events created in steady state", counts.events_created, 0),
            Check::equal("host syncs in steady state", counts.host_syncs, 0),
        ],
        Role::Before => Vec::new(),
    };
    checks.extend(fixture.teardown());
    Ok(RepResult {
        ops_per_sec: measured.ops_per_sec,
        latency: measured.latency,
        extras: vec![
            Extra::max("events created", counts.events_created as f64, Unit::Count),
            Extra::max("host syncs", counts.host_syncs as f64, Unit::Count),
            Extra::max("raw allocs", raw_allocs as f64, Unit::Count),
        ],
        checks,
    })
}

/// Builds the reuse workers; they borrow its allocator and pool.
struct Reusers<A>(AllocShared<A>);

impl<A: AllocatorUnderTest> MakeWorker for Reusers<A> {
    type Worker<'a>
        = ReuseWorker<'a, A>
    where
        Self: 'a;

    fn make(&self, _index: usize) -> Result<ReuseWorker<'_, A>, BenchError> {
        let lease = self.0.streams.lease()?;
        let stream = lease.stream();
        Ok(ReuseWorker {
            next: 0,
            allocator: &self.0.allocator,
            device: stream.device().inner(),
            raw: stream.raw()?,
            stream,
            _lease: lease,
        })
    }
}

/// One thread: alloc, kernel, free on its own stream (module doc).
struct ReuseWorker<'a, A: AllocatorUnderTest> {
    next: usize,
    allocator: &'a A,
    /// The CPU backend under the counting wrapper, whose `fill` kernel the ops encode.
    device: &'a CpuDevice,
    raw: &'a RawStream,
    stream: Stream<'a, BenchDevice>,
    _lease: StreamLease<'a, BenchDevice>,
}

impl<A: AllocatorUnderTest> Worker for ReuseWorker<'_, A> {
    fn batch(&mut self, _measuring: bool) -> Result<u64, BenchError> {
        for _ in 0..OPS_PER_BATCH {
            let bytes = SIZES[self.next % SIZES.len()];
            self.next += 1;
            let buffer = self.allocator.alloc(bytes, self.stream)?;
            let fill = Fill {
                dst: inner_view(A::view(&buffer)),
                len: KERNEL_ELEMENTS,
                value: 1.0,
            };
            self.device.fill(self.raw, &fill)?;
            self.stream.encoded()?;
            drop(buffer);
        }
        Ok(OPS_PER_BATCH)
    }
}
