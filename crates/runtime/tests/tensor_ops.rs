//! The tensor layer on the CPU backend: each op against a host reference, and shape errors.

mod common;

use braid_runtime::ops::{Gelu, GemmSpec, MatStrides};
use braid_runtime::{DType, RuntimeConfig, RuntimeError};
use common::cpu_runtime;

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "element {i}: {x} vs {y}"
        );
    }
}

#[test]
fn linear_layer_norm_gelu_pool_normalize_match_host_reference() {
    let rt = cpu_runtime(RuntimeConfig::default());
    // x [2, 3, 4] (batch 2, seq 3, dim 4), weight [5, 4], bias [5].
    let x: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
    let w: Vec<f32> = (0..20).map(|i| (i as f32 * 0.11).cos()).collect();
    let b: Vec<f32> = (0..5).map(|i| i as f32 * 0.1).collect();
    let (tx, tw, tb) = (
        rt.from_f32(&x, &[2, 3, 4]).unwrap(),
        rt.from_f32(&w, &[5, 4]).unwrap(),
        rt.from_f32(&b, &[5]).unwrap(),
    );
    let y = rt.linear(&tx, &tw, Some(&tb)).unwrap();
    assert_eq!(y.shape(), [2, 3, 5]);
    let mut want = vec![0f32; 30];
    for r in 0..6 {
        for o in 0..5 {
            want[r * 5 + o] = b[o] + (0..4).map(|k| x[r * 4 + k] * w[o * 4 + k]).sum::<f32>();
        }
    }
    close(&rt.to_vec_f32(&y).unwrap(), &want, 1e-5);

    // Layer norm with residual, gamma = 1, beta = 0: each row has mean 0 and variance ~1.
    let ones = rt.full(&[4], 1.0).unwrap();
    let zeros = rt.full(&[4], 0.0).unwrap();
    let n = rt
        .layer_norm(&tx, None, Some(&tx), &ones, &zeros, 1e-12)
        .unwrap();
    for row in rt.to_vec_f32(&n).unwrap().chunks(4) {
        let mean = row.iter().sum::<f32>() / 4.0;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3, "{row:?}");
    }

    // Mean pool with the last token of sequence 1 masked, then L2 normalise.
    let mask = rt
        .from_f32(&[1.0, 1.0, 1.0, 1.0, 1.0, 0.0], &[2, 3])
        .unwrap();
    let mut pooled = rt.mean_pool(&tx, &mask).unwrap();
    rt.l2_normalize(&mut pooled).unwrap();
    let got = rt.to_vec_f32(&pooled).unwrap();
    let mut want = [0f32; 8];
    for (bi, len) in [(0usize, 3usize), (1, 2)] {
        for d in 0..4 {
            want[bi * 4 + d] = (0..len).map(|s| x[(bi * 3 + s) * 4 + d]).sum::<f32>() / len as f32;
        }
        let norm = want[bi * 4..bi * 4 + 4]
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt();
        want[bi * 4..bi * 4 + 4].iter_mut().for_each(|v| *v /= norm);
    }
    close(&got, &want, 1e-5);

    // Bias + GELU in place.
    let mut g = rt.from_f32(&[-1.0, 0.0, 1.0, 2.0], &[1, 4]).unwrap();
    rt.bias_gelu(&mut g, &zeros, Gelu::Erf).unwrap();
    close(
        &rt.to_vec_f32(&g).unwrap(),
        &[-0.158_655_25, 0.0, 0.841_344_7, 1.954_499_7],
        1e-5,
    );
}

