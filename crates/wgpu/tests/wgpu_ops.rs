//! Every wgpu op against the CPU backend on the same inputs (the runtime's conformance suite), in f32
//! and, where the adapter has `SHADER_F16`, f16 (the CPU gets the inputs rounded to f16 first), and the
//! attention (the unfused GEMM–softmax–GEMM path) on MiniLM's head size, a head size that is not a
//! multiple of anything, a sequence one past a tile and padded and fully masked sequences. bf16 is
//! refused with `Unsupported`. Skips with a line saying so without an adapter.

mod common;

use braid_runtime::conformance::ops::{attention_shapes, every_op, Pair};
use braid_runtime::ops::Ops;
use braid_runtime::{DType, RuntimeError};

/// Each dtype and the largest |wgpu - cpu| / (1 + |cpu|) allowed for it.
const DTYPES: [(DType, f32); 2] = [(DType::F32, 2e-5), (DType::F16, 4e-3)];

#[test]
fn every_op_matches_the_cpu_backend_in_every_dtype() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let dtypes: Vec<(DType, f32)> = (DTYPES.into_iter())
        .filter(|(d, _)| device.compute_dtypes().contains(d))
        .collect();
    if dtypes.len() < DTYPES.len() {
        println!("f16 not checked: the adapter has no SHADER_F16");
    }
    let pair = Pair::new(device);
    every_op(&pair, &dtypes);
    let shapes = [
        (3, 70, 12, 32),
        (2, 33, 3, 48),
        (2, 5, 2, 64),
        (3, 65, 2, 160),
    ];
    attention_shapes(&pair, &shapes, &dtypes);
}

#[test]
fn bf16_is_unsupported_not_wrong() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let pair = Pair::new(device);
    let rt = &pair.gpu;
    let x = rt.from_f32_as(&[1.0; 8], &[2, 4], DType::BF16).unwrap();
    let w = rt.from_f32_as(&[1.0; 8], &[2, 4], DType::BF16).unwrap();
    match rt.linear(&x, &w, None) {
        Err(RuntimeError::Unsupported { op, dtype, backend }) => {
            assert_eq!((op, dtype, backend), ("gemm", DType::BF16, "wgpu"));
        }
        Err(e) => panic!("expected Unsupported, got {e}"),
        Ok(_) => panic!("expected Unsupported, got a result"),
    }
}
