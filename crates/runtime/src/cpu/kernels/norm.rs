//! Row normalisations: residual + LayerNorm ([`layer_norm_f32`], with the preceding linear's bias
//! folded in) and L2 normalisation of embeddings ([`l2_normalize_f32`]).
//!
//! Promises: single-threaded and deterministic; means, variances and norms are accumulated in f64
//! over eight fixed lanes (the order never depends on the CPU); a zero row stays zero under L2
//! normalisation.

use super::elementwise::add_f32;
use super::{check_len, check_rows};

/// Sum of `f(a[i], b[i])` in f64 over eight independent lanes (vectorisable, fixed order).
#[inline(always)]
fn sum_f64(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = [0.0f64; 8];
    for (xa, xb) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += f(xa[l], xb[l]);
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&x, &y) in ra.iter().zip(rb) {
        s += f(x, y);
    }
    s
}

/// Normalises one row of `v = x + r` (with `add` combining the two) into `out`.
#[inline(always)]
fn layer_norm_row(v: &[f32], gamma: &[f32], beta: &[f32], out: &mut [f32], eps: f32) {
    let cols = v.len() as f64;
    let mean = sum_f64(v, v, |a, _| a as f64) / cols;
    let var = sum_f64(v, v, |a, _| {
        let d = a as f64 - mean;
        d * d
    }) / cols;
    let rstd = (1.0 / (var + eps as f64).sqrt()) as f32;
    for (((o, &a), &g), &bt) in out.iter_mut().zip(v).zip(gamma).zip(beta) {
        *o = ((a as f64 - mean) as f32) * rstd * g + bt;
    }
}

/// The inputs of [`layer_norm_f32`]: x, residual and out are `[rows x cols]`; bias, gamma and beta
/// are `[cols]`.
pub struct LayerNormInputs<'a> {
    /// `[rows x cols]`.
    pub x: &'a [f32],
    /// `[cols]`, added to every row of x first.
    pub bias: Option<&'a [f32]>,
    /// `[rows x cols]`, added to x first.
    pub residual: Option<&'a [f32]>,
    /// `[cols]`.
    pub gamma: &'a [f32],
    /// `[cols]`.
    pub beta: &'a [f32],
    /// Row length.
    pub cols: usize,
    /// Added to the variance.
    pub eps: f32,
}

/// `out[r] = LayerNorm(x[r] + bias + residual[r]) * gamma + beta` over rows of length `cols` (bias and
/// residual optional). `(x + bias) + residual` is rounded to f32 first; mean and (biased) variance are
/// accumulated in f64.
pub fn layer_norm_f32(inputs: &LayerNormInputs<'_>, out: &mut [f32]) {
    let LayerNormInputs {
        x,
        bias,
        residual,
        gamma,
        beta,
        cols,
        eps,
    } = *inputs;
    check_len("layer_norm: out", out.len(), x.len());
    if x.is_empty() {
        return;
    }
    check_rows("layer_norm: x", x.len(), cols);
    check_len("layer_norm: gamma", gamma.len(), cols);
    check_len("layer_norm: beta", beta.len(), cols);
    if let Some(b) = bias {
        check_len("layer_norm: bias", b.len(), cols);
    }
    if let Some(r) = residual {
        check_len("layer_norm: residual", r.len(), x.len());
    }
    let mut sum = vec![0f32; cols];
    for (r, (xr, o)) in x
        .chunks_exact(cols)
        .zip(out.chunks_exact_mut(cols))
        .enumerate()
    {
        sum.copy_from_slice(xr);
        if let Some(b) = bias {
            add_f32(&mut sum, b);
        }
        if let Some(res) = residual {
            add_f32(&mut sum, &res[r * cols..(r + 1) * cols]);
        }
        layer_norm_row(&sum, gamma, beta, o, eps);
    }
}

/// Each row of length dim divided by max(L2 norm, 1e-12), in place (torch.nn.functional.normalize).
/// Shapes: x is [rows x dim]. The norm is accumulated in f64; a zero row stays zero.
pub fn l2_normalize_f32(x: &mut [f32], dim: usize) {
    if x.is_empty() {
        return;
    }
    check_rows("l2_normalize: x", x.len(), dim);
    for row in x.chunks_exact_mut(dim) {
        let norm = sum_f64(row, row, |a, _| a as f64 * a as f64).sqrt();
        let inv = 1.0 / norm.max(1e-12);
        row.iter_mut().for_each(|v| *v = (*v as f64 * inv) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::test_util::{assert_close, Rng};

    fn layer_norm_ref(v: &[f64], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f64> {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        v.iter()
            .enumerate()
            .map(|(i, x)| (x - mean) * rstd * gamma[i] as f64 + beta[i] as f64)
            .collect()
    }

    #[test]
    fn layer_norm_with_and_without_residual() {
        let mut rng = Rng(21);
        for cols in [1usize, 7, 384, 389] {
            let rows = 5;
            // Offset rows so the mean is large relative to the spread (tests accumulation accuracy).
            let x: Vec<f32> = rng
                .vec(rows * cols)
                .iter()
                .enumerate()
                .map(|(i, v)| v + (i / cols) as f32 * 30.0)
                .collect();
            let res = rng.vec(rows * cols);
            let (gamma, beta, bias_values) = (rng.vec(cols), rng.vec(cols), rng.vec(cols));
            let eps = 1e-12;
            for (bias, residual) in [
                (None, None),
                (None, Some(&res[..])),
                (Some(&bias_values[..]), None),
                (Some(&bias_values[..]), Some(&res[..])),
            ] {
                let mut want = Vec::new();
                for r in 0..rows {
                    let v: Vec<f64> = (0..cols)
                        .map(|c| {
                            let i = r * cols + c;
                            let biased = x[i] + bias.map_or(0.0, |b| b[c]);
                            residual.map_or(biased as f64, |res| (biased + res[i]) as f64)
                        })
                        .collect();
                    want.extend(layer_norm_ref(&v, &gamma, &beta, eps));
                }
                let mut out = vec![f32::NAN; rows * cols];
                let inputs = LayerNormInputs {
                    x: &x,
                    bias,
                    residual,
                    gamma: &gamma,
                    beta: &beta,
                    cols,
                    eps,
                };
                layer_norm_f32(&inputs, &mut out);
                assert_close(&out, &want, 1e-5, 1e-5, "layer_norm");
            }
        }
    }

    #[test]
    #[should_panic(expected = "invariant violated:")]
    fn layer_norm_bad_gamma_panics() {
        let mut out = [0.0; 8];
        let inputs = LayerNormInputs {
            x: &[0.0; 8],
            bias: None,
            residual: None,
            gamma: &[1.0; 3],
            beta: &[0.0; 4],
            cols: 4,
            eps: 1e-5,
        };
        layer_norm_f32(&inputs, &mut out);
    }

    #[test]
    fn l2_normalize_rows_and_zero_row() {
        let mut rng = Rng(61);
        let dim = 37;
        let mut x = rng.vec(3 * dim);
        x[dim..2 * dim].fill(0.0);
        let want: Vec<f64> = x
            .chunks(dim)
            .flat_map(|r| {
                let n = r
                    .iter()
                    .map(|&v| v as f64 * v as f64)
                    .sum::<f64>()
                    .sqrt()
                    .max(1e-12);
                r.iter().map(move |&v| v as f64 / n)
            })
            .collect();
        l2_normalize_f32(&mut x, dim);
        assert_close(&x, &want, 1e-7, 1e-6, "l2_normalize");
        assert!(x[dim..2 * dim].iter().all(|&v| v == 0.0));
    }
}
