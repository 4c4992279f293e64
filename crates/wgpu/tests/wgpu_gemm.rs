//! The wgpu GEMM kernels against the CPU backend at the shapes that pick each of them (the few-row
//! kernel up to `SMALL_GEMM_MAX_ROWS` rows, the tiled one with 64- and 128-row tiles past it), with
//! sizes that are no multiple of any tile, every operand layout (A row-major or stored transposed, B a
//! transposed weight or row-major), alpha, beta and a bias, in f32 and (where the adapter has it) f16;
//! and the fused attention against the unfused path on the CPU at MiniLM's shapes. Skips without an
//! adapter.

mod common;

use braid_runtime::conformance::ops::{attention_shapes, up, Pair};
use braid_runtime::conformance::Rng;
use braid_runtime::ops::{Gemm, GemmSpec, MatStrides, Ops};
use braid_runtime::{DType, Runtime, Tensor};
use braid_wgpu::{SMALL_GEMM_MAX_ROWS, WIDE_GRID};

/// Each dtype and the largest |wgpu - cpu| / (1 + |cpu|) allowed (as `wgpu_ops`).
const DTYPES: [(DType, f32); 2] = [(DType::F32, 2e-5), (DType::F16, 4e-3)];

/// inputs: [m, k, n, a stored transposed, b row-major (not a weight), beta, bias], A, B, C, bias.
fn gemm<D: Ops>(rt: &Runtime<D>, dt: DType, v: &[Vec<f32>]) -> Tensor<D> {
    let [m, k, n] = [0, 1, 2].map(|i| v[0][i] as usize);
    let (a_transposed, b_row_major) = (v[0][3] != 0.0, v[0][4] != 0.0);
    let (beta, has_bias) = (v[0][5], v[0][6] != 0.0);
    let a_layout = match a_transposed {
        false => MatStrides::row_major(k),
        true => MatStrides::transposed(m),
    };
    let b_layout = match b_row_major {
        false => MatStrides::transposed(k),
        true => MatStrides::row_major(n),
    };
    let spec = GemmSpec {
        m,
        n,
        k,
        batch: [1, 1],
        a: a_layout,
        b: b_layout,
        c: MatStrides::row_major(n),
        alpha: 0.75,
        beta,
    };
    let a = up(rt, dt, &v[1], &[m * k]);
    let b = up(rt, dt, &v[2], &[k * n]);
    let c = up(rt, dt, &v[3], &[m, n]);
    let bias = up(rt, dt, &v[4], &[n]);
    let stream = rt.current_stream().unwrap();
    rt.device()
        .gemm(
            stream.raw().unwrap(),
            &Gemm {
                dtype: dt,
                spec,
                a: a.view(),
                b: b.view(),
                c: c.view(),
                bias: has_bias.then(|| bias.view()),
            },
        )
        .unwrap();
    stream.encoded().unwrap();
    c
}

#[test]
fn every_gemm_kernel_matches_the_cpu_backend() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let dtypes: Vec<(DType, f32)> = (DTYPES.into_iter())
        .filter(|(d, _)| device.compute_dtypes().contains(d))
        .collect();
    let pair = Pair::new(device);
    let mut rng = Rng::new(5);
    let small = SMALL_GEMM_MAX_ROWS;
    // (m, k, n): few rows; just past the few-row kernel (64-row tiles); enough workgroups for
    // 128-row tiles (n.div_ceil(64) * m.div_ceil(128) >= WIDE_GRID). The sizes travel as f32 inputs
    // (rounded to f16 in the f16 run): all below 2048, so exact.
    let wide_n = 16 * 64 - 3;
    let wide_m = WIDE_GRID.div_ceil(16) * 128 - 5;
    let shapes = [
        (1, 384, 37),
        (12, 100, 130),
        (small, 33, 9),
        (small + 1, 97, 70),
        (200, 384, 131),
        (wide_m, 40, wide_n),
    ];
    for (i, &(m, k, n)) in shapes.iter().enumerate() {
        let (a_transposed, b_row_major) = (i % 2 == 1, i % 3 == 2);
        let beta = if i % 2 == 0 { 0.0 } else { 0.5 };
        let flags = [m, k, n].map(|x| x as f32);
        let inputs = vec![
            [
                &flags[..],
                &[f32::from(a_transposed), f32::from(b_row_major), beta, 1.0],
            ]
            .concat(),
            rng.values(m * k),
            rng.values(k * n),
            rng.values(m * n),
            rng.values(n),
        ];
        for &dtype in &dtypes {
            let what = format!("gemm {m}x{k}x{n} (case {i})");
            pair.check(&what, dtype, &inputs, gemm, gemm);
        }
    }
    // MiniLM's attention (12 heads of 32) at a batch of one short sentence and of several padded ones
    // (the block attention where the adapter holds it), and one past the block attention's 64 tokens.
    println!(
        "block attention: {}",
        pair.gpu.device().has_block_attention()
    );
    attention_shapes(
        &pair,
        &[(2, 12, 12, 32), (4, 21, 12, 32), (3, 65, 12, 32)],
        &dtypes,
    );
}
