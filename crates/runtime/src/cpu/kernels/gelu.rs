//! GELU activations in place: exact (erf-based, BERT's `gelu`), the tanh approximation
//! (`gelu_new` / `gelu_pytorch_tanh`), and bias + exact GELU fused into one pass.
//!
//! Promises: element-wise and single-threaded; dispatched over SSE2 / AVX2 / AVX-512F by
//! `simd_versions!` with bit-identical results; accuracy within ~1e-6 (absolute and relative) of
//! an f64 reference, including the negative tail.

use super::check_rows;
use super::math::{erf_small, erfc_nonneg, exp_f32};

/// gelu(x) = x * Phi(x) = 0.5 * x * erfc(-x / sqrt 2), keeping full relative
/// accuracy in the negative tail; near 0 it uses 0.5 * x * (1 + erf(x / sqrt 2)).
#[inline(always)]
fn gelu_scalar(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let h = 0.5 * erfc_nonneg(z.abs());
    let tail = if x < 0.0 { x * h } else { x - x * h };
    let near0 = 0.5 * x * (1.0 + erf_small(z));
    if z.abs() < 0.5 {
        near0
    } else {
        tail
    }
}

/// Exact (erf-based) GELU in place, as BERT's `hidden_act: "gelu"`: x * 0.5 * (1 + erf(x / sqrt(2))).
/// Shape: any length. The erf used has a max abs error of ~1.3e-7 vs f64 erf.
pub fn gelu_f32(x: &mut [f32]) {
    gelu_impl(x);
}

simd_versions! {
    /// Exact GELU over `x` (see [`gelu_f32`]).
    fn gelu_impl(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = gelu_scalar(*v);
        }
    }
}

simd_versions! {
    /// tanh GELU over `x` (see [`gelu_tanh_f32`]).
    fn gelu_tanh_impl(x: &mut [f32]) {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        for v in x.iter_mut() {
            let x = *v;
            let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
            *v = x / (1.0 + exp_f32(-2.0 * u));
        }
    }
}

/// tanh-approximation GELU in place (`gelu_new` / `gelu_pytorch_tanh`):
/// 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))), evaluated as x * sigmoid(2u).
/// Shape: any length.
pub fn gelu_tanh_f32(x: &mut [f32]) {
    gelu_tanh_impl(x);
}

simd_versions! {
    /// x[r, c] = gelu(x[r, c] + bias[c]); x.len() is a multiple of bias.len() > 0.
    fn bias_gelu_rows(x: &mut [f32], bias: &[f32]) {
        for row in x.chunks_exact_mut(bias.len()) {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v = gelu_scalar(*v + b);
            }
        }
    }
}

/// bias add + GELU fused: `x[r, c] = gelu(x[r, c] + bias[c])` for rows of length `bias.len()`.
/// Shapes: x is [rows x bias.len()] (x.len() must be a multiple of bias.len()).
pub fn bias_gelu_f32(x: &mut [f32], bias: &[f32]) {
    if x.is_empty() {
        return;
    }
    check_rows("bias_gelu: x", x.len(), bias.len());
    bias_gelu_rows(x, bias);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::test_util::{assert_close, erf_ref, Rng};

    fn sweep() -> Vec<f32> {
        (-8000..=8000)
            .map(|i| i as f32 * 1e-3)
            .chain([-30.0, -12.0, 12.0, 30.0, 1e-20, -1e-20])
            .collect()
    }

    #[test]
    fn gelu_exact_matches_f64() {
        let mut x = sweep();
        let want: Vec<f64> = x
            .iter()
            .map(|&v| 0.5 * v as f64 * (1.0 + erf_ref(v as f64 / 2f64.sqrt())))
            .collect();
        gelu_f32(&mut x);
        assert_close(&x, &want, 1e-6, 1e-6, "gelu");
    }

    #[test]
    fn gelu_tanh_matches_f64() {
        let mut x = sweep();
        let want: Vec<f64> = x
            .iter()
            .map(|&v| {
                let v = v as f64;
                let u = (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v);
                0.5 * v * (1.0 + u.tanh())
            })
            .collect();
        gelu_tanh_f32(&mut x);
        assert_close(&x, &want, 1e-6, 1e-6, "gelu_tanh");
    }

    #[test]
    fn bias_gelu_matches_unfused() {
        let mut rng = Rng(11);
        let (rows, cols) = (7usize, 37usize);
        let x: Vec<f32> = rng.vec(rows * cols).iter().map(|v| v * 4.0).collect();
        let bias = rng.vec(cols);
        let mut want = x.clone();
        for (i, v) in want.iter_mut().enumerate() {
            *v += bias[i % cols];
        }
        gelu_f32(&mut want);
        let mut got = x;
        bias_gelu_f32(&mut got, &bias);
        assert_eq!(got, want);
    }

    #[test]
    #[should_panic(expected = "invariant violated:")]
    fn bias_gelu_bad_shape_panics() {
        bias_gelu_f32(&mut [0.0; 10], &[0.0; 3]);
    }
}
