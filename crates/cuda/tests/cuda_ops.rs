//! Every CUDA op against the CPU backend on the same inputs: f32 within rounding, f16 and bf16 within
//! their precision (the CPU gets the inputs rounded to the dtype first, so only the op's own arithmetic
//! differs). The fused attention is checked on MiniLM's head size, BERT-base's, the largest fused head
//! (128; f16/bf16 run these three on tensor cores), on a head size that is not a multiple of the warp,
//! odd lengths and a one-token sequence, with padded and fully masked sequences, and above the fused
//! kernel's limit (the unfused fallback). The row kernels (gathers, LayerNorm, bias + GELU) are checked at
//! widths their 16-byte-vector forms take (up to the widest) and widths that take the scalar forms.
//! Skips with a line saying so on a machine without a CUDA driver.

mod common;

use braid_cuda::CudaDevice;
use braid_runtime::cpu::CpuDevice;
use braid_runtime::ops::{Gelu, Gemm, GemmSpec, MatStrides, Ops};
use braid_runtime::{DType, Runtime, RuntimeConfig, Tensor};
use common::Rng;

/// Each dtype and the largest |gpu - cpu| / (1 + |cpu|) allowed for it.
const DTYPES: [(DType, f32); 3] = [(DType::F32, 2e-5), (DType::F16, 4e-3), (DType::BF16, 3e-2)];

/// One op chain, written once for both backends: gets the runtime, the compute dtype and the inputs.
type OpChain<D> = fn(&Runtime<D>, DType, &[Vec<f32>]) -> Tensor<D>;

fn values(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        .collect()
}

/// `data` rounded to `dtype` and back (what the GPU sees), as f32 for the CPU reference.
fn rounded(data: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F16 => data
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect(),
        DType::BF16 => data
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect(),
        _ => data.to_vec(),
    }
}

struct Pair {
    gpu: Runtime<CudaDevice>,
    cpu: Runtime<CpuDevice>,
}

impl Pair {
    fn new(device: CudaDevice) -> Self {
        Self {
            gpu: Runtime::new(device, RuntimeConfig::default()).unwrap(),
            cpu: Runtime::new(CpuDevice::new(), RuntimeConfig::default()).unwrap(),
        }
    }

    /// Runs `gpu` in `dtype` on `inputs` and `cpu` in f32 on the inputs rounded to `dtype` (the same
    /// chain, instantiated for each backend) and asserts they agree within `tolerance`.
    fn check(
        &self,
        what: &str,
        (dtype, tolerance): (DType, f32),
        inputs: &[Vec<f32>],
        gpu: OpChain<CudaDevice>,
        cpu: OpChain<CpuDevice>,
    ) {
        let rounded_inputs: Vec<Vec<f32>> = inputs.iter().map(|v| rounded(v, dtype)).collect();
        let got = self.gpu.to_vec_f32(&gpu(&self.gpu, dtype, inputs)).unwrap();
        let want = self
            .cpu
            .to_vec_f32(&cpu(&self.cpu, DType::F32, &rounded_inputs))
            .unwrap();
        assert_eq!(got.len(), want.len(), "{what} {dtype}: lengths");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs() / (1.0 + w.abs()))
            .fold(0f32, f32::max);
        assert!(
            worst <= tolerance,
            "{what} {dtype}: worst relative difference {worst:.3e} > {tolerance:.1e}"
        );
        println!("{what:>26} {dtype:>4}: worst relative difference {worst:.2e}");
    }
}

/// `check` with the chain `f` instantiated for both backends.
macro_rules! check_both {
    ($pair:expr, $what:expr, $dtype:expr, $inputs:expr, $f:ident) => {
        $pair.check($what, $dtype, $inputs, $f::<CudaDevice>, $f::<CpuDevice>)
    };
}

const ROWS: usize = 37;
const K: usize = 96;
const N: usize = 80;

fn up<D: Ops>(rt: &Runtime<D>, dtype: DType, data: &[f32], shape: &[usize]) -> Tensor<D> {
    rt.from_f32_as(data, shape, dtype).unwrap()
}

/// inputs: x [ROWS, K], w [N, K], b [N].
fn linear_with_bias<D: Ops>(rt: &Runtime<D>, dt: DType, v: &[Vec<f32>]) -> Tensor<D> {
    let (x, w, b) = (
        up(rt, dt, &v[0], &[ROWS, K]),
        up(rt, dt, &v[1], &[N, K]),
        up(rt, dt, &v[2], &[N]),
    );
    rt.linear(&x, &w, Some(&b)).unwrap()
}

/// inputs: y [ROWS, N], b, gamma, beta [N]: LayerNorm(y + b + y).
fn layer_norm_bias_residual<D: Ops>(rt: &Runtime<D>, dt: DType, v: &[Vec<f32>]) -> Tensor<D> {
    let y = up(rt, dt, &v[0], &[ROWS, N]);
    let [b, gamma, beta] = [1, 2, 3].map(|i| up(rt, dt, &v[i], &[N]));
    rt.layer_norm(&y, Some(&b), Some(&y), &gamma, &beta, 1e-12)
        .unwrap()
}

