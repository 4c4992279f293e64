//! The six scenarios (one module each) and what they share: the run context ([`Ctx`]), the registry
//! ([`ALL`]), the allocator fixture with its end-of-run checks ([`AllocFixture`]), slot-ownership
//! flags ([`SlotFlags`]) and a small deterministic random source ([`Rng`]).
//!
//! Every repetition builds its own device, pool and allocator, so no state (cached blocks, leased
//! slots, created events) carries from one arm or repetition into the next.

pub mod s1_allocator;
pub mod s2_small_cache;
pub mod s3_stream_ordered;
pub mod s4_stream_lookup;
pub mod s5_slot_leasing;
pub mod s6_commit_policy;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use braid_runtime::{
    CommitPolicy, ExhaustionPolicy, StreamPool, StreamPoolConfig, MAX_WORKER_SLOTS,
};
use crossbeam_utils::CachePadded;

use crate::device::{bench_device, BenchDevice};
use crate::error::BenchError;
use crate::harness::{self, Arm, CaseSpec, Check, RepResult, Timing};
use crate::report::{table, CaseReport};
use crate::subjects::AllocatorUnderTest;

/// The thread sweep the design asks for.
pub const STANDARD_THREADS: [usize; 5] = [1, 2, 4, 8, 16];
/// The thread sweep under `--quick` (the CI machine has two cores).
const QUICK_THREADS: [usize; 2] = [1, 2];

/// A scenario: an id for `--scenarios`, and the function that runs its cases.
pub struct Scenario {
    /// "S1" … "S6".
    pub id: &'static str,
    /// One line for `--help` and logs.
    pub title: &'static str,
    /// Runs every case of the scenario.
    pub run: fn(&mut Ctx) -> Result<(), BenchError>,
}

/// Every scenario, in run order.
pub const ALL: [Scenario; 6] = [
    Scenario {
        id: "S1",
        title: "allocator: mixed sizes, and one size class",
        run: s1_allocator::run,
    },
    Scenario {
        id: "S2",
        title: "small-block cache: LIFO 4-256 KiB with cross-thread frees",
        run: s2_small_cache::run,
    },
    Scenario {
        id: "S3",
        title: "stream-ordered reuse without host syncs",
        run: s3_stream_ordered::run,
    },
    Scenario {
        id: "S4",
        title: "stream lookup: current, set-current, get(i)",
        run: s4_stream_lookup::run,
    },
    Scenario {
        id: "S5",
        title: "slot leasing: loop, thread churn, oversubscription",
        run: s5_slot_leasing::run,
    },
    Scenario {
        id: "S6",
        title: "commit policy: auto / on / off",
        run: s6_commit_policy::run,
    },
];

/// What every scenario needs: the run's settings, and where finished cases go.
pub struct Ctx {
    /// Repetitions per arm.
    pub reps: usize,
    /// Warm-up and measured time per repetition.
    pub timing: Timing,
    /// Whether this is the brief CI run.
    pub quick: bool,
    /// Thread counts from `--threads`, which replace every sweep.
    pub threads_override: Option<Vec<usize>>,
    /// Finished cases, in run order.
    pub cases: Vec<CaseReport>,
}

impl Ctx {
    /// The thread counts of a sweep whose full-run default is `full`: `--threads` if given, else
    /// 1 and 2 under `--quick`, else `full`.
    pub fn sweep(&self, full: &[usize]) -> Vec<usize> {
        match (&self.threads_override, self.quick) {
            (Some(threads), _) => threads.clone(),
            (None, true) => QUICK_THREADS.to_vec(),
            (None, false) => full.to_vec(),
        }
    }

    /// `full` in a full run, `quick` under `--quick`.
    pub fn scaled(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// Runs a case (see [`harness::run_case`]), prints its table and keeps its report.
    pub fn run_case(
        &mut self,
        spec: CaseSpec,
        run_rep: impl FnMut(Arm, usize) -> Result<RepResult, BenchError>,
    ) -> Result<(), BenchError> {
        let report = harness::run_case(&spec, self.reps, run_rep)?;
        print!("{}", table::case(&report));
        self.cases.push(report);
        Ok(())
    }
}

/// A SplitMix64 generator: deterministic per seed, so both arms see the same sizes in the same order.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (n > 0).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// `count` sizes drawn log-uniformly from `min..=max` bytes.
    pub fn log_uniform_sizes(&mut self, count: usize, min: usize, max: usize) -> Vec<usize> {
        let (low, high) = ((min as f64).log2(), (max as f64).log2());
        (0..count)
            .map(|_| {
                let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                ((low + unit * (high - low)).exp2() as usize).clamp(min, max)
            })
            .collect()
    }
}

/// One flag per stream slot, set while a thread holds it: a slot handed to two threads at once is
/// counted, whichever pool handed it out.
pub struct SlotFlags {
    held: Box<[CachePadded<AtomicBool>]>,
    held_twice: AtomicU64,
}

