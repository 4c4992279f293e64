//! Non-finite activations propagate through the CPU backend's softmax and attention instead of
//! passing for masked keys: a score row that is all NaN used to come out as zeros (the max skipped
//! NaN and the row looked fully masked), so NaN weights gave a finite, wrong embedding.

mod common;

use braid_runtime::RuntimeConfig;
use common::cpu_runtime;

#[test]
fn masked_softmax_propagates_nan_and_keeps_fully_masked_rows_zero() {
    let rt = cpu_runtime(RuntimeConfig::default());
    let nan = f32::NAN;
    // [batch 2, heads 1, q 3, k 4]: entry 0 keeps keys 0..3, entry 1 masks every key.
    let scores = [
        [nan, nan, nan, nan], // all NaN
        [0.5, nan, 1.0, 2.0], // one NaN
        [0.5, 1.5, 1.0, nan], // NaN only at the masked key: ignored
        [nan, nan, nan, nan], // entry 1: fully masked
        [1.0, 2.0, 3.0, 4.0],
        [nan, 0.0, 0.0, 0.0],
    ];
    let flat: Vec<f32> = scores.iter().flatten().copied().collect();
    let mut t = rt.from_f32(&flat, &[2, 1, 3, 4]).unwrap();
    let mask = rt
        .from_f32(&[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], &[2, 4])
        .unwrap();
    rt.masked_softmax(&mut t, &mask, 1.0).unwrap();
    let p = rt.to_vec_f32(&t).unwrap();
    let row = |r: usize| &p[r * 4..(r + 1) * 4];
    assert!(
        row(0).iter().all(|v| v.is_nan()),
        "all-NaN row: {:?}",
        row(0)
    );
    assert!(
        row(1).iter().all(|v| v.is_nan()),
        "one-NaN row: {:?}",
        row(1)
    );
    assert!(row(2).iter().all(|v| v.is_finite()), "{:?}", row(2));
    assert_eq!(row(2)[3], 0.0);
    assert!((row(2).iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!(
        p[12..].iter().all(|&v| v == 0.0),
        "fully masked: {:?}",
        &p[12..]
    );
}

#[test]
fn attention_with_a_nan_query_gives_nan_context_not_zeros() {
    let rt = cpu_runtime(RuntimeConfig::default());
    let (seq, heads, hd) = (3usize, 2usize, 4usize);
    let width = 3 * heads * hd;
    let mut qkv: Vec<f32> = (0..seq * width)
        .map(|i| ((i * 37 % 17) as f32 / 8.0) - 1.0)
        .collect();
    // Every query feature of head 0 is NaN, so every score of head 0 is NaN.
    for t in 0..seq {
        qkv[t * width..t * width + hd].fill(f32::NAN);
    }
    let t = rt.from_f32(&qkv, &[seq, width]).unwrap();
    let mask = rt.from_f32(&[1.0, 1.0, 0.0], &[1, seq]).unwrap();
    let out = rt
        .to_vec_f32(&rt.attention(&t, &mask, heads).unwrap())
        .unwrap();
    for t in 0..seq {
        let row = &out[t * heads * hd..(t + 1) * heads * hd];
        assert!(
            row[..hd].iter().all(|v| v.is_nan()),
            "token {t} head 0: {row:?}"
        );
        assert!(
            row[hd..].iter().all(|v| v.is_finite()),
            "token {t} head 1: {row:?}"
        );
    }
}
