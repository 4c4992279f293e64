//! S6 — commit policy (design fix 2): an encode-heavy stream of many small ops under `off` (the
//! seed: commit-and-continue disabled, work submitted only at a sync point), `auto` and `on`.
//!
//! Each thread, on its own leased stream, repeats: allocate a 64 KiB buffer, stage 4 KiB of
//! parameters from the host into it (`copy_from_host`: the host copies, the device copies again),
//! fill the buffer with a kernel, free it — two device ops, each followed by `Stream::encoded()` so
//! the policy decides whether to submit — and synchronizes every 128 ops, as a caller reading a result
//! back would. Host and device work per op are of the same order (about a microsecond each), which is
//! where pipelining matters: under `on` the stream's executor runs op *n* while the host encodes op
//! *n + 1*; under `off` it starts only at the sync. On the CPU backend each commit is a hand-off to
//! the executor thread (a wake-up when it is idle), so `on` pays that per op; with smaller kernels
//! (16 KiB) `off` wins even on a quiet machine.
//!
//! `auto` must be within 2 % of `on` for one thread (a single-user stream keeps commit-and-continue
//! on). The after/before column is each policy's throughput over `off`'s: what `off` costs.
//! Cases: 1 and 8 threads (1 and 2 under `--quick`).

use braid_runtime::cpu::CpuDevice;
use braid_runtime::ops::{Fill, Ops};
use braid_runtime::{CachingAllocator, CommitPolicy, Device, Stream, StreamLease, View};

use super::{AllocFixture, AllocShared, Ctx};
use crate::device::{inner_view, BenchDevice};
use crate::error::BenchError;
use crate::harness::workers::{run_workers, MakeWorker, NoHooks, Worker};
use crate::harness::{Arm, CaseSpec, RepResult, Role, Timing};
use crate::subjects::RawStream;

/// Ops between host syncs.
const OPS_PER_SYNC: u64 = 128;
/// Bytes each op pair stages from the host (small: a kernel's parameters, not bulk data).
const STAGED_BYTES: usize = 4 << 10;
/// Bytes each op pair's kernel fills.
const OP_BYTES: usize = 64 << 10;

/// Runs S6.
pub fn run(ctx: &mut Ctx) -> Result<(), BenchError> {
    let timing = ctx.timing;
    let spec = CaseSpec {
        id: "S6",
        title: "commit policy: encode-heavy stream (4 KiB staged + 64 KiB fill per op pair, sync every 128 ops), off (before) vs auto and on".into(),
        op: "encoded device op",
        latency_of: "per op, averaged over 128 ops and their sync",
        arms: vec![
            Arm { name: "off", role: Role::Before },
            Arm { name: "auto", role: Role::After },
            Arm { name: "on", role: Role::After },
        ],
        threads: ctx.sweep(&[1, 8]),
    };
    ctx.run_case(spec, |arm, threads| {
        let policy = match arm.name {
            "off" => CommitPolicy::Off,
            "on" => CommitPolicy::On,
            _ => CommitPolicy::Auto,
        };
        repetition(policy, threads, &timing)
    })
}

fn repetition(
    policy: CommitPolicy,
    threads: usize,
    timing: &Timing,
) -> Result<RepResult, BenchError> {
    let fixture = AllocFixture::<CachingAllocator<BenchDevice>>::new(policy)?;
    let encoders = Encoders(fixture.shared());
    let measured = run_workers(threads, timing, encoders, &mut NoHooks)?;
    Ok(RepResult {
        ops_per_sec: measured.ops_per_sec,
        latency: measured.latency,
        extras: Vec::new(),
        checks: fixture.teardown(),
    })
}

/// Builds the encode workers; they borrow its allocator and pool.
struct Encoders(AllocShared<CachingAllocator<BenchDevice>>);

impl MakeWorker for Encoders {
    type Worker<'a> = EncodeWorker<'a>;

    fn make(&self, index: usize) -> Result<EncodeWorker<'_>, BenchError> {
        let lease = self.0.streams.lease()?;
        let stream = lease.stream();
        Ok(EncodeWorker {
            staging: vec![index as u8; STAGED_BYTES],
            allocator: &self.0.allocator,
            device: stream.device(),
            raw: stream.raw()?,
            stream,
            _lease: lease,
        })
    }
}

/// One thread's encode loop (module doc).
struct EncodeWorker<'a> {
    staging: Vec<u8>,
    allocator: &'a CachingAllocator<BenchDevice>,
    device: &'a BenchDevice,
    raw: &'a RawStream,
    stream: Stream<'a, BenchDevice>,
    _lease: StreamLease<'a, BenchDevice>,
}

impl EncodeWorker<'_> {
    /// The CPU backend under the counting wrapper, whose `fill` kernel the ops encode.
    fn cpu(&self) -> &CpuDevice {
        self.device.inner()
    }
}

impl Worker for EncodeWorker<'_> {
    fn batch(&mut self, _measuring: bool) -> Result<u64, BenchError> {
        for op in 0..OPS_PER_SYNC / 2 {
            let buffer = self.allocator.alloc(OP_BYTES, self.stream)?;
            // The staged parameters land at the buffer's start.
            let staged = View {
                len: STAGED_BYTES,
                ..buffer.view()
            };
            self.device
                .copy_from_host(self.raw, &self.staging, staged)?;
            self.stream.encoded()?;
            let fill = Fill {
                dst: inner_view(buffer.view()),
                len: OP_BYTES / 4,
                value: op as f32,
            };
            self.cpu().fill(self.raw, &fill)?;
            self.stream.encoded()?;
        }
        self.stream.synchronize()?;
        Ok(OPS_PER_SYNC)
    }
}
