//! Sentence-transformers mean pooling: [`mean_pool_f32`] averages the token states a mask keeps.
//!
//! Promises: sums are accumulated in f64; masked positions are never read into the sum; a row with
//! nothing kept pools to zeros (the denominator is at least 1e-9).

use super::check_len;

/// `out[b] = sum_s mask[b, s] * x[b, s, :] / max(sum_s mask[b, s], 1e-9)`   (sentence-transformers mean pooling; x is `[batch, seq, dim]`).
/// Shapes: x is [batch, seq, dim], mask is [batch, seq], out is [batch, dim].
/// Sums are accumulated in f64; positions with mask 0 are skipped (never read into the sum).
pub fn mean_pool_f32(
    x: &[f32],
    mask: &[f32],
    batch: usize,
    seq: usize,
    dim: usize,
    out: &mut [f32],
) {
    const CHUNK: usize = 64;
    check_len("mean_pool: x", x.len(), batch * seq * dim);
    check_len("mean_pool: mask", mask.len(), batch * seq);
    check_len("mean_pool: out", out.len(), batch * dim);
    if out.is_empty() {
        return;
    }
    for (b, ob) in out.chunks_exact_mut(dim).enumerate() {
        let mb = &mask[b * seq..(b + 1) * seq];
        let denom = mb.iter().map(|&m| m as f64).sum::<f64>().max(1e-9);
        for (ci, oc) in ob.chunks_mut(CHUNK).enumerate() {
            let d0 = ci * CHUNK;
            let mut acc = [0.0f64; CHUNK];
            for (s, &m) in mb.iter().enumerate() {
                if m == 0.0 {
                    continue;
                }
                let xs = &x[(b * seq + s) * dim + d0..][..oc.len()];
                acc.iter_mut()
                    .zip(xs)
                    .for_each(|(a, &v)| *a += m as f64 * v as f64);
            }
            oc.iter_mut()
                .zip(&acc)
                .for_each(|(o, &a)| *o = (a / denom) as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::test_util::{assert_close, Rng};

    #[test]
    fn mean_pool_partial_masks() {
        let mut rng = Rng(51);
        let (batch, seq, dim) = (3usize, 11usize, 130usize);
        let x = rng.vec(batch * seq * dim);
        let mut mask = vec![1.0f32; batch * seq];
        mask[seq + 7..2 * seq].fill(0.0); // batch 1: padded tail
        mask[seq + 2] = 0.0; // and a hole
        mask[2 * seq..].fill(0.0); // batch 2: nothing to pool
        let mut want = vec![0.0f64; batch * dim];
        for b in 0..batch {
            let denom = mask[b * seq..][..seq]
                .iter()
                .map(|&m| m as f64)
                .sum::<f64>()
                .max(1e-9);
            for d in 0..dim {
                let s: f64 = (0..seq)
                    .map(|s| mask[b * seq + s] as f64 * x[(b * seq + s) * dim + d] as f64)
                    .sum();
                want[b * dim + d] = s / denom;
            }
        }
        let mut out = vec![f32::NAN; batch * dim];
        mean_pool_f32(&x, &mask, batch, seq, dim, &mut out);
        assert_close(&out, &want, 1e-6, 1e-6, "mean_pool");
        assert!(out[2 * dim..].iter().all(|&v| v == 0.0));
    }
}
