//! The deterministic tiled matrix product [`gemm_f32`]: `C = alpha * A·B + beta * C (+ bias)` over
//! strided, batched views, on the calling thread plus up to `threads - 1` rayon workers.
//!
//! Promises (see the `kernels` module doc for the reasoning): every operand view is bounds-checked
//! and C is checked not to overlap itself before anything is read or written; C is cut into tiles
//! whose shape depends only on `(m, n, k)` and C's layout, each computed by single-threaded `gemm`
//! calls (one per depth chunk of [`K_CHUNK`]) followed by its bias, so results are bit-identical
//! whatever `threads` is. More: an element of C gets the same bits whatever the tile's shape and
//! position — they depend only on its row of A, its column of B, k, alpha and beta — because tiles
//! `gemm` would compute outside its packed micro-kernel are computed by [`canonical`] with that
//! kernel's arithmetic; so a sequence's rows give the same result in any batch. With
//! `beta == 0` C's previous contents are never read, and with `alpha == 0` or `k == 0` neither A nor
//! B is.

mod canonical;

use std::sync::atomic::{AtomicUsize, Ordering};

use self::canonical::Combine;
use super::check_len;

/// Width, in elements of C's contiguous axis, of one GEMM tile (a multiple of
/// the AVX-512 micro-kernel's 48-wide register block). Narrower tiles cost
/// `gemm` noticeably more packing overhead (measured: ~8% at 96, ~2% at 192).
const GEMM_SLAB: usize = 192;
/// Extent of one GEMM tile along C's non-contiguous axis.
const GEMM_OTHER_SLAB: usize = 512;
/// Depth of one `gemm` call: k is cut into chunks of this many, each within one of `gemm`'s depth
/// blocks (its blocking starts at 512), so every element of C gets the same sequence of roundings
/// whatever the tile's shape (see [`canonical`]).
const K_CHUNK: usize = 512;
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
            for k0 in (0..k).step_by(K_CHUNK) {
                let kb = K_CHUNK.min(k - k0);
                // The first chunk combines with C as asked; later ones add to what it left.
                let (read_dst, dst_scale) = if k0 == 0 {
                    (beta != 0.0, beta)
                } else {
                    (true, 1.0)
                };
                let k0 = k0 as isize;
                // SAFETY: the offsets address elements (i0, i1, r0, k0) of A and (i0, i1, k0, c0) of
                // B, inside their slices (check_in_bounds), and the [mb x kb] / [kb x nb] sub-views
                // starting there are parts of the checked views.
                let (a_chunk, b_chunk) = unsafe {
                    (
                        a.as_ptr().offset(a_off + k0 * sa.col_stride),
                        b.as_ptr().offset(b_off + k0 * sb.row_stride),
                    )
                };
                if canonical::takes_a_special_path(mb, nb, kb) {
                    let tile = canonical::Tile {
                        dst,
                        a: a_chunk,
                        b: b_chunk,
                        sc,
                        sa,
                        sb,
                        m: mb,
                        n: nb,
                        k: kb,
                    };
                    // SAFETY: the tile's operands are the checked sub-views above; C's [mb x nb]
                    // tile at `dst` is this task's alone (check_no_self_overlap).
                    unsafe { canonical::tile(&tile, alpha, Combine::new(read_dst, dst_scale)) };
                    continue;
                }
                // SAFETY: as above: gemm reads only the [mb x kb] / [kb x nb] sub-views and writes
                // only the [mb x nb] tile of C at `dst`, which no other task touches and which
                // nothing else borrows while this call runs (we hold `c` mutably). Without
                // read_dst gemm does not read C.
                unsafe {
                    gemm::gemm(
                        mb,
                        nb,
                        kb,
                        dst,
                        sc.col_stride,
                        sc.row_stride,
                        read_dst,
                        a_chunk,
                        sa.col_stride,
                        sa.row_stride,
                        b_chunk,
                        sb.col_stride,
                        sb.row_stride,
                        dst_scale,
                        alpha,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
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

#[cfg(test)]
mod tests;
