//! The masked softmax of attention scores, in place over rows of `[batch, heads, q_len, k_len]`.
//!
//! Promises: masked keys get probability exactly 0 and a row whose keys are all masked (by the
//! mask, whatever the scores) is all zeros; a row with a kept NaN or +inf score, or whose kept
//! scores are all -inf, is all NaN, so a non-finite activation propagates instead of passing for a
//! masked row; single-threaded, deterministic, and dispatched over SSE2 / AVX2 / AVX-512F by
//! `simd_versions!` with bit-identical results.

use super::check_len;
use super::math::exp_f32;

/// In-place softmax over the last axis of scores [batch, heads, q_len, k_len], after multiplying by `scale`,
/// where key positions with mask[b * k_len + j] == 0.0 get probability exactly 0. mask is [batch, k_len] of 1.0 / 0.0.
/// A row whose keys are all masked becomes all zeros (no NaN).
/// Any nonzero mask value keeps its key.
/// Non-finite scores propagate: a row with a kept NaN or +inf score, or with only -inf kept scores,
/// becomes all NaN (the max is NaN-propagating, and "fully masked" is decided by the mask alone).
pub fn masked_softmax_f32(
    scores: &mut [f32],
    mask: &[f32],
    batch: usize,
    heads: usize,
    q_len: usize,
    k_len: usize,
    scale: f32,
) {
    let rows_per_batch = heads * q_len;
    check_len(
        "masked_softmax: scores",
        scores.len(),
        batch * rows_per_batch * k_len,
    );
    check_len("masked_softmax: mask", mask.len(), batch * k_len);
    if scores.is_empty() {
        return;
    }
    softmax_rows(scores, mask, rows_per_batch, k_len, scale);
}

simd_versions! {
    /// Masked softmax of each `k_len` row; `mask` holds one `k_len` row per
    /// block of `rows_per_batch` score rows (shapes checked by the caller).
    fn softmax_rows(scores: &mut [f32], mask: &[f32], rows_per_batch: usize, k_len: usize, scale: f32) {
        for (sb, mb) in scores.chunks_exact_mut(rows_per_batch * k_len).zip(mask.chunks_exact(k_len)) {
            // Decided by the mask, not by a -inf max: NaN or -inf scores must not pass for masking.
            if mb.iter().all(|&m| m == 0.0) {
                sb.fill(0.0); // every key masked
                continue;
            }
            for row in sb.chunks_exact_mut(k_len) {
                // Masked keys become -inf, so they exp to exactly 0 below.
                for (s, &m) in row.iter_mut().zip(mb) {
                    *s = if m != 0.0 { *s * scale } else { f32::NEG_INFINITY };
                }
                let mut lanes = [f32::NEG_INFINITY; 8];
                let chunks = row.chunks_exact(8);
                let mut max = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| max_nan(a, b));
                for c in chunks {
                    for (l, &v) in lanes.iter_mut().zip(c) {
                        *l = max_nan(*l, v);
                    }
                }
                max = lanes.iter().fold(max, |a, &b| max_nan(a, b));
                // Some key is kept. A NaN max (a NaN score), a +inf one (inf - inf) and a -inf one
                // (only -inf kept scores: -inf - -inf) all make every exp below NaN.
                for s in row.iter_mut() {
                    *s = exp_f32(*s - max);
                }
                let sum = sum_f32(row);
                let inv = 1.0 / sum;
                for s in row.iter_mut() {
                    *s *= inv;
                }
            }
        }
    }
}

/// The larger of `a` and `b`, NaN if either is (`f32::max` returns the other operand instead).
#[inline(always)]
fn max_nan(a: f32, b: f32) -> f32 {
    if a > b || a.is_nan() {
        a
    } else {
        b
    }
}

