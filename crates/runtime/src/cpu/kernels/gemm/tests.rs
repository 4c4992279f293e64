//! Unit tests of [`gemm_f32`]: against an f64 reference over odd sizes, layouts, batches, beta and
//! bias; bit-identical results across thread counts; bounds and overlap panics; and an ignored
//! micro-benchmark.

use super::*;
use crate::cpu::kernels::test_util::Rng;

fn at(s: &MatStrides, i0: usize, i1: usize, r: usize, c: usize) -> usize {
    let off = i0 as isize * s.batch_stride[0]
        + i1 as isize * s.batch_stride[1]
        + r as isize * s.row_stride
        + c as isize * s.col_stride;
    usize::try_from(off).unwrap()
}

/// Naive f64 reference: returns the expected contents of the whole C slice.
fn gemm_ref(spec: &GemmSpec, a: &[f32], b: &[f32], c: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
    let mut out: Vec<f64> = c.iter().map(|&v| v as f64).collect();
    for i0 in 0..spec.batch[0] {
        for i1 in 0..spec.batch[1] {
            for r in 0..spec.m {
                for j in 0..spec.n {
                    let mut acc = 0.0f64;
                    for p in 0..spec.k {
                        acc += a[at(&spec.a, i0, i1, r, p)] as f64
                            * b[at(&spec.b, i0, i1, p, j)] as f64;
                    }
                    let ci = at(&spec.c, i0, i1, r, j);
                    let prev = if spec.beta == 0.0 {
                        0.0
                    } else {
                        spec.beta as f64 * c[ci] as f64
                    };
                    out[ci] = spec.alpha as f64 * acc + prev + bias.map_or(0.0, |bv| bv[j] as f64);
                }
            }
        }
    }
    out
}

/// Tolerance for a k-long f32 dot product of values in [-1, 1] against f64.
fn gemm_tol(k: usize) -> f64 {
    2e-6 * (k as f64).sqrt().max(1.0) + 1e-6
}

/// Runs gemm_f32 with threads = 1 and 4 (must be bit-identical) and checks against the reference.
fn check_gemm(
    spec: &GemmSpec,
    a: &[f32],
    b: &[f32],
    c0: &[f32],
    bias: Option<&[f32]>,
    what: &str,
) -> Vec<f32> {
    let want = gemm_ref(spec, a, b, c0, bias);
    let mut c1 = c0.to_vec();
    gemm_f32(spec, a, b, &mut c1, bias, 1);
    let mut c4 = c0.to_vec();
    gemm_f32(spec, a, b, &mut c4, bias, 4);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&c1), bits(&c4), "{what}: threads = 1 and 4 differ");
    // Elements outside C's view are untouched; NaN garbage there would fail here.
    let tol = gemm_tol(spec.k);
    for (i, (&g, &w)) in c1.iter().zip(&want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || (g as f64 - w).abs() <= tol * (1.0 + w.abs());
        assert!(ok, "{what}: element {i}: got {g}, want {w}");
    }
    c1
}

/// Layout of an unbatched [rows x cols] operand: 0 row-major, 1 transposed view, 2 padded rows.
fn layout(kind: usize, rows: usize, cols: usize) -> (MatStrides, usize) {
    match kind {
        0 => (MatStrides::row_major(cols), rows * cols),
        1 => (MatStrides::transposed(rows), rows * cols),
        _ => {
            let s = MatStrides {
                row_stride: cols as isize + 5,
                col_stride: 1,
                batch_stride: [0, 0],
            };
            (s, rows * (cols + 5))
        }
    }
}