#[test]
fn gather_softmax_and_strided_batched_gemm() {
    let rt = cpu_runtime(RuntimeConfig::default());
    let table = rt
        .from_f32(&(0..12).map(|i| i as f32).collect::<Vec<_>>(), &[4, 3])
        .unwrap();
    let ids = rt.from_u32(&[3, 0], &[2]).unwrap();
    let mut rows = rt.gather_rows(&table, &ids, None).unwrap().unwrap();
    rt.gather_rows(
        &table,
        &rt.from_u32(&[1, 1], &[2]).unwrap(),
        Some(&mut rows),
    )
    .unwrap();
    assert_eq!(
        rt.to_vec_f32(&rows).unwrap(),
        [12.0, 14.0, 16.0, 3.0, 5.0, 7.0]
    );

    let mut scores = rt
        .from_f32(&[1.0, 2.0, 3.0, 1.0, 1.0, 1.0], &[1, 2, 1, 3])
        .unwrap();
    let mask = rt.from_f32(&[1.0, 1.0, 0.0], &[1, 3]).unwrap();
    rt.masked_softmax(&mut scores, &mask, 1.0).unwrap();
    let p = rt.to_vec_f32(&scores).unwrap();
    let e = 1f32.exp();
    close(
        &p,
        &[1.0 / (1.0 + e), e / (1.0 + e), 0.0, 0.5, 0.5, 0.0],
        1e-6,
    );

    // Two heads of Q·Kᵀ read straight out of a fused [seq, 2 * 2 * head] buffer.
    let (seq, heads, hd) = (2usize, 2usize, 2usize);
    let qk: Vec<f32> = (0..seq * 2 * heads * hd).map(|i| i as f32 * 0.5).collect();
    let t = rt.from_f32(&qk, &[seq, 2 * heads * hd]).unwrap();
    let row = (2 * heads * hd) as isize;
    let spec = GemmSpec {
        m: seq,
        n: seq,
        k: hd,
        batch: [1, heads],
        a: MatStrides {
            row_stride: row,
            col_stride: 1,
            batch_stride: [0, hd as isize],
        },
        b: MatStrides {
            row_stride: 1,
            col_stride: row,
            batch_stride: [0, hd as isize],
        }
        .with_batch(0, hd as isize),
        c: MatStrides::row_major(seq).with_batch(0, (seq * seq) as isize),
        alpha: 1.0,
        beta: 0.0,
    };
    // K starts heads*hd elements into each row: an operand of the same tensor at an offset.
    let s = rt
        .gemm(
            &spec,
            &t,
            t.starting_at(heads * hd),
            None,
            &[heads, seq, seq],
        )
        .unwrap();
    let got = rt.to_vec_f32(&s).unwrap();
    for h in 0..heads {
        for i in 0..seq {
            for j in 0..seq {
                let want: f32 = (0..hd)
                    .map(|d| {
                        qk[i * row as usize + h * hd + d]
                            * qk[j * row as usize + heads * hd + h * hd + d]
                    })
                    .sum();
                assert!((got[h * seq * seq + i * seq + j] - want).abs() < 1e-4);
            }
        }
    }
    // An operand whose offset and strides run past its end is refused, not read out of bounds.
    let err = rt
        .gemm(
            &spec,
            &t,
            t.starting_at(heads * hd + 1),
            None,
            &[heads, seq, seq],
        )
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::Shape { op: "gemm", .. }),
        "{err}"
    );
}

#[test]
fn shape_and_dtype_errors_say_what_is_wrong() {
    let rt = cpu_runtime(RuntimeConfig::default());
    let x = rt.full(&[2, 3], 1.0).unwrap();
    let w = rt.full(&[4, 5], 1.0).unwrap();
    let err = rt.linear(&x, &w, None).unwrap_err().to_string();
    assert!(
        err.contains("3 features") && err.contains("expects 5"),
        "{err}"
    );
    let err = rt.from_f32(&[1.0, 2.0], &[3]).unwrap_err().to_string();
    assert!(err.contains("2 elements given for shape [3]"), "{err}");
    let half = rt.empty(&[2, 3], DType::F16).unwrap();
    let err = rt.l2_normalize(&mut { half }).unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::Unsupported {
                op: "l2_normalize",
                dtype: DType::F16,
                backend: "cpu"
            }
        ),
        "{err}"
    );
    let err = rt
        .full(&[6], 0.0)
        .unwrap()
        .reshape(&[4])
        .unwrap_err()
        .to_string();
    assert!(err.contains("element counts differ"), "{err}");
}

/// Host reference of `Runtime::attention`: per sequence, head and query, softmax over unmasked keys of
/// `q·k / sqrt(hd)`, times V; a query with every key masked gets zeros.
fn attention_reference(
    qkv: &[f32],
    mask: &[f32],
    batch: usize,
    seq: usize,
    heads: usize,
    hd: usize,
) -> Vec<f32> {
    let hidden = heads * hd;
    let at = |b: usize, t: usize, part: usize, h: usize, d: usize| {
        qkv[(b * seq + t) * 3 * hidden + part * hidden + h * hd + d] as f64
    };
    let mut out = vec![0f32; batch * seq * hidden];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..seq {
                let scores: Vec<Option<f64>> = (0..seq)
                    .map(|j| {
                        (mask[b * seq + j] != 0.0).then(|| {
                            (0..hd)
                                .map(|d| at(b, i, 0, h, d) * at(b, j, 1, h, d))
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                    })
                    .collect();
                let top = scores
                    .iter()
                    .flatten()
                    .fold(f64::NEG_INFINITY, |a, &v| a.max(v));
                let weights: Vec<f64> = scores
                    .iter()
                    .map(|s| s.map_or(0.0, |v| (v - top).exp()))
                    .collect();
                let total: f64 = weights.iter().sum();
                for d in 0..hd {
                    let v: f64 = (0..seq).map(|j| weights[j] * at(b, j, 2, h, d)).sum();
                    out[(b * seq + i) * hidden + h * hd + d] =
                        if total > 0.0 { (v / total) as f32 } else { 0.0 };
                }
            }
        }
    }
    out
}