/// inputs: y [ROWS, N], b [N].
fn bias_gelu<D: Ops>(rt: &Runtime<D>, dt: DType, v: &[Vec<f32>]) -> Tensor<D> {
    let mut y = up(rt, dt, &v[0], &[ROWS, N]);
    rt.bias_gelu(&mut y, &up(rt, dt, &v[1], &[N]), Gelu::Erf)
        .unwrap();
    y
}

/// inputs: table [ROWS, N]: two gathers (one accumulating), a masked mean over the rows, L2 norm.
fn gather_pool_normalize<D: Ops>(rt: &Runtime<D>, dt: DType, v: &[Vec<f32>]) -> Tensor<D> {
    let table = up(rt, dt, &v[0], &[ROWS, N]);
    let ids: Vec<u32> = (0..ROWS as u32).rev().collect();
    let ids = rt.from_u32(&ids, &[ROWS]).unwrap();
    let mut g = rt.gather_rows(&table, &ids, None).unwrap().unwrap();
    rt.gather_rows(&table, &ids, Some(&mut g)).unwrap();
    let mut mask = vec![1f32; ROWS];
    mask[30..].fill(0.0);
    let mask = rt.from_f32(&mask, &[1, ROWS]).unwrap();
    let mut pooled = rt
        .mean_pool(&g.reshape(&[1, ROWS, N]).unwrap(), &mask)
        .unwrap();
    rt.l2_normalize(&mut pooled).unwrap();
    pooled
}

/// inputs: qk [2 * 9, 3 * 2 * 8]: two heads of Q·Kᵀ read as strided views of one fused matrix, K a view
/// starting `heads * head_dim` elements into the buffer. The tensor layer takes whole tensors, so this
/// chain encodes the op descriptor itself, on the current stream.
fn strided_batched_gemm<D: Ops>(rt: &Runtime<D>, dt: DType, v: &[Vec<f32>]) -> Tensor<D> {
    let (seq, heads, hd) = (9usize, 2usize, 8usize);
    let row = (3 * heads * hd) as isize;
    let spec = GemmSpec {
        m: seq,
        n: seq,
        k: hd,
        batch: [2, heads],
        a: MatStrides::row_major(3 * heads * hd).with_batch(seq as isize * row, hd as isize),
        b: MatStrides {
            row_stride: 1,
            col_stride: row,
            batch_stride: [seq as isize * row, hd as isize],
        },
        c: MatStrides::row_major(seq)
            .with_batch((heads * seq * seq) as isize, (seq * seq) as isize),
        alpha: 0.5,
        beta: 0.0,
    };
    let t = up(rt, dt, &v[0], &[2 * seq, 3 * heads * hd]);
    let out = rt.empty(&[2, heads, seq, seq], dt).unwrap();
    let stream = rt.current_stream().unwrap();
    rt.device()
        .gemm(
            stream.raw().unwrap(),
            &Gemm {
                dtype: dt,
                spec,
                a: t.view(),
                b: t.view().skip(heads * hd * dt.size()),
                c: out.view(),
                bias: None,
            },
        )
        .unwrap();
    stream.encoded().unwrap();
    out
}

/// inputs: shape [batch, seq, heads, head_dim] (as f32), qkv, mask [batch, seq].
fn attention<D: Ops>(rt: &Runtime<D>, dt: DType, v: &[Vec<f32>]) -> Tensor<D> {
    let [batch, seq, heads, hd] = [0, 1, 2, 3].map(|i| v[0][i] as usize);
    let qkv = up(rt, dt, &v[1], &[batch * seq, 3 * heads * hd]);
    let mask = rt.from_f32(&v[2], &[batch, seq]).unwrap();
    rt.attention(&qkv, &mask, heads).unwrap()
}

#[test]
fn every_op_matches_the_cpu_backend_in_every_dtype() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    assert_eq!(
        device.compute_dtypes(),
        [DType::F32, DType::F16, DType::BF16]
    );
    let pair = Pair::new(device);
    let mut rng = Rng::new(7);
    let mut vecs = |lens: &[usize]| {
        lens.iter()
            .map(|&n| values(&mut rng, n))
            .collect::<Vec<_>>()
    };
    let linear_inputs = vecs(&[ROWS * K, N * K, N]);
    let norm_inputs = vecs(&[ROWS * N, N, N, N]);
    let gelu_inputs = vecs(&[ROWS * N, N]);
    let table = vecs(&[ROWS * N]);
    let qk = vecs(&[2 * 9 * 3 * 2 * 8]);
    for dtype in DTYPES {
        check_both!(
            pair,
            "linear + bias",
            dtype,
            &linear_inputs,
            linear_with_bias
        );
        // LayerNorm outputs are ~N(0, 1) times gamma: a looser bound for the rounded dtypes.
        let loose = (dtype.0, dtype.1 * 4.0);
        check_both!(
            pair,
            "layer_norm + bias + residual",
            loose,
            &norm_inputs,
            layer_norm_bias_residual
        );
        check_both!(pair, "bias_gelu", dtype, &gelu_inputs, bias_gelu);
        check_both!(
            pair,
            "gather + mean_pool + l2",
            dtype,
            &table,
            gather_pool_normalize
        );
        check_both!(
            pair,
            "strided batched gemm",
            dtype,
            &qk,
            strided_batched_gemm
        );
    }
}