#[test]
fn gemm_odd_sizes_layouts_beta_bias() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let sizes = [1usize, 3, 17, 65];
    for &m in &sizes {
        for &n in &sizes {
            for &k in &sizes {
                for la in 0..3 {
                    for lb in 0..3 {
                        let case = (m * 7 + n * 5 + k * 3 + la + lb) % 4;
                        let (sa, na) = layout(la, m, k);
                        let (sb, nb) = layout(lb, k, n);
                        let (sc, nc) = layout(case % 3, m, n);
                        let beta = if case % 2 == 0 { 0.0 } else { 0.75 };
                        let spec = GemmSpec {
                            m,
                            n,
                            k,
                            batch: [1, 1],
                            a: sa,
                            b: sb,
                            c: sc,
                            alpha: 1.25,
                            beta,
                        };
                        let (a, b) = (rng.vec(na), rng.vec(nb));
                        // With beta == 0, C may hold NaN garbage that must be ignored.
                        let c = if beta == 0.0 {
                            vec![f32::NAN; nc]
                        } else {
                            rng.vec(nc)
                        };
                        let bias = rng.vec(n);
                        let bias = (case >= 2).then_some(&bias[..]);
                        let what = format!("m={m} n={n} k={k} la={la} lb={lb} case={case}");
                        let out = check_gemm(&spec, &a, &b, &c, bias, &what);
                        for r in 0..m {
                            for j in 0..n {
                                assert!(!out[at(&sc, 0, 0, r, j)].is_nan(), "{what}: NaN leaked");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_batched_strided_both_batch_dims() {
    let mut rng = Rng(42);
    let (outer, inner, m, n, k) = (2usize, 3usize, 17usize, 65usize, 33usize);
    // A: per (i0, i1) a padded row-major [m x k] block.
    let a_s = MatStrides {
        row_stride: k as isize + 3,
        col_stride: 1,
        batch_stride: [0, 0],
    };
    let a_block = m * (k + 3);
    let a_s = a_s.with_batch((inner * a_block) as isize, a_block as isize);
    // B: shared across the outer batch (stride 0), transposed view of [n x k] per inner entry.
    let b_s = MatStrides::transposed(k).with_batch(0, (n * k) as isize);
    // C: [outer, m, inner, n] interleaved (like heads inside a hidden vector).
    let c_s = MatStrides {
        row_stride: (inner * n) as isize,
        col_stride: 1,
        batch_stride: [0, 0],
    }
    .with_batch((m * inner * n) as isize, n as isize);
    let a = rng.vec(outer * inner * a_block);
    let b = rng.vec(inner * n * k);
    let c = rng.vec(outer * m * inner * n);
    let bias = rng.vec(n);
    for (alpha, beta) in [(1.0, 0.0), (0.5, -1.5)] {
        let spec = GemmSpec {
            m,
            n,
            k,
            batch: [outer, inner],
            a: a_s,
            b: b_s,
            c: c_s,
            alpha,
            beta,
        };
        check_gemm(&spec, &a, &b, &c, Some(&bias), "batched");
        check_gemm(&spec, &a, &b, &c, None, "batched, no bias");
    }
}

#[test]
fn gemm_attention_views_into_fused_qkv() {
    // BERT-MiniLM attention: tokens = batch * seq rows of [Q | K | V] (3 * hidden wide).
    let mut rng = Rng(7);
    let (batch, seq, heads, hd) = (2usize, 128usize, 12usize, 32usize);
    let hidden = heads * hd;
    let qkv = rng.vec(batch * seq * 3 * hidden);
    let rs = (3 * hidden) as isize;
    let q = MatStrides {
        row_stride: rs,
        col_stride: 1,
        batch_stride: [0, 0],
    }
    .with_batch(seq as isize * rs, hd as isize);
    // K^T as a [hd x seq] view of the K columns.
    let kt = MatStrides {
        row_stride: 1,
        col_stride: rs,
        batch_stride: [0, 0],
    }
    .with_batch(seq as isize * rs, hd as isize);
    let scores_s =
        MatStrides::row_major(seq).with_batch((heads * seq * seq) as isize, (seq * seq) as isize);
    let spec = GemmSpec {
        m: seq,
        n: seq,
        k: hd,
        batch: [batch, heads],
        a: q,
        b: kt,
        c: scores_s,
        alpha: 1.0 / (hd as f32).sqrt(),
        beta: 0.0,
    };
    let scores0 = vec![f32::NAN; batch * heads * seq * seq];
    let scores = check_gemm(&spec, &qkv, &qkv[hidden..], &scores0, None, "Q K^T");
    // Context = P V written head-interleaved into [tokens x hidden].
    let v = MatStrides {
        row_stride: rs,
        col_stride: 1,
        batch_stride: [0, 0],
    }
    .with_batch(seq as isize * rs, hd as isize);
    let ctx_s = MatStrides::row_major(hidden).with_batch((seq * hidden) as isize, hd as isize);
    let spec = GemmSpec {
        m: seq,
        n: hd,
        k: seq,
        batch: [batch, heads],
        a: scores_s,
        b: v,
        c: ctx_s,
        alpha: 1.0,
        beta: 0.0,
    };
    check_gemm(
        &spec,
        &scores,
        &qkv[2 * hidden..],
        &vec![f32::NAN; batch * seq * hidden],
        None,
        "P V",
    );
}

#[test]
fn gemm_large_enough_to_split_is_thread_count_independent() {
    let mut rng = Rng(99);
    // Row-major C (split along n) and column-major C (split along m), both > 512 on the other axis.
    for (m, n, k, c_transposed) in [(600usize, 500usize, 65usize, false), (500, 600, 65, true)] {
        let a = rng.vec(m * k);
        let b = rng.vec(k * n);
        let c = rng.vec(m * n);
        let bias = rng.vec(n);
        let cs = if c_transposed {
            MatStrides::transposed(m)
        } else {
            MatStrides::row_major(n)
        };
        let spec = GemmSpec {
            m,
            n,
            k,
            batch: [1, 1],
            a: MatStrides::row_major(k),
            b: MatStrides::row_major(n),
            c: cs,
            alpha: 1.0,
            beta: 0.5,
        };
        let c1 = check_gemm(&spec, &a, &b, &c, Some(&bias), "large");
        let mut c2 = c.clone();
        gemm_f32(&spec, &a, &b, &mut c2, Some(&bias), 2);
        assert!(
            c1.iter().zip(&c2).all(|(x, y)| x.to_bits() == y.to_bits()),
            "threads = 2 differs"
        );
    }
}

/// An element of C has the same bits whatever product it is computed in: row r of a tall product
/// equals the same row computed alone (m = 1, a matrix-vector path in `gemm`), in a 2-row product
/// (`m·n <= 256`: its horizontal path) and with zero-padded depth (as padded keys in attention), for
/// both layouts of B and depths on both sides of the chunk size — what a sequence needs to get the
/// same embedding in any batch.
#[test]
fn an_element_does_not_depend_on_the_shape_of_its_product() {
    let mut rng = Rng(77);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (m, n, k) in [
        (300usize, 7usize, 2usize),
        (300, 16, 32),
        (130, 384, 384),
        (70, 40, 1200),
    ] {
        for b_transposed in [false, true] {
            let a = rng.vec(m * k);
            let b = rng.vec(k * n);
            let b_strides = if b_transposed {
                MatStrides::transposed(k)
            } else {
                MatStrides::row_major(n)
            };
            let spec = |rows: usize, depth: usize, a_cols: usize| GemmSpec {
                m: rows,
                n,
                k: depth,
                batch: [1, 1],
                a: MatStrides::row_major(a_cols),
                b: b_strides,
                c: MatStrides::row_major(n),
                alpha: 0.125,
                beta: 0.0,
            };
            let mut tall = vec![0.0; m * n];
            gemm_f32(&spec(m, k, k), &a, &b, &mut tall, None, 2);
            for r in [0, 1, m / 2, m - 1] {
                let what = format!("m={m} n={n} k={k} B transposed {b_transposed}, row {r}");
                let want = bits(&tall[r * n..(r + 1) * n]);
                let mut alone = vec![0.0; n];
                gemm_f32(&spec(1, k, k), &a[r * k..], &b, &mut alone, None, 1);
                assert_eq!(bits(&alone), want, "{what}: alone");
                let pair_start = r.min(m - 2);
                let mut pair = vec![0.0; 2 * n];
                gemm_f32(&spec(2, k, k), &a[pair_start * k..], &b, &mut pair, None, 1);
                let in_pair = &pair[(r - pair_start) * n..][..n];
                assert_eq!(bits(in_pair), want, "{what}: in a pair");
                // The row padded with zeros to twice its depth, against B padded with rows of ones.
                let mut padded_a = a[r * k..(r + 1) * k].to_vec();
                padded_a.resize(2 * k, 0.0);
                let padded_b: Vec<f32> = if b_transposed {
                    (0..n)
                        .flat_map(|j| {
                            let col = &b[j * k..(j + 1) * k];
                            col.iter().copied().chain(std::iter::repeat_n(1.0, k))
                        })
                        .collect()
                } else {
                    b.iter()
                        .copied()
                        .chain(std::iter::repeat_n(1.0, k * n))
                        .collect()
                };
                let mut padded_spec = spec(1, 2 * k, 2 * k);
                if b_transposed {
                    padded_spec.b = MatStrides::transposed(2 * k);
                }
                let mut padded = vec![0.0; n];
                gemm_f32(&padded_spec, &padded_a, &padded_b, &mut padded, None, 1);
                assert_eq!(bits(&padded), want, "{what}: zero-padded depth");
            }
        }
    }
}

#[test]
fn gemm_k1536_accuracy() {
    let mut rng = Rng(5);
    let (m, n, k) = (40usize, 70usize, 1536usize);
    let (a, b) = (rng.vec(m * k), rng.vec(k * n));
    let spec = GemmSpec {
        m,
        n,
        k,
        batch: [1, 1],
        a: MatStrides::row_major(k),
        b: MatStrides::row_major(n),
        c: MatStrides::row_major(n),
        alpha: 1.0,
        beta: 0.0,
    };
    check_gemm(&spec, &a, &b, &vec![0.0; m * n], None, "k=1536");
}

#[test]
fn gemm_k0_and_alpha0_scale_c_and_add_bias() {
    let mut rng = Rng(3);
    let (m, n) = (5usize, 7usize);
    let bias = rng.vec(n);
    for (k, alpha, beta) in [
        (0usize, 1.0, 0.0),
        (0, 1.0, 2.0),
        (4, 0.0, 0.0),
        (4, 0.0, -0.5),
    ] {
        let spec = GemmSpec {
            m,
            n,
            k,
            batch: [1, 1],
            a: MatStrides::row_major(k),
            b: MatStrides::row_major(n),
            c: MatStrides::row_major(n),
            alpha,
            beta,
        };
        let c = if beta == 0.0 {
            vec![f32::NAN; m * n]
        } else {
            rng.vec(m * n)
        };
        // A and B hold NaN: with alpha == 0 or k == 0 they must not be read.
        let (a, b) = (vec![f32::NAN; m * k], vec![f32::NAN; k * n]);
        let mut got = c.clone();
        gemm_f32(&spec, &a, &b, &mut got, Some(&bias), 1);
        for (i, &g) in got.iter().enumerate() {
            let prev = if beta == 0.0 { 0.0 } else { beta * c[i] };
            assert_eq!(
                g,
                prev + bias[i % n],
                "k={k} alpha={alpha} beta={beta} element {i}"
            );
        }
    }
}

#[test]
fn gemm_empty_is_a_no_op() {
    let spec = GemmSpec {
        m: 0,
        n: 3,
        k: 2,
        batch: [1, 1],
        a: MatStrides::row_major(2),
        b: MatStrides::row_major(3),
        c: MatStrides::row_major(3),
        alpha: 1.0,
        beta: 0.0,
    };
    gemm_f32(&spec, &[], &[0.0; 6], &mut [], None, 4);
}

fn small_spec() -> GemmSpec {
    GemmSpec {
        m: 4,
        n: 4,
        k: 4,
        batch: [1, 1],
        a: MatStrides::row_major(4),
        b: MatStrides::row_major(4),
        c: MatStrides::row_major(4),
        alpha: 1.0,
        beta: 0.0,
    }
}

#[test]
#[should_panic(expected = "invariant violated:")]
fn gemm_short_c_panics() {
    gemm_f32(
        &small_spec(),
        &[0.0; 16],
        &[0.0; 16],
        &mut [0.0; 15],
        None,
        1,
    );
}

#[test]
#[should_panic(expected = "invariant violated:")]
fn gemm_short_a_panics() {
    gemm_f32(
        &small_spec(),
        &[0.0; 15],
        &[0.0; 16],
        &mut [0.0; 16],
        None,
        1,
    );
}

#[test]
#[should_panic(expected = "invariant violated:")]
fn gemm_overlapping_c_panics() {
    let mut spec = small_spec();
    spec.c.row_stride = 2;
    gemm_f32(&spec, &[0.0; 16], &[0.0; 16], &mut [0.0; 16], None, 4);
}

#[test]
#[should_panic(expected = "invariant violated:")]
fn gemm_bad_bias_len_panics() {
    gemm_f32(
        &small_spec(),
        &[0.0; 16],
        &[0.0; 16],
        &mut [0.0; 16],
        Some(&[0.0; 3]),
        1,
    );
}

#[test]
fn mat_strides_constructors() {
    let r = MatStrides::row_major(5);
    assert_eq!(
        r,
        MatStrides {
            row_stride: 5,
            col_stride: 1,
            batch_stride: [0, 0],
        }
    );
    let t = MatStrides::transposed(5);
    assert_eq!(
        t,
        MatStrides {
            row_stride: 1,
            col_stride: 5,
            batch_stride: [0, 0],
        }
    );
    assert_eq!(t.with_batch(10, 3).batch_stride, [10, 3]);
}

/// Micro-benchmark: `cargo test --release -- --ignored --nocapture bench_gemm`.
#[test]
#[ignore = "micro-benchmark: cargo test --release -p braid-runtime --lib bench_gemm -- --ignored --nocapture"]
fn bench_gemm_shapes() {
    // (what, m, n, k, batch, B transposed): a short sentence's attention scores (12 heads, 16 tokens,
    // head size 32: keys as a transposed view; `canonical` computes these) and its weighted sum of
    // values; the same scores for 128 tokens (`gemm`'s micro-kernel).
    let shapes = [
        (
            "scores 16 tokens x12 heads",
            16usize,
            16usize,
            32usize,
            12usize,
            true,
        ),
        ("values 16 tokens x12 heads", 16, 32, 16, 12, false),
        ("scores 128 tokens x12 heads", 128, 128, 32, 12, true),
    ];
    let mut rng = Rng(1);
    for (what, m, n, k, batch, b_transposed) in shapes {
        let (a, b) = (rng.vec(batch * m * k), rng.vec(batch * k * n));
        let mut c = vec![0.0f32; batch * m * n];
        let b_strides = if b_transposed {
            MatStrides::transposed(k)
        } else {
            MatStrides::row_major(n)
        };
        let spec = GemmSpec {
            m,
            n,
            k,
            batch: [1, batch],
            a: MatStrides::row_major(k).with_batch(0, (m * k) as isize),
            b: b_strides.with_batch(0, (k * n) as isize),
            c: MatStrides::row_major(n).with_batch(0, (m * n) as isize),
            alpha: 1.0,
            beta: 0.0,
        };
        let reps = (50_000_000 / (2 * m * n * k * batch)).max(1);
        gemm_f32(&spec, &a, &b, &mut c, None, 1); // warm-up
        let mut times: Vec<f64> = (0..7)
            .map(|_| {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    gemm_f32(&spec, &a, &b, &mut c, None, 1);
                }
                t.elapsed().as_secs_f64() * 1e6 / reps as f64
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "gemm {what}: median {:.2} us (min {:.2}, max {:.2}), one thread",
            times[3], times[0], times[6]
        );
    }
}

#[test]
#[ignore]
fn bench_gemm_384x1536x384() {
    let (m, k, n) = (384usize, 1536usize, 384usize);
    let mut rng = Rng(1);
    let (a, b) = (rng.vec(m * k), rng.vec(k * n));
    let mut c = vec![0.0f32; m * n];
    let spec = GemmSpec {
        m,
        n,
        k,
        batch: [1, 1],
        a: MatStrides::row_major(k),
        b: MatStrides::row_major(n),
        c: MatStrides::row_major(n),
        alpha: 1.0,
        beta: 0.0,
    };
    for threads in [1usize, 2] {
        gemm_f32(&spec, &a, &b, &mut c, None, threads); // warm-up
        let mut times: Vec<f64> = (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                gemm_f32(&spec, &a, &b, &mut c, None, threads);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let gflops = 2.0 * (m * n * k) as f64 / times[2] / 1e6;
        println!(
            "gemm {m}x{k} . {k}x{n}, threads = {threads}: median {:.3} ms ({gflops:.0} GFLOP/s)",
            times[2]
        );
    }
}