#[test]
fn attention_over_fused_qkv_matches_a_host_reference_and_masks_keys() {
    let rt = cpu_runtime(RuntimeConfig::default());
    let (batch, seq, heads, hd) = (3usize, 5usize, 2usize, 4usize);
    let qkv: Vec<f32> = (0..batch * seq * 3 * heads * hd)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.8)
        .collect();
    // Sequence 0 full, sequence 1 padded after 2 tokens, sequence 2 fully masked.
    let mut mask = vec![1.0f32; batch * seq];
    mask[seq + 2..2 * seq].fill(0.0);
    mask[2 * seq..].fill(0.0);
    let t = rt.from_f32(&qkv, &[batch * seq, 3 * heads * hd]).unwrap();
    let m = rt.from_f32(&mask, &[batch, seq]).unwrap();
    let out = rt.attention(&t, &m, heads).unwrap();
    assert_eq!(out.shape(), [batch * seq, heads * hd]);
    let want = attention_reference(&qkv, &mask, batch, seq, heads, hd);
    close(&rt.to_vec_f32(&out).unwrap(), &want, 1e-5);

    let err = rt.attention(&t, &m, 5).unwrap_err().to_string();
    assert!(err.contains("multiple of 5 heads"), "{err}");
}

#[test]
fn layer_norm_adds_bias_and_residual_before_normalising() {
    let rt = cpu_runtime(RuntimeConfig::default());
    let x = [0.5f32, -1.0, 2.0, 0.25, 1.5, -0.75, 0.0, 3.0];
    let bias = [0.1f32, 0.2, -0.3, 0.4];
    let residual = [1.0f32, 0.0, -1.0, 0.5, 0.25, 0.25, 0.25, 0.25];
    let gamma = [1.0f32, 2.0, 0.5, 1.0];
    let beta = [0.0f32, 0.1, 0.2, 0.3];
    let up = |v: &[f32], shape: &[usize]| rt.from_f32(v, shape).unwrap();
    let out = rt
        .layer_norm(
            &up(&x, &[2, 4]),
            Some(&up(&bias, &[4])),
            Some(&up(&residual, &[2, 4])),
            &up(&gamma, &[4]),
            &up(&beta, &[4]),
            1e-12,
        )
        .unwrap();
    let mut want = Vec::new();
    for r in 0..2 {
        let v: Vec<f32> = (0..4)
            .map(|c| x[r * 4 + c] + bias[c] + residual[r * 4 + c])
            .collect();
        let mean = v.iter().sum::<f32>() / 4.0;
        let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f32>() / 4.0;
        want.extend((0..4).map(|c| (v[c] - mean) / var.sqrt() * gamma[c] + beta[c]));
    }
    close(&rt.to_vec_f32(&out).unwrap(), &want, 1e-5);
}

