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

use std::sync::Arc;

use braid_runtime::ops::Ops;
use braid_runtime::{CachingAllocator, CommitPolicy, Device, Stream, StreamLease};

use super::{AllocFixture, Ctx};
use crate::device::BenchDevice;
use crate::error::BenchError;
use crate::harness::workers::{run_workers, NoHooks, Worker};
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
    let (allocator, streams, device) = (
        fixture.allocator.clone(),
        fixture.streams.clone(),
        fixture.device.clone(),
    );
    let measured = run_workers(
        threads,
        timing,
        move |index| {
            let lease = streams.lease()?;
            let stream = lease.stream();
            Ok(EncodeWorker {
                staging: vec![index as u8; STAGED_BYTES],
                allocator: allocator.clone(),
                device: device.clone(),
                raw: stream.raw()?,
                stream,
                _lease: lease,
            })
        },
        &mut NoHooks,
    )?;
    Ok(RepResult {
        ops_per_sec: measured.ops_per_sec,
        latency: measured.latency,
        extras: Vec::new(),
        checks: fixture.teardown(),
    })
}

/// One thread's encode loop (module doc).
struct EncodeWorker {
    staging: Vec<u8>,
    allocator: Arc<CachingAllocator<BenchDevice>>,
    device: BenchDevice,
    raw: &'static RawStream,
    stream: Stream<BenchDevice>,
    _lease: StreamLease<BenchDevice>,
}

impl Worker for EncodeWorker {
    fn batch(&mut self, _measuring: bool) -> Result<u64, BenchError> {
        for op in 0..OPS_PER_SYNC / 2 {
            let buffer = self.allocator.alloc(OP_BYTES, self.stream)?;
            self.device
                .copy_from_host(self.raw, &self.staging, buffer.ptr())?;
            self.stream.encoded()?;
            self.device
                .inner()
                .fill(self.raw, buffer.ptr(), OP_BYTES / 4, op as f32)?;
            self.stream.encoded()?;
        }
        self.stream.synchronize()?;
        Ok(OPS_PER_SYNC)
    }
}