impl SlotFlags {
    /// Flags for slot indices `0..slots`.
    pub fn new(slots: usize) -> Self {
        Self {
            held: (0..slots)
                .map(|_| CachePadded::new(AtomicBool::new(false)))
                .collect(),
            held_twice: AtomicU64::new(0),
        }
    }

    /// Marks slot `index` held; counts it if it already was.
    #[inline]
    pub fn acquire(&self, index: usize) {
        // AcqRel: pairs with the Release in `release` of the previous holder, so a slot seen free
        // really was given up first.
        if self.held[index].swap(true, Ordering::AcqRel) {
            self.held_twice.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks slot `index` free, just before the pool gets it back.
    #[inline]
    pub fn release(&self, index: usize) {
        self.held[index].store(false, Ordering::Release);
    }

    /// The check: no slot was ever held by two threads at once.
    pub fn check(&self) -> Check {
        Check::equal(
            "slots held by two threads at once",
            self.held_twice.load(Ordering::Relaxed),
            0,
        )
    }
}

/// A braid stream pool for the allocator scenarios: as many slots as allowed, so any thread count fits
/// (slots are not what S1–S3 measure).
pub fn allocator_streams(commit: CommitPolicy) -> Result<StreamPool<BenchDevice>, BenchError> {
    Ok(StreamPool::new(
        bench_device(),
        StreamPoolConfig {
            worker_slots: MAX_WORKER_SLOTS,
            exhaustion: ExhaustionPolicy::Error,
            commit,
            main_thread_uses_default: true,
        },
    )?)
}

/// An allocator under test, the braid streams its workers lease (the allocator serves them), and the
/// device both run on. [`teardown`](Self::teardown) checks that every byte came back.
pub struct AllocFixture<A> {
    /// Shared by the workers through their [`MakeWorker`](crate::harness::workers::MakeWorker) (no
    /// reference count per op).
    pub allocator: Arc<A>,
    /// Each worker leases its own stream here.
    pub streams: Arc<StreamPool<BenchDevice>>,
    /// The device, for counters and kernels.
    pub device: BenchDevice,
}

/// What an allocator scenario's [`MakeWorker`](crate::harness::workers::MakeWorker) holds and its
/// workers borrow: the allocator, and the pool each worker leases its stream from (the lease and the
/// stream handle borrow it).
pub struct AllocShared<A> {
    /// The allocator under test.
    pub allocator: Arc<A>,
    /// The pool the allocator serves.
    pub streams: Arc<StreamPool<BenchDevice>>,
}

impl<A: AllocatorUnderTest> AllocFixture<A> {
    /// A fresh device, stream pool (with `commit` policy) and allocator serving the pool.
    pub fn new(commit: CommitPolicy) -> Result<Self, BenchError> {
        let streams = Arc::new(allocator_streams(commit)?);
        Ok(Self {
            allocator: Arc::new(A::create(&streams)),
            device: streams.device().clone(),
            streams,
        })
    }

    /// The allocator and the pool, for the workers (dropped with the workers' `MakeWorker`, before
    /// [`teardown`](Self::teardown)).
    pub fn shared(&self) -> AllocShared<A> {
        AllocShared {
            allocator: self.allocator.clone(),
            streams: self.streams.clone(),
        }
    }

    /// Once every worker has been joined: checks that no buffer is live and that dropping the
    /// allocator returns all device memory, then drops the allocator and the streams (in that order;
    /// the seed's allocator holds the pool until its state goes, braid's holds the pool's state).
    pub fn teardown(self) -> Vec<Check> {
        let allocated = self.allocator.stats().allocated_bytes;
        let sole_owner = Arc::into_inner(self.allocator).is_some();
        let raw = self.device.inner().raw_allocated();
        drop(self.streams);
        vec![
            Check::equal("bytes in live buffers after the run", allocated, 0),
            Check::equal("allocator released by every thread", sole_owner, true),
            Check::equal("device bytes held after the allocator drops", raw, 0),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_uniform_sizes_cover_the_range_evenly_by_octave() {
        let sizes = Rng::new(7).log_uniform_sizes(100_000, 256, 64 << 20);
        assert!(sizes.iter().all(|&s| (256..=64 << 20).contains(&s)));
        let small = sizes.iter().filter(|&&s| s <= 1 << 20).count() as f64 / sizes.len() as f64;
        // 12 of the 18 octaves are at most 1 MiB.
        assert!((small - 12.0 / 18.0).abs() < 0.01, "{small}");
    }

    #[test]
    fn slot_flags_count_a_double_hold() {
        let flags = SlotFlags::new(4);
        flags.acquire(1);
        flags.release(1);
        flags.acquire(1);
        assert!(flags.check().passed);
        flags.acquire(1);
        assert!(!flags.check().passed);
    }
}
