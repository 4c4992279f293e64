//! Every wgpu op against the CPU backend on the same inputs, in f32 (the runtime's conformance suite),
//! and the attention (the unfused GEMM–softmax–GEMM path) on MiniLM's head size, a head size that is
//! not a multiple of anything, a one-token-past-tile sequence and padded and fully masked sequences.
//! Other dtypes are refused with `Unsupported`. Skips with a line saying so without an adapter.

mod common;

use braid_runtime::conformance::ops::{attention_shapes, every_op, Pair};
use braid_runtime::ops::Ops;
use braid_runtime::{DType, RuntimeError};

/// f32 and the largest |wgpu - cpu| / (1 + |cpu|) allowed.
const F32: (DType, f32) = (DType::F32, 2e-5);

#[test]
fn every_op_matches_the_cpu_backend_in_f32() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    assert_eq!(device.compute_dtypes(), [DType::F32]);
    let pair = Pair::new(device);
    every_op(&pair, &[F32]);
    attention_shapes(
        &pair,
        &[
            (3, 70, 12, 32),
            (2, 33, 3, 48),
            (2, 5, 2, 64),
            (3, 65, 2, 160),
        ],
        &[F32],
    );
}

#[test]
fn other_dtypes_are_unsupported_not_wrong() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let pair = Pair::new(device);
    let rt = &pair.gpu;
    let x = rt.from_f32_as(&[1.0; 8], &[2, 4], DType::F16).unwrap();
    let w = rt.from_f32_as(&[1.0; 8], &[2, 4], DType::F16).unwrap();
    match rt.linear(&x, &w, None) {
        Err(RuntimeError::Unsupported { op, dtype, backend }) => {
            assert_eq!((op, dtype, backend), ("gemm", DType::F16, "wgpu"));
        }
        Err(e) => panic!("expected Unsupported, got {e}"),
        Ok(_) => panic!("expected Unsupported, got a result"),
    }
}
