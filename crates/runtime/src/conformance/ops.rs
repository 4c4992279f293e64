//! Every op of a backend against the CPU backend: the same op chain, written once as a generic function
//! and instantiated for both, run on the same inputs (the CPU's rounded to the backend's dtype first,
//! so only the op's own arithmetic differs) and compared element by element as
//! `|got - want| / (1 + |want|)`.
//!
//! [`every_op`] covers linear + bias, LayerNorm with bias and residual, bias + GELU (exact and tanh),
//! gather (overwrite and add) + masked mean pool + L2 norm, a strided batched GEMM over views of one
//! fused matrix, fill and add; [`attention_shapes`] the attention on several shapes with padded and
//! fully masked sequences; [`packed_batches`] attention and mean pooling over packed batches of uneven
//! (and empty) sequences.

use crate::cpu::CpuDevice;
use crate::ops::{Gelu, Gemm, GemmSpec, MatStrides, Ops};
use crate::{DType, Runtime, RuntimeConfig, Tensor};

use super::Rng;

/// One op chain, written once for both backends: gets the runtime, the compute dtype and the inputs.
pub type OpChain<D> = fn(&Runtime<D>, DType, &[Vec<f32>]) -> Tensor<D>;

/// `data` rounded to `dtype` and back (what the backend sees), as f32 for the CPU reference.
pub fn rounded(data: &[f32], dtype: DType) -> Vec<f32> {
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

/// A backend's runtime beside the CPU backend's.
pub struct Pair<G: Ops> {
    /// The backend under test.
    pub gpu: Runtime<G>,
    /// The reference.
    pub cpu: Runtime<CpuDevice>,
}

impl<G: Ops> Pair<G> {
    /// Runtimes with the default configuration on `device` and on the CPU.
    pub fn new(device: G) -> Self {
        Self {
            gpu: Runtime::new(device, RuntimeConfig::default()).unwrap(),
            cpu: Runtime::new(CpuDevice::new(), RuntimeConfig::default()).unwrap(),
        }
    }

    /// Runs `gpu` in `dtype` on `inputs` and `cpu` in f32 on the inputs rounded to `dtype` (the same
    /// chain, instantiated for each backend: pass the generic function twice) and asserts they agree
    /// within `tolerance`; returns the worst difference.
    pub fn check(
        &self,
        what: &str,
        (dtype, tolerance): (DType, f32),
        inputs: &[Vec<f32>],
        gpu: OpChain<G>,
        cpu: OpChain<CpuDevice>,
    ) -> f32 {
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
            .fold(0f32, |a, b| if b > a || b.is_nan() { b } else { a });
        assert!(
            worst <= tolerance,
            "{what} {dtype}: worst relative difference {worst:.3e} > {tolerance:.1e}"
        );
        println!("{what:>30} {dtype:>4}: worst relative difference {worst:.2e}");
        worst
    }
}

const ROWS: usize = 37;
const K: usize = 96;
const N: usize = 80;

/// `data` as a tensor of `shape` in `dtype`.
pub fn up<D: Ops>(rt: &Runtime<D>, dtype: DType, data: &[f32], shape: &[usize]) -> Tensor<D> {
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

/// inputs: y [ROWS, N], b [N]: exact GELU, then the tanh form with b again.
fn bias_gelu<D: Ops>(rt: &Runtime<D>, dt: DType, v: &[Vec<f32>]) -> Tensor<D> {
    let mut y = up(rt, dt, &v[0], &[ROWS, N]);
    let b = up(rt, dt, &v[1], &[N]);
    rt.bias_gelu(&mut y, &b, Gelu::Erf).unwrap();
    rt.bias_gelu(&mut y, &b, Gelu::Tanh).unwrap();
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

/// inputs: x, y [ROWS, N]: x + y, then filled with 0.5 where the sum's copy went (fill and add).
fn add_and_fill<D: Ops>(rt: &Runtime<D>, dt: DType, v: &[Vec<f32>]) -> Tensor<D> {
    let mut x = up(rt, dt, &v[0], &[ROWS, N]);
    let y = up(rt, dt, &v[1], &[ROWS, N]);
    rt.add_assign(&mut x, &y).unwrap();
    let filled = rt.full(&[ROWS, N], 0.5).unwrap();
    let mut sum = rt
        .from_f32_as(&rt.to_vec_f32(&filled).unwrap(), &[ROWS, N], dt)
        .unwrap();
    rt.add_assign(&mut sum, &x).unwrap();
    sum
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

/// Every op chain above (but attention) on `pair`'s backend in each of `dtypes` (dtype, tolerance).
pub fn every_op<G: Ops>(pair: &Pair<G>, dtypes: &[(DType, f32)]) {
    let mut rng = Rng::new(7);
    let mut vecs = |lens: &[usize]| lens.iter().map(|&n| rng.values(n)).collect::<Vec<_>>();
    let linear_inputs = vecs(&[ROWS * K, N * K, N]);
    let norm_inputs = vecs(&[ROWS * N, N, N, N]);
    let gelu_inputs = vecs(&[ROWS * N, N]);
    let table = vecs(&[ROWS * N]);
    let qk = vecs(&[2 * 9 * 3 * 2 * 8]);
    let sums = vecs(&[ROWS * N, ROWS * N]);
    for &dtype in dtypes {
        pair.check(
            "linear + bias",
            dtype,
            &linear_inputs,
            linear_with_bias,
            linear_with_bias,
        );
        // LayerNorm outputs are ~N(0, 1) times gamma: a looser bound for the rounded dtypes.
        let loose = (dtype.0, dtype.1 * 4.0);
        let (ln, ln_cpu) = (layer_norm_bias_residual, layer_norm_bias_residual);
        pair.check(
            "layer_norm + bias + residual",
            loose,
            &norm_inputs,
            ln,
            ln_cpu,
        );
        pair.check(
            "bias_gelu (erf, tanh)",
            dtype,
            &gelu_inputs,
            bias_gelu,
            bias_gelu,
        );
        let (pool, pool_cpu) = (gather_pool_normalize, gather_pool_normalize);
        pair.check("gather + mean_pool + l2", dtype, &table, pool, pool_cpu);
        let (gemm, gemm_cpu) = (strided_batched_gemm, strided_batched_gemm);
        pair.check("strided batched gemm", dtype, &qk, gemm, gemm_cpu);
        pair.check("add + fill", dtype, &sums, add_and_fill, add_and_fill);
    }
}

/// Attention on `shapes` (batch, seq, heads, head_dim; batch ≥ 2) in each of `dtypes`: sequence 0 full,
/// 1 padded after 3 tokens, a third (when batch > 2) fully masked (its context must be zeros).
pub fn attention_shapes<G: Ops>(
    pair: &Pair<G>,
    shapes: &[(usize, usize, usize, usize)],
    dtypes: &[(DType, f32)],
) {
    let mut rng = Rng::new(11);
    for &(batch, seq, heads, hd) in shapes {
        let mut mask = vec![1f32; batch * seq];
        mask[seq + 3.min(seq)..2 * seq].fill(0.0);
        if batch > 2 {
            mask[2 * seq..3 * seq].fill(0.0);
        }
        let inputs = vec![
            vec![batch as f32, seq as f32, heads as f32, hd as f32],
            rng.values(batch * seq * 3 * heads * hd),
            mask,
        ];
        let what = format!("attention {batch}x{seq}x{heads}x{hd}");
        for &dtype in dtypes {
            pair.check(&what, dtype, &inputs, attention, attention);
        }
    }
}

/// inputs: [heads, head_dim, lengths..] (as f32), qkv [tokens, 3 * heads * head_dim], mask [tokens]:
/// packed attention, then packed mean pooling of its context, `[sequences, hidden]` (the context itself
/// when `v[3]` is given, so both ops are checked).
fn packed_attention_pool<D: Ops>(rt: &Runtime<D>, dt: DType, v: &[Vec<f32>]) -> Tensor<D> {
    let (heads, hd) = (v[0][0] as usize, v[0][1] as usize);
    let mut offsets = vec![0u32];
    for &len in &v[0][2..] {
        offsets.push(offsets.last().unwrap() + len as u32);
    }
    let rows = *offsets.last().unwrap() as usize;
    let sequences = rt.packed_sequences(&offsets, rows).unwrap();
    let tokens = sequences.tokens();
    let qkv = up(rt, dt, &v[1], &[tokens, 3 * heads * hd]);
    let mask = rt.from_f32(&v[2], &[tokens]).unwrap();
    let context = rt.attention_packed(&qkv, &mask, &sequences, heads).unwrap();
    if v.len() > 3 {
        return context;
    }
    rt.mean_pool_packed(&context, &mask, &sequences).unwrap()
}

/// Packed attention and packed mean pooling against the CPU backend's (which runs each sequence as a
/// padded batch of one), for each `(lengths, heads, head_dim)` in each of `dtypes`; the last token of
/// the first sequence is masked, so masks are read by packed row.
pub fn packed_batches<G: Ops>(
    pair: &Pair<G>,
    batches: &[(&[usize], usize, usize)],
    dtypes: &[(DType, f32)],
) {
    let mut rng = Rng::new(13);
    for &(lengths, heads, hd) in batches {
        let tokens: usize = lengths.iter().sum();
        let mut mask = vec![1f32; tokens];
        if lengths[0] > 1 {
            mask[lengths[0] - 1] = 0.0;
        }
        let mut head = vec![heads as f32, hd as f32];
        head.extend(lengths.iter().map(|&l| l as f32));
        let pooled = vec![head, rng.values(tokens * 3 * heads * hd), mask];
        let mut context = pooled.clone();
        context.push(Vec::new());
        for &dtype in dtypes {
            let what = format!("packed {lengths:?} x{heads}x{hd}");
            pair.check(
                &format!("{what} attention"),
                dtype,
                &context,
                packed_attention_pool,
                packed_attention_pool,
            );
            pair.check(
                &format!("{what} + mean_pool"),
                dtype,
                &pooled,
                packed_attention_pool,
                packed_attention_pool,
            );
        }
    }
}