/// inputs: [rows, cols] (as f32), y [rows, cols], b, gamma, beta [cols]: g = y's rows reversed plus y
/// (two gathers, one accumulating), LayerNorm(g + b + y), then bias + GELU (tanh) on it with b.
fn rows_of_width<D: Ops>(rt: &Runtime<D>, dt: DType, v: &[Vec<f32>]) -> Tensor<D> {
    let [rows, cols] = [0, 1].map(|i| v[0][i] as usize);
    let y = up(rt, dt, &v[1], &[rows, cols]);
    let [b, gamma, beta] = [2, 3, 4].map(|i| up(rt, dt, &v[i], &[cols]));
    let reversed: Vec<u32> = (0..rows as u32).rev().collect();
    let in_order: Vec<u32> = (0..rows as u32).collect();
    let [reversed, in_order] = [reversed, in_order].map(|ids| rt.from_u32(&ids, &[rows]).unwrap());
    let mut g = rt.gather_rows(&y, &reversed, None).unwrap().unwrap();
    rt.gather_rows(&y, &in_order, Some(&mut g)).unwrap();
    let mut x = rt
        .layer_norm(&g, Some(&b), Some(&y), &gamma, &beta, 1e-12)
        .unwrap();
    rt.bias_gelu(&mut x, &b, Gelu::Tanh).unwrap();
    x
}

#[test]
fn row_kernels_match_the_cpu_backend_at_every_width() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let pair = Pair::new(device);
    let mut rng = Rng::new(13);
    // 384 (MiniLM: 16 lanes a row in f16, 32 in f32), 512 (the widest 16-lane f16 row) and 1024 (the
    // widest f16 row of the vector LayerNorm; f32 takes the scalar one) take the vector kernels; 83 (not
    // a multiple of the vector) and 1032 (too wide) the scalar ones. 9 rows leave a block part empty.
    for (rows, cols) in [(9, 384), (3, 512), (3, 1024), (5, 83), (2, 1032)] {
        let mut inputs = vec![
            vec![rows as f32, cols as f32],
            values(&mut rng, rows * cols),
        ];
        inputs.extend((0..3).map(|_| values(&mut rng, cols)));
        for dtype in DTYPES {
            let loose = (dtype.0, dtype.1 * 4.0);
            let what = format!("gather + layer_norm + gelu {rows}x{cols}");
            check_both!(pair, &what, loose, &inputs, rows_of_width);
        }
    }
}

#[test]
fn fused_attention_matches_the_unfused_cpu_path() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let pair = Pair::new(device);
    let mut rng = Rng::new(11);
    // (batch, seq, heads, head_dim): MiniLM's heads over more keys than one tile, a head that is not a
    // multiple of 32, a sequence shorter than one tile, and a head above the fused limit (fallback).
    for (batch, seq, heads, hd) in [
        (3, 70, 12, 32),
        (2, 33, 3, 48),
        (2, 5, 2, 64),
        (3, 200, 2, 64),
        (3, 129, 4, 128),
        (1, 1, 2, 32),
        (2, 20, 2, 160),
    ] {
        let mask = common::padded_and_masked(batch, seq);
        let inputs = vec![
            vec![batch as f32, seq as f32, heads as f32, hd as f32],
            values(&mut rng, batch * seq * 3 * heads * hd),
            mask,
        ];
        let what = format!("attention {batch}x{seq}x{heads}x{hd}");
        for dtype in DTYPES {
            check_both!(pair, &what, dtype, &inputs, attention);
        }
    }
}

#[test]
fn packed_attention_and_mean_pool_match_the_cpu_backend() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    use braid_runtime::conformance::ops as conformance;
    let pair = conformance::Pair::new(device);
    // Uneven sequences, an empty one, one longer than a query block and than two key tiles, one token;
    // MiniLM's and BERT-base's heads (tensor cores in f16/bf16), a head past the fused limit (per
    // sequence, unfused), and a head the tensor cores do not take.
    let batches: [(&[usize], usize, usize); 4] = [
        (&[7, 0, 130, 1, 64, 19], 12, 32),
        (&[70, 3, 33], 4, 64),
        (&[5, 21, 2], 2, 48),
        (&[9, 4], 2, 160),
    ];
    conformance::packed_batches(&pair, &batches, &DTYPES);
}