#[test]
fn half_tensors_round_trip_and_mixed_dtypes_are_refused() {
    let rt = cpu_runtime(RuntimeConfig::default());
    let values = [1.0f32, -2.5, 0.333_333_34, 65504.0, 1e-3];
    for (dtype, tolerance) in [(DType::F16, 1e-3), (DType::BF16, 8e-3)] {
        let t = rt.from_f32_as(&values, &[5], dtype).unwrap();
        assert_eq!(t.dtype(), dtype);
        assert_eq!(t.buffer().len(), 10, "two bytes per element");
        close(&rt.to_vec_f32(&t).unwrap(), &values, tolerance);
    }
    // The CPU backend computes in f32 only, and says so; mixing dtypes is refused by the tensor layer.
    let x16 = rt.from_f32_as(&values, &[1, 5], DType::F16).unwrap();
    let bias16 = rt.from_f32_as(&values, &[5], DType::F16).unwrap();
    let err = rt.bias_gelu(&mut { x16 }, &bias16, Gelu::Erf).unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::Unsupported {
                op: "bias_gelu",
                dtype: DType::F16,
                backend: "cpu"
            }
        ),
        "{err}"
    );
    let x32 = rt.from_f32(&values, &[1, 5]).unwrap();
    let err = rt
        .bias_gelu(&mut { x32 }, &bias16, Gelu::Erf)
        .unwrap_err()
        .to_string();
    assert!(err.contains("operands are f32 and f16"), "{err}");
    let ids = rt.from_u32(&[0], &[1]).unwrap();
    let err = rt.mean_pool(
        &ids.reshape(&[1, 1, 1]).unwrap(),
        &rt.full(&[1, 1], 1.0).unwrap(),
    );
    assert!(err.unwrap_err().to_string().contains("ids, not values"));
}

#[test]
fn packed_attention_and_mean_pool_equal_the_padded_ops_bit_for_bit() {
    let rt = cpu_runtime(RuntimeConfig::default());
    let (heads, hd, lengths) = (3usize, 8usize, [7usize, 0, 30, 1, 12]);
    let (batch, seq, width) = (lengths.len(), 30usize, 3 * heads * hd);
    let mut state = 1u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let padded_qkv: Vec<f32> = (0..batch * seq * width).map(|_| next()).collect();
    let mut mask = vec![0f32; batch * seq];
    let (mut packed_qkv, mut offsets) = (Vec::new(), vec![0u32]);
    for (b, &len) in lengths.iter().enumerate() {
        mask[b * seq..b * seq + len].fill(1.0);
        packed_qkv.extend_from_slice(&padded_qkv[b * seq * width..(b * seq + len) * width]);
        offsets.push(offsets.last().unwrap() + len as u32);
    }
    let tokens = *offsets.last().unwrap() as usize;
    // Rows past the last sequence (a rounded-up packed matrix) hold NaN: nothing may read them.
    let rows = tokens + 5;
    packed_qkv.resize(rows * width, f32::NAN);

    let qkv = rt.from_f32(&padded_qkv, &[batch * seq, width]).unwrap();
    let mask_t = rt.from_f32(&mask, &[batch, seq]).unwrap();
    let context = rt.attention(&qkv, &mask_t, heads).unwrap();
    let context_rows = rt.to_vec_f32(&context).unwrap();
    let pooled = rt
        .mean_pool(
            &context.reshape(&[batch, seq, heads * hd]).unwrap(),
            &mask_t,
        )
        .unwrap();
    let (context, pooled) = (context_rows, rt.to_vec_f32(&pooled).unwrap());

    let sequences = rt.packed_sequences(&offsets, rows).unwrap();
    assert_eq!(
        (
            sequences.sequences(),
            sequences.tokens(),
            sequences.longest()
        ),
        (batch, tokens, seq)
    );
    assert_eq!(sequences.rows(), rows);
    let qkv = rt.from_f32(&packed_qkv, &[rows, width]).unwrap();
    let ones = rt.from_f32(&vec![1.0; rows], &[rows]).unwrap();
    let packed_context = rt.attention_packed(&qkv, &ones, &sequences, heads).unwrap();
    let packed_pooled = rt
        .mean_pool_packed(&packed_context, &ones, &sequences)
        .unwrap();
    let packed_context = rt.to_vec_f32(&packed_context).unwrap();

    let hidden = heads * hd;
    for (b, &len) in lengths.iter().enumerate() {
        let first = offsets[b] as usize;
        let padded_rows = &context[b * seq * hidden..(b * seq + len) * hidden];
        let packed_rows = &packed_context[first * hidden..(first + len) * hidden];
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(padded_rows),
            bits(packed_rows),
            "sequence {b}'s context"
        );
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&pooled),
        bits(&rt.to_vec_f32(&packed_pooled).unwrap()),
        "pooled"
    );

    for bad in [&[][..], &[1, 3][..], &[0, 4, 2][..], &[0, 4, 9][..]] {
        let err = rt
            .packed_sequences(bad, 8)
            .err()
            .expect("bad offsets are refused");
        assert!(err.to_string().contains("offsets must start at 0"), "{err}");
    }
    let err = rt.attention_packed(
        &qkv,
        &ones,
        &rt.packed_sequences(&[0, 5], 5).unwrap(),
        heads,
    );
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("a packed batch of 5 rows"));
}
