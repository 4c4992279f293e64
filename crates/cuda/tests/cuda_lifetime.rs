//! Nothing leaks: 100 times, a `Runtime<CudaDevice>` is created, used from 8 threads (tensors, GEMMs
//! and kernels, non-blocking downloads — finished and dropped unfinished) and dropped with everything
//! made from it. Afterwards the device's free memory (`cuMemGetInfo`) is back within 1 MiB of where it
//! started, and braid-cuda holds exactly the driver objects it held before (`live_objects`: context
//! retains, streams, events, cuBLAS handles, kernel modules, page-locked buffers, device buffers).
//! Skips without a driver (see `common`).
//!
//! One runtime is made and dropped before the baseline is taken: the first one initialises what the
//! process keeps for good whatever braid does — the CUDA runtime inside cuBLAS retains the primary
//! context for the rest of the process and loads cuBLAS's kernels into it, the driver JIT-compiles
//! braid's PTX once. The counts are checked before the loop too, so that first runtime must also have
//! released everything braid holds.
//!
//! This file holds one test, so the process-wide counts are this test's alone.

mod common;

use std::sync::Arc;

use braid_cuda::{live_objects, CudaDevice, LiveObjects};
use braid_runtime::device::Device;
use braid_runtime::ops::Gelu;
use braid_runtime::{Runtime, RuntimeConfig};
use common::{device_or_skip, Rng};

const ROUNDS: usize = 100;
const THREADS: usize = 8;
/// How far free device memory may be from the baseline after the rounds.
const SLACK: usize = 1 << 20;

/// Values in [-1, 1).
fn values(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        .collect()
}

/// One thread's work on `rt`: a small encoder-like chain (linear with bias through cuBLAS, fused
/// attention, layer norm with residual, bias + GELU, masked mean pooling, L2 normalisation), a
/// non-blocking download that is finished, one that is dropped unfinished, and a blocking one.
fn work(rt: &Runtime<CudaDevice>, seed: u64) {
    const BATCH: usize = 2;
    const SEQ: usize = 8;
    const IN: usize = 64;
    const HEADS: usize = 2;
    const HIDDEN: usize = 32;
    let mut rng = Rng::new(seed);
    let tokens = BATCH * SEQ;
    let x = rt
        .from_f32(&values(&mut rng, tokens * IN), &[tokens, IN])
        .unwrap();
    let w = rt
        .from_f32(&values(&mut rng, 3 * HIDDEN * IN), &[3 * HIDDEN, IN])
        .unwrap();
    let b = rt
        .from_f32(&values(&mut rng, 3 * HIDDEN), &[3 * HIDDEN])
        .unwrap();
    let qkv = rt.linear(&x, &w, Some(&b)).unwrap();
    let mut mask = vec![1f32; tokens];
    mask[SEQ + 5..].fill(0.0);
    let mask = rt.from_f32(&mask, &[BATCH, SEQ]).unwrap();
    let context = rt.attention(&qkv, &mask, HEADS).unwrap();
    let [bias, gamma, beta] =
        [0, 1, 2].map(|_| rt.from_f32(&values(&mut rng, HIDDEN), &[HIDDEN]).unwrap());
    let mut hidden = rt
        .layer_norm(&context, Some(&bias), Some(&context), &gamma, &beta, 1e-12)
        .unwrap();
    rt.bias_gelu(&mut hidden, &bias, Gelu::Tanh).unwrap();
    let hidden = hidden.reshape(&[BATCH, SEQ, HIDDEN]).unwrap();
    let mut pooled = rt.mean_pool(&hidden, &mask).unwrap();
    rt.l2_normalize(&mut pooled).unwrap();

    let pending = rt.download(&pooled).unwrap();
    let abandoned = rt.download(&qkv).unwrap();
    drop(abandoned);
    drop((x, w, b, qkv, context, hidden));
    let got = pending.wait().unwrap();
    assert_eq!(got.len(), BATCH * HIDDEN);
    for row in got.chunks(HIDDEN) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "an L2-normalised row has norm {norm}"
        );
    }
    assert_eq!(rt.to_vec_f32(&pooled).unwrap(), got);
}

/// A runtime on a new `CudaDevice` of GPU 0, used from [`THREADS`] threads, then dropped whole.
fn one_runtime() {
    let device = CudaDevice::new(0).unwrap();
    let runtime = Arc::new(Runtime::new(device, RuntimeConfig::default()).unwrap());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let runtime = runtime.clone();
            std::thread::spawn(move || {
                for pass in 0..2 {
                    work(&runtime, (t * 2 + pass) as u64 + 1);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    assert_eq!(
        runtime.streams().leased_slots(),
        0,
        "every thread's lease came back"
    );
    assert_eq!(
        Arc::strong_count(&runtime),
        1,
        "the threads dropped their clones"
    );
    drop(runtime);
}

#[test]
fn a_hundred_runtimes_on_eight_threads_leak_nothing() {
    // The probe keeps one retain of the context for `cuMemGetInfo`; it never runs an op.
    let Some(probe) = device_or_skip() else {
        return;
    };
    let (free_at_start, total) = probe.memory_info().unwrap();
    one_runtime();
    let held = live_objects();
    assert_eq!(
        held,
        LiveObjects {
            contexts: 1,
            ..LiveObjects::default()
        },
        "after the first runtime was dropped braid holds only the probe's context retain"
    );
    let (baseline, _) = probe.memory_info().unwrap();
    for round in 0..ROUNDS {
        one_runtime();
        assert_eq!(
            live_objects(),
            held,
            "driver objects left after round {round}"
        );
    }
    let (free_at_end, _) = probe.memory_info().unwrap();
    println!(
        "{}: free device memory {free_at_start} bytes at the start, {baseline} after the first \
         runtime (process-wide CUDA state), {free_at_end} after {ROUNDS} more (of {total})",
        probe.describe()
    );
    assert!(
        free_at_end + SLACK >= baseline,
        "free device memory fell by {} bytes over {ROUNDS} runtimes",
        baseline - free_at_end
    );
    assert!(
        free_at_end <= baseline + SLACK,
        "free device memory rose by {} bytes: something else uses the device",
        free_at_end - baseline
    );
    assert_eq!(probe.raw_allocated(), 0);
}
