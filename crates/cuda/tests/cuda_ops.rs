//! Every CUDA op against the CPU backend on the same inputs: f32 within rounding, f16 and bf16 within
//! their precision (the CPU gets the inputs rounded to the dtype first, so only the op's own arithmetic
//! differs). The fused attention is checked on MiniLM's head size, on a head size that is not a multiple
//! of the warp, with padded and fully masked sequences, and above the fused kernel's limit (the unfused
//! fallback). Skips with a line saying so on a machine without a CUDA driver.

mod common;

use braid_cuda::CudaDevice;
use braid_runtime::conformance::ops::{attention_shapes, every_op, Pair};
use braid_runtime::ops::Ops;
use braid_runtime::DType;

/// Each dtype and the largest |gpu - cpu| / (1 + |cpu|) allowed for it.
const DTYPES: [(DType, f32); 3] = [(DType::F32, 2e-5), (DType::F16, 4e-3), (DType::BF16, 3e-2)];

#[test]
fn every_op_matches_the_cpu_backend_in_every_dtype() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    assert_eq!(
        device.compute_dtypes(),
        [DType::F32, DType::F16, DType::BF16]
    );
    every_op(&Pair::new(device), &DTYPES);
}

#[test]
fn fused_attention_matches_the_unfused_cpu_path() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    // (batch, seq, heads, head_dim): MiniLM's heads over more keys than one tile, a head that is not a
    // multiple of 32, a sequence shorter than one tile, and a head above the fused limit (fallback).
    let shapes = [
        (3, 70, 12, 32),
        (2, 33, 3, 48),
        (2, 5, 2, 64),
        (2, 20, 2, 160),
    ];
    attention_shapes(&Pair::<CudaDevice>::new(device), &shapes, &DTYPES);
}
