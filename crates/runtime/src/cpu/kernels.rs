//! f32 compute kernels for the CPU backend.
//!
//! # What this module owns
//!
//! The numeric kernels the CPU backend's stream executors run for a BERT-style
//! encoder: (batched, strided) matrix products, GELU (exact and tanh), fused
//! bias + GELU, residual + LayerNorm, masked softmax, embedding gathers, mean
//! pooling, L2 normalisation and element-wise addition. Every kernel is a pure
//! function over caller-provided slices; none allocates, except [`gemm_f32`]:
//! the `gemm` crate allocates its packing buffers, and a threaded call boxes
//! one small rayon job per extra worker.
//!
//! # Threading
//!
//! Only [`gemm_f32`] is multi-threaded: matrix products are compute-bound and
//! the only kernels where splitting one call across cores pays. Its `threads`
//! argument bounds how many rayon workers the call may occupy (the calling
//! thread counts as one), and it only goes parallel when each worker gets at
//! least ~1 MFLOP. All other kernels are single-threaded loops the compiler
//! vectorises: they are memory-bound, and the CPU backend already runs many
//! streams concurrently. The transcendental ones (GELU, softmax) are compiled
//! for SSE2, AVX2 and AVX-512F and pick the widest the CPU has at run time;
//! the versions return bit-identical results (same IEEE operations, no FMA).
//!
//! # Determinism
//!
//! Every kernel is deterministic for a given input, and results are
//! **bit-identical regardless of the thread count** (on a given machine: `gemm`
//! picks its micro-kernels and cache blocking from the CPU it runs on).
//! [`gemm_f32`] guarantees this by cutting each product into output tiles whose
//! shape depends only on `(m, n, k)` and the layout of C, never on `threads`:
//! C's contiguous axis is cut every 192 elements (more when a tile would hold
//! under ~1 MFLOP) and its other axis every 512. Each tile is computed by one
//! single-threaded `gemm` call (`Parallelism::None`) followed by its bias, so
//! every output element sees the same sequence of floating-point operations
//! whichever worker runs its tile, or when all tiles run one after another on
//! the calling thread. We deliberately do not use `gemm`'s own
//! `Parallelism::Rayon`, whose blocking depends on the thread count.
//!
//! # Panics
//!
//! Kernels panic only on caller bugs (slices too short, inconsistent shapes,
//! out-of-range ids, a C view that overlaps itself); those messages start with
//! `"invariant violated:"`.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Panics with an `"invariant violated: ..."` message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            panic!("invariant violated: {}", format_args!($($msg)+));
        }
    };
}

/// Panics unless a slice of `len` elements has exactly `want`.
fn check_len(what: &str, len: usize, want: usize) {
    ensure!(len == want, "{what} has {len} elements, expected {want}");
}

/// Panics unless `len` elements form whole rows of `width > 0` elements.
fn check_rows(what: &str, len: usize, width: usize) {
    ensure!(
        width > 0 && len % width == 0,
        "{what} has {len} elements, not rows of {width}"
    );
}

