//! The tensor-core attention kernel (f16 and bf16, `mma.sync`) against the CUDA-core fused kernel, its
//! reference, on the same device inputs: MiniLM's heads (32) and BERT-base's (64) over several key
//! tiles, the largest head (128), odd sequence lengths, a one-token sequence, padded and fully masked
//! sequences. Also: the same inputs give the same bits twice (no atomics), and a fully masked sequence
//! is exactly zero. (`cuda_ops` checks both kernels against the CPU backend.) Skips with a line saying
//! so on a machine without a CUDA driver.

mod common;

use braid_cuda::CudaDevice;
use braid_runtime::ops::{Attention, AttentionShape};
use braid_runtime::{DType, Runtime, RuntimeConfig};
use common::Rng;

#[derive(Clone, Copy, PartialEq)]
enum Kernel {
    TensorCores,
    CudaCores,
}

/// Runs one attention on `kernel` and returns the output as f32.
fn run(
    rt: &Runtime<CudaDevice>,
    kernel: Kernel,
    dtype: DType,
    shape: AttentionShape,
    qkv: &[f32],
    mask: &[f32],
) -> Vec<f32> {
    let tokens = shape.batch * shape.seq;
    let qkv = rt
        .from_f32_as(qkv, &[tokens, 3 * shape.hidden()], dtype)
        .unwrap();
    let mask = rt.from_f32(mask, &[shape.batch, shape.seq]).unwrap();
    let out = rt.empty(&[tokens, shape.hidden()], dtype).unwrap();
    let stream = rt.current_stream().unwrap();
    let op = Attention {
        dtype,
        shape,
        qkv: qkv.view(),
        mask: mask.view(),
        out: out.view(),
        scratch: None,
    };
    let raw = stream.raw().unwrap();
    match kernel {
        Kernel::TensorCores => rt.device().attention_on_tensor_cores(raw, &op),
        Kernel::CudaCores => rt.device().attention_on_cuda_cores(raw, &op),
    }
    .unwrap();
    stream.encoded().unwrap();
    rt.to_vec_f32(&out).unwrap()
}

#[test]
fn tensor_core_attention_matches_the_cuda_core_kernel() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let rt = Runtime::new(device, RuntimeConfig::default()).unwrap();
    let mut rng = Rng::new(5);
    // (batch, seq, heads, head_dim)
    for (batch, seq, heads, head_dim) in [
        (3, 70, 12, 32),
        (4, 128, 12, 32),
        (2, 200, 2, 64),
        (3, 33, 4, 64),
        (2, 129, 4, 128),
        (1, 1, 2, 32),
    ] {
        let shape = AttentionShape {
            batch,
            seq,
            heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
        };
        // Scores of a few units, as in a trained model: q, k, v in [-2, 2).
        let qkv: Vec<f32> = (0..batch * seq * 3 * shape.hidden())
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 22) as f32 - 2.0)
            .collect();
        let mask = common::padded_and_masked(batch, seq);
        for (dtype, tolerance) in [(DType::F16, 2e-3f32), (DType::BF16, 1.6e-2)] {
            let got = run(&rt, Kernel::TensorCores, dtype, shape, &qkv, &mask);
            let want = run(&rt, Kernel::CudaCores, dtype, shape, &qkv, &mask);
            let again = run(&rt, Kernel::TensorCores, dtype, shape, &qkv, &mask);
            assert!(
                got.iter()
                    .zip(&again)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{batch}x{seq}x{heads}x{head_dim} {dtype}: two runs differ"
            );
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs() / (1.0 + w.abs()))
                .fold(0f32, f32::max);
            assert!(
                worst <= tolerance,
                "{batch}x{seq}x{heads}x{head_dim} {dtype}: worst relative difference {worst:.3e} > \
                 {tolerance:.1e}"
            );
            if batch > 2 {
                let masked = &got[2 * seq * shape.hidden()..3 * seq * shape.hidden()];
                assert!(
                    masked.iter().all(|&v| v == 0.0),
                    "a fully masked sequence is not zero"
                );
            }
            let largest = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                largest > 0.1,
                "the reference output is degenerate ({largest})"
            );
            println!(
                "tensor cores vs CUDA cores {batch}x{seq}x{heads}x{head_dim} {dtype:>4}: worst relative \
                 difference {worst:.2e}"
            );
        }
    }
}

#[test]
fn tensor_core_attention_refuses_what_it_does_not_take() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let rt = Runtime::new(device, RuntimeConfig::default()).unwrap();
    let shape = |head_dim| AttentionShape {
        batch: 1,
        seq: 4,
        heads: 2,
        head_dim,
        scale: 0.5,
    };
    let qkv = |s: AttentionShape| vec![0.5f32; s.seq * 3 * s.hidden()];
    // f32 and a head of 48 features are the CUDA-core kernel's.
    for (dtype, s) in [(DType::F32, shape(32)), (DType::F16, shape(48))] {
        let q = rt
            .from_f32_as(&qkv(s), &[s.seq, 3 * s.hidden()], dtype)
            .unwrap();
        let mask = rt.from_f32(&[1.0; 4], &[1, 4]).unwrap();
        let out = rt.empty(&[s.seq, s.hidden()], dtype).unwrap();
        let stream = rt.current_stream().unwrap();
        let op = Attention {
            dtype,
            shape: s,
            qkv: q.view(),
            mask: mask.view(),
            out: out.view(),
            scratch: None,
        };
        let err = rt
            .device()
            .attention_on_tensor_cores(stream.raw().unwrap(), &op)
            .unwrap_err();
        assert!(err.to_string().contains("head_dim 32/64/128"), "{err}");
    }
}