/// Sum of `x` over eight independent f32 lanes (vectorisable, fixed order).
#[inline(always)]
fn sum_f32(x: &[f32]) -> f32 {
    // Element `j` always goes to lane `j % 8`, tail included: appending zeros (a padded key) changes
    // no lane's sum, so a row's result does not depend on how far the batch padded it.
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += v;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::test_util::{assert_close, Rng};

    #[test]
    fn masked_softmax_matches_f64_and_masks_exactly() {
        let mut rng = Rng(31);
        let (batch, heads, q_len, k_len) = (4usize, 2usize, 3usize, 9usize);
        let scale = 0.35;
        let mut mask = vec![1.0f32; batch * k_len];
        // batch 1: zeros in the middle; batch 2: trailing padding; batch 3: fully masked.
        for j in [3, 4, 6] {
            mask[k_len + j] = 0.0;
        }
        for j in 5..k_len {
            mask[2 * k_len + j] = 0.0;
        }
        mask[3 * k_len..].fill(0.0);
        let scores: Vec<f32> = rng
            .vec(batch * heads * q_len * k_len)
            .iter()
            .map(|v| v * 20.0)
            .collect();
        let mut want = Vec::new();
        for (row_i, row) in scores.chunks(k_len).enumerate() {
            let m = &mask[(row_i / (heads * q_len)) * k_len..][..k_len];
            let mx = row
                .iter()
                .zip(m)
                .filter(|(_, &mk)| mk != 0.0)
                .map(|(&s, _)| s as f64 * scale as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = row
                .iter()
                .zip(m)
                .map(|(&s, &mk)| {
                    if mk != 0.0 {
                        (s as f64 * scale as f64 - mx).exp()
                    } else {
                        0.0
                    }
                })
                .collect();
            let sum: f64 = e.iter().sum();
            want.extend(e.iter().map(|v| if sum > 0.0 { v / sum } else { 0.0 }));
        }
        let mut got = scores.clone();
        masked_softmax_f32(&mut got, &mask, batch, heads, q_len, k_len, scale);
        assert_close(&got, &want, 1e-6, 1e-5, "masked_softmax");
        for (i, &g) in got.iter().enumerate() {
            let b = i / (heads * q_len * k_len);
            if mask[b * k_len + i % k_len] == 0.0 {
                assert_eq!(g.to_bits(), 0, "masked element {i} is {g}");
            }
        }
        assert!(got[3 * heads * q_len * k_len..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn masked_softmax_propagates_non_finite_scores() {
        // Batch entry 0 keeps every key but key 3; entry 1 masks every key. Rows of 10 keys cover
        // the 8-lane loop and its remainder.
        let (q_len, k_len) = (7usize, 10usize);
        let mut mask = vec![1.0f32; 2 * k_len];
        mask[3] = 0.0;
        mask[k_len..].fill(0.0);
        let finite = |j: usize| j as f32 * 0.25 - 1.0;
        let mut scores: Vec<f32> = (0..2 * q_len * k_len).map(|i| finite(i % k_len)).collect();
        let mut set = |row: usize, j: usize, v: f32| scores[row * k_len + j] = v;
        (0..k_len).for_each(|j| set(0, j, f32::NAN)); // all NaN: was taken for a masked row
        set(1, 1, f32::NAN); // one NaN in the 8-lane part
        set(2, 9, f32::NAN); // one NaN in the remainder
        set(3, 5, f32::INFINITY);
        (0..k_len).for_each(|j| set(4, j, f32::NEG_INFINITY)); // only -inf kept scores
        set(5, 3, f32::NAN); // NaN at the masked key: ignored
                             // Row 6 stays finite. Entry 1 is fully masked, NaN scores or not.
        (0..q_len * k_len).for_each(|i| scores[q_len * k_len + i] = f32::NAN);

        masked_softmax_f32(&mut scores, &mask, 2, 1, q_len, k_len, 0.5);
        let row = |r: usize| &scores[r * k_len..(r + 1) * k_len];
        for r in 0..5 {
            assert!(row(r).iter().all(|v| v.is_nan()), "row {r}: {:?}", row(r));
        }
        for r in [5, 6] {
            let p = row(r);
            assert!(p.iter().all(|v| v.is_finite()), "row {r}: {p:?}");
            assert_eq!(p[3].to_bits(), 0, "row {r}: the masked key");
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6, "row {r}: {p:?}");
        }
        assert_eq!(row(5), row(6));
        assert!(scores[q_len * k_len..].iter().all(|&v| v.to_bits() == 0));
    }
}