/// Defines a private function whose body is compiled three times: portable
/// (baseline SSE2), AVX2 and AVX-512F, picking the widest the CPU supports at
/// run time. The body only uses IEEE add/sub/mul/div, comparisons, selects and
/// bit casts (never `mul_add`, and Rust never contracts into FMA), so every
/// version returns bit-identical results.
macro_rules! simd_versions {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn portable($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    portable($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the running CPU supports AVX-512F (detected just
                    // above), the only precondition of calling `avx512`.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the running CPU supports AVX2 (detected just
                    // above), the only precondition of calling `avx2`.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}

/// Width, in elements of C's contiguous axis, of one GEMM tile (a multiple of
/// the AVX-512 micro-kernel's 48-wide register block). Narrower tiles cost
/// `gemm` noticeably more packing overhead (measured: ~8% at 96, ~2% at 192).
const GEMM_SLAB: usize = 192;
/// Extent of one GEMM tile along C's non-contiguous axis.
const GEMM_OTHER_SLAB: usize = 512;
/// Minimum floating-point operations per GEMM tile, and per worker: below it,
/// handing work to another thread costs more than it saves.
const GEMM_MIN_TASK_FLOPS: usize = 1 << 20;

/// The GEMM argument types are the backend-neutral ones from [`crate::ops`], re-exported so that
/// `kernels::{GemmSpec, MatStrides}` name the very types the `Ops` trait passes around:
/// [`MatStrides`] (`row_major`, `transposed`, `with_batch`) gives an operand's element strides
/// (element `(i0, i1, r, c)` at `i0*batch_stride[0] + i1*batch_stride[1] + r*row_stride + c*col_stride`),
/// and [`GemmSpec`] describes `C = alpha * A·B + beta * C` with `A [m x k]`, `B [k x n]`,
/// `C [m x n]` over `batch = [outer, inner]` entries.
pub use crate::ops::{GemmSpec, MatStrides};

/// A strided view: `(extent, stride)` for each of its axes.
type View = [(usize, isize); 4];

fn view(s: &MatStrides, batch: [usize; 2], rows: usize, cols: usize) -> View {
    [
        (batch[0], s.batch_stride[0]),
        (batch[1], s.batch_stride[1]),
        (rows, s.row_stride),
        (cols, s.col_stride),
    ]
}

/// Checks that every element of a non-empty `view` lies inside a slice of `len` elements.
fn check_in_bounds(name: &str, v: &View, len: usize) {
    if v.iter().any(|&(extent, _)| extent == 0) {
        return;
    }
    let (mut lo, mut hi) = (0i128, 0i128);
    for &(extent, stride) in v {
        let span = (extent as i128 - 1) * stride as i128;
        lo += span.min(0);
        hi += span.max(0);
    }
    ensure!(
        lo >= 0 && hi < len as i128,
        "gemm operand {name} addresses elements [{lo}, {hi}] but its slice has {len}"
    );
}

/// Checks that no two elements of `v` share an address (sufficient condition:
/// sorted by stride, each axis steps past everything the smaller axes span).
fn check_no_self_overlap(name: &str, v: &View) {
    let mut axes = v.map(|(extent, stride)| (stride.unsigned_abs(), extent));
    axes.sort_unstable();
    let mut span = 0usize;
    for (stride, extent) in axes.into_iter().filter(|&(_, extent)| extent > 1) {
        ensure!(
            stride > span,
            "gemm output {name} overlaps itself (strides {v:?})"
        );
        span = span.saturating_add(stride.saturating_mul(extent - 1));
    }
}

/// A raw output pointer shared between the workers of one [`gemm_f32`] call.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
impl SharedMut {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: the pointer is only used to write disjoint output tiles (C was
// checked not to overlap itself), each by exactly one task.
unsafe impl Send for SharedMut {}
// SAFETY: as above; concurrent tasks never touch the same element.
unsafe impl Sync for SharedMut {}

/// Runs `task(0..n_tasks)` on up to `workers` threads (the caller plus
/// `workers - 1` rayon workers), each pulling the next task index.
fn run_tasks(n_tasks: usize, workers: usize, task: impl Fn(usize) + Sync) {
    if workers <= 1 {
        (0..n_tasks).for_each(task);
        return;
    }
    let next = AtomicUsize::new(0);
    let work = || loop {
        let t = next.fetch_add(1, Ordering::Relaxed);
        if t >= n_tasks {
            break;
        }
        task(t);
    };
    rayon::in_place_scope(|s| {
        for _ in 1..workers {
            s.spawn(|_| work());
        }
        work();
    });
}

/// `threads` = how many rayon workers this call may use (1 = run on the calling thread only; 0 is treated as 1).
/// bias: Option<&[f32]> of length n, added to every row of every C after the product.
/// When beta == 0, C's previous contents are ignored (may be uninitialised garbage / NaN).
///
/// Shapes: for every batch entry `(i0, i1)` in `[0, batch[0]) x [0, batch[1])`, A is `[m x k]`,
/// B is `[k x n]` and C is `[m x n]`, addressed through `spec.a`, `spec.b`, `spec.c`
/// (see [`MatStrides`]). Every addressed element must lie inside its slice and no two
/// elements of C may share an address; A and B may overlap themselves (e.g. batch stride 0).
/// Since element (0, 0, 0, 0) sits at offset 0, axes of extent > 1 need non-negative strides.
/// When `alpha == 0` or `k == 0`, A and B are not read.
pub fn gemm_f32(
    spec: &GemmSpec,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    bias: Option<&[f32]>,
    threads: usize,
) {
    let (m, n, k, batch, alpha, beta) = (spec.m, spec.n, spec.k, spec.batch, spec.alpha, spec.beta);
    let (va, vb, vc) = (
        view(&spec.a, batch, m, k),
        view(&spec.b, batch, k, n),
        view(&spec.c, batch, m, n),
    );
    check_in_bounds("A", &va, a.len());
    check_in_bounds("B", &vb, b.len());
    check_in_bounds("C", &vc, c.len());
    check_no_self_overlap("C", &vc);
    if let Some(bias) = bias {
        check_len("gemm bias", bias.len(), n);
    }
    let n_batches = batch[0] * batch[1];
    if m == 0 || n == 0 || n_batches == 0 {
        return;
    }
    let (sa, sb, sc) = (&spec.a, &spec.b, &spec.c);
    let cptr = SharedMut(c.as_mut_ptr());

    // Tile C: `fast` is its contiguous axis (the axis gemm vectorises along).
    let rows_fast = sc.row_stride.unsigned_abs() <= sc.col_stride.unsigned_abs();
    let (fast_len, other_len) = if rows_fast { (m, n) } else { (n, m) };
    let flops_per_fast = 2 * k.max(1) * other_len.min(GEMM_OTHER_SLAB);
    let fast_tile = GEMM_SLAB.max(
        GEMM_MIN_TASK_FLOPS
            .div_ceil(flops_per_fast)
            .next_multiple_of(48),
    );
    let (fast_tiles, other_tiles) = (
        fast_len.div_ceil(fast_tile),
        other_len.div_ceil(GEMM_OTHER_SLAB),
    );
    let (row_tile, col_tile, row_tiles) = if rows_fast {
        (fast_tile, GEMM_OTHER_SLAB, fast_tiles)
    } else {
        (GEMM_OTHER_SLAB, fast_tile, other_tiles)
    };
    let tiles_per_batch = fast_tiles * other_tiles;
    let n_tasks = n_batches * tiles_per_batch;

    let task = |t: usize| {
        let (bi, tile) = (t / tiles_per_batch, t % tiles_per_batch);
        let (i0, i1) = ((bi / batch[1]) as isize, (bi % batch[1]) as isize);
        let (r0, c0) = ((tile % row_tiles) * row_tile, (tile / row_tiles) * col_tile);
        let (mb, nb) = (row_tile.min(m - r0), col_tile.min(n - c0));
        let (r0i, c0i) = (r0 as isize, c0 as isize);
        let c_off = i0 * sc.batch_stride[0] + i1 * sc.batch_stride[1];
        let c_off = c_off + r0i * sc.row_stride + c0i * sc.col_stride;
        // SAFETY: c_off addresses element (i0, i1, r0, c0) of C's view, which
        // check_in_bounds proved lies inside `c`.
        let dst = unsafe { cptr.get().offset(c_off) };
        if alpha == 0.0 || k == 0 {
            scale_tile(dst, sc, mb, nb, beta);
        } else {
            let a_off = i0 * sa.batch_stride[0] + i1 * sa.batch_stride[1] + r0i * sa.row_stride;
            let b_off = i0 * sb.batch_stride[0] + i1 * sb.batch_stride[1] + c0i * sb.col_stride;
            // SAFETY: the offsets address elements (i0, i1, r0, 0) of A and
            // (i0, i1, 0, c0) of B, inside their slices (check_in_bounds), and
            // gemm reads only the [mb x k] / [k x nb] sub-views starting there,
            // which are parts of the checked views. It writes only the
            // [mb x nb] tile of C at `dst`, which no other task touches
            // (check_no_self_overlap) and which nothing else borrows while
            // this call runs (we hold `c` mutably). With beta == 0 gemm is
            // told not to read C (read_dst = false).
            unsafe {
                gemm::gemm(
                    mb,
                    nb,
                    k,
                    dst,
                    sc.col_stride,
                    sc.row_stride,
                    beta != 0.0,
                    a.as_ptr().offset(a_off),
                    sa.col_stride,
                    sa.row_stride,
                    b.as_ptr().offset(b_off),
                    sb.col_stride,
                    sb.row_stride,
                    beta,
                    alpha,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        if let Some(bias) = bias {
            add_bias_tile(dst, sc, mb, &bias[c0..c0 + nb]);
        }
    };

    let total_flops = (2 * m * n).saturating_mul(k).saturating_mul(n_batches);
    let workers = threads
        .min(n_tasks)
        .min(total_flops / GEMM_MIN_TASK_FLOPS)
        .max(1);
    run_tasks(n_tasks, workers, task);
}

/// C_tile = beta * C_tile (C_tile = 0 when beta == 0, whatever it held), for an [mb x nb] tile at `dst`.
fn scale_tile(dst: *mut f32, sc: &MatStrides, mb: usize, nb: usize, beta: f32) {
    if beta == 1.0 {
        return;
    }
    for r in 0..mb as isize {
        for j in 0..nb as isize {
            // SAFETY: (r, j) lies in this task's tile of C, which is in bounds
            // and touched by no other task (see gemm_f32).
            let p = unsafe { dst.offset(r * sc.row_stride + j * sc.col_stride) };
            // SAFETY: as above; `p` is valid for reads and writes.
            unsafe { *p = if beta == 0.0 { 0.0 } else { beta * *p } };
        }
    }
}

/// Adds `bias` (length nb) to each of the mb rows of the [mb x nb] tile at `dst`.
fn add_bias_tile(dst: *mut f32, sc: &MatStrides, mb: usize, bias: &[f32]) {
    for r in 0..mb as isize {
        // SAFETY: row r of this task's tile is in bounds of C and touched by no
        // other task (see gemm_f32).
        let row = unsafe { dst.offset(r * sc.row_stride) };
        if sc.col_stride == 1 {
            // SAFETY: with unit column stride the row's nb elements are
            // contiguous, in bounds, and exclusively ours for this call.
            let row = unsafe { std::slice::from_raw_parts_mut(row, bias.len()) };
            row.iter_mut().zip(bias).for_each(|(x, &b)| *x += b);
        } else {
            for (j, &b) in bias.iter().enumerate() {
                // SAFETY: element (r, j) of this task's tile, as above.
                unsafe { *row.offset(j as isize * sc.col_stride) += b };
            }
        }
    }
}

/// e^x in f32 (Cephes `expf` polynomial, ~2 ulp), branch-free so loops vectorise.
/// Saturates at e^88 for larger x; returns 0 for x < -87 (below the normal range).
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(-87.0, 88.0);
    let z = xc * std::f32::consts::LOG2_E + MAGIC;
    let nf = z - MAGIC;
    let r = xc - nf * 0.693_359_4 - nf * -2.121_944_4e-4;
    // Estrin's scheme (shorter dependency chains than Horner).
    let r2 = r * r;
    let p01 = 0.5 + 0.166_666_65 * r;
    let p23 = 4.166_579_6e-2 + 8.333_452e-3 * r;
    let p45 = 1.398_199_9e-3 + 1.987_569_1e-4 * r;
    let p = p01 + (p23 + p45 * r2) * r2;
    let y = p * r2 + r + 1.0;
    // The low mantissa bits of z hold n = round(x * log2 e) in [-126, 127]; build 2^n.
    let scale = f32::from_bits(z.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    if x < -87.0 {
        0.0
    } else {
        y * scale
    }
}

/// erfc(z) for z >= 0, relative error below ~2e-7 (Numerical Recipes `erfcc`).
#[inline(always)]
fn erfc_nonneg(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    // Degree-9 polynomial in t by Estrin's scheme (shorter dependency chains than Horner).
    let (t2, zz) = (t * t, z * z);
    let t4 = t2 * t2;
    let q01 = -1.265_512_2 + 1.000_023_7 * t;
    let q23 = 0.374_091_96 + 0.096_784_18 * t;
    let q45 = -0.186_288_06 + 0.278_868_07 * t;
    let q67 = -1.135_204 + 1.488_515_9 * t;
    let q89 = -0.822_152_2 + 0.170_872_77 * t;
    let p = (q01 + q23 * t2) + (q45 + q67 * t2) * t4 + q89 * (t4 * t4);
    t * exp_f32(p - zz)
}

/// erf(z) for |z| <= 0.5 by its Maclaurin series (truncation error < 1e-9),
/// which keeps full accuracy where `1 - erfc(z)` would cancel.
#[inline(always)]
fn erf_small(z: f32) -> f32 {
    let z2 = z * z;
    let p = 1.205_533_3e-4_f32;
    let p = p * z2 - 8.548_327e-4;
    let p = p * z2 + 5.223_977_6e-3;
    let p = p * z2 - 2.686_617e-2;
    let p = p * z2 + 0.112_837_92;
    let p = p * z2 - 0.376_126_4;
    let p = p * z2 + std::f32::consts::FRAC_2_SQRT_PI;
    z * p
}

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

/// `out[r] = LayerNorm(x[r] + bias + residual[r]) * gamma + beta` over rows of length `cols` (bias and
/// residual optional). Shapes: x, residual and out are `[rows x cols]`; bias, gamma and beta are
/// `[cols]`. `(x + bias) + residual` is rounded to f32 first; mean and (biased) variance are
/// accumulated in f64.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_f32(
    x: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    out: &mut [f32],
    cols: usize,
    eps: f32,
) {
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

/// In-place softmax over the last axis of scores [batch, heads, q_len, k_len], after multiplying by `scale`,
/// where key positions with mask[b * k_len + j] == 0.0 get probability exactly 0. mask is [batch, k_len] of 1.0 / 0.0.
/// A row whose keys are all masked becomes all zeros (no NaN).
/// Any nonzero mask value keeps its key.
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
            for row in sb.chunks_exact_mut(k_len) {
                // Masked keys become -inf, so they exp to exactly 0 below.
                for (s, &m) in row.iter_mut().zip(mb) {
                    *s = if m != 0.0 { *s * scale } else { f32::NEG_INFINITY };
                }
                let mut lanes = [f32::NEG_INFINITY; 8];
                let chunks = row.chunks_exact(8);
                let mut max = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                for c in chunks {
                    for (l, &v) in lanes.iter_mut().zip(c) {
                        *l = l.max(v);
                    }
                }
                max = lanes.iter().fold(max, |a, &b| a.max(b));
                if max == f32::NEG_INFINITY {
                    row.fill(0.0); // every key masked
                    continue;
                }
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

/// Sum of `x` over eight independent f32 lanes (vectorisable, fixed order).
#[inline(always)]
fn sum_f32(x: &[f32]) -> f32 {
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    let mut acc = [0.0f32; 8];
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `out[i] = table[ids[i]]` (rows of length dim); when `accumulate`, `out[i] += table[ids[i]]` instead.
/// An id >= table rows is a caller bug (panic "invariant violated: ...").
/// Shapes: table is `[rows x dim]` (dim > 0), ids is `[n]`, out is `[n x dim]`.
pub fn gather_rows_f32(table: &[f32], ids: &[u32], dim: usize, out: &mut [f32], accumulate: bool) {
    check_rows("gather_rows: table", table.len(), dim);
    check_len("gather_rows: out", out.len(), ids.len() * dim);
    let rows = table.len() / dim;
    for (o, &id) in out.chunks_exact_mut(dim).zip(ids) {
        let id = id as usize;
        ensure!(
            id < rows,
            "gather_rows: id {id} out of range for a table of {rows} rows"
        );
        let src = &table[id * dim..(id + 1) * dim];
        if accumulate {
            o.iter_mut().zip(src).for_each(|(o, &s)| *o += s);
        } else {
            o.copy_from_slice(src);
        }
    }
}

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

/// `x[i] += y[i]`.
/// Shapes: x and y have the same length.
pub fn add_f32(x: &mut [f32], y: &[f32]) {
    check_len("add: y", y.len(), x.len());
    x.iter_mut().zip(y).for_each(|(a, &b)| *a += b);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny deterministic xorshift64* generator.
    struct Rng(u64);
    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// Uniform in [-1, 1).
        fn f32(&mut self) -> f32 {
            ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.f32()).collect()
        }
    }

    fn assert_close(got: &[f32], want: &[f64], abs: f64, rel: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g as f64 - w).abs();
            assert!(
                err <= abs + rel * w.abs(),
                "{what}: element {i}: got {g}, want {w} (err {err:e})"
            );
        }
    }

    fn at(s: &MatStrides, i0: usize, i1: usize, r: usize, c: usize) -> usize {
        let off = i0 as isize * s.batch_stride[0]
            + i1 as isize * s.batch_stride[1]
            + r as isize * s.row_stride
            + c as isize * s.col_stride;
        usize::try_from(off).unwrap()
    }

    /// Naive f64 reference: returns the expected contents of the whole C slice.
    fn gemm_ref(
        spec: &GemmSpec,
        a: &[f32],
        b: &[f32],
        c: &[f32],
        bias: Option<&[f32]>,
    ) -> Vec<f64> {
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
                        out[ci] =
                            spec.alpha as f64 * acc + prev + bias.map_or(0.0, |bv| bv[j] as f64);
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
                                    assert!(
                                        !out[at(&sc, 0, 0, r, j)].is_nan(),
                                        "{what}: NaN leaked"
                                    );
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
        let scores_s = MatStrides::row_major(seq)
            .with_batch((heads * seq * seq) as isize, (seq * seq) as isize);
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
        for (m, n, k, c_transposed) in [(600usize, 500usize, 65usize, false), (500, 600, 65, true)]
        {
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

    /// erf(x) in f32; max abs error vs f64 erf ~1.3e-7.
    fn erf_f32(x: f32) -> f32 {
        let e = 1.0 - erfc_nonneg(x.abs());
        if x.abs() < 0.5 {
            erf_small(x)
        } else if x < 0.0 {
            -e
        } else {
            e
        }
    }

    /// erf(x) in f64 by composite Simpson integration of 2/sqrt(pi) e^{-t^2}.
    fn erf_ref(x: f64) -> f64 {
        let steps = 2000;
        let h = x / steps as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..steps {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    fn sweep() -> Vec<f32> {
        (-8000..=8000)
            .map(|i| i as f32 * 1e-3)
            .chain([-30.0, -12.0, 12.0, 30.0, 1e-20, -1e-20])
            .collect()
    }

    #[test]
    fn erf_is_accurate() {
        let mut worst = 0.0f64;
        for i in -6000..=6000 {
            let x = i as f32 * 1e-3;
            worst = worst.max((erf_f32(x) as f64 - erf_ref(x as f64)).abs());
        }
        println!("max |erf_f32 - erf| over [-6, 6] = {worst:e}");
        assert!(worst < 2e-7, "max |erf error| = {worst:e}");
    }

    #[test]
    fn exp_matches_std() {
        for i in -8700..=8800 {
            let x = i as f32 * 1e-2;
            let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
            assert!(
                (got - want).abs() <= 3e-7 * want,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
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
                layer_norm_f32(&x, bias, residual, &gamma, &beta, &mut out, cols, eps);
                assert_close(&out, &want, 1e-5, 1e-5, "layer_norm");
            }
        }
    }

    #[test]
    #[should_panic(expected = "invariant violated:")]
    fn layer_norm_bad_gamma_panics() {
        let mut out = [0.0; 8];
        layer_norm_f32(
            &[0.0; 8], None, None, &[1.0; 3], &[0.0; 4], &mut out, 4, 1e-5,
        );
    }

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
    fn gather_rows_copy_and_accumulate() {
        let mut rng = Rng(41);
        let (rows, dim) = (6usize, 5usize);
        let table = rng.vec(rows * dim);
        let ids = [3u32, 0, 5, 3];
        let mut out = vec![f32::NAN; ids.len() * dim];
        gather_rows_f32(&table, &ids, dim, &mut out, false);
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(&out[i * dim..][..dim], &table[id as usize * dim..][..dim]);
        }
        let base = rng.vec(ids.len() * dim);
        let mut acc = base.clone();
        gather_rows_f32(&table, &ids, dim, &mut acc, true);
        for (i, v) in acc.iter().enumerate() {
            assert_eq!(*v, base[i] + table[ids[i / dim] as usize * dim + i % dim]);
        }
    }

    #[test]
    #[should_panic(expected = "invariant violated:")]
    fn gather_rows_out_of_range_panics() {
        let mut out = [0.0; 4];
        gather_rows_f32(&[0.0; 12], &[1, 6], 2, &mut out, false);
    }

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

    #[test]
    fn add_adds() {
        let mut x = vec![1.0, 2.0, 3.0];
        add_f32(&mut x, &[0.5, -2.0, 4.0]);
        assert_eq!(x, [1.5, 0.0, 7.0]);
    }

    #[test]
    #[should_panic(expected = "invariant violated:")]
    fn add_length_mismatch_panics() {
        add_f32(&mut [0.0; 3], &[0.0; 2]);
    }

    /// Micro-benchmark: `cargo test --release -- --ignored --nocapture bench_gemm`.
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
            println!("gemm {m}x{k} . {k}x{n}, threads = {threads}: median {:.3} ms ({gflops:.0} GFLOP/s)", times[2]);
        }
    }
}
