//! The canonical arithmetic of one GEMM tile, written out for the tiles `gemm` would not compute with
//! its packed micro-kernel.
//!
//! Why it exists: the engine mixes callers' sequences into batches, and on the CPU a sequence's
//! embedding must not change in any bit with the batch it ran in. `gemm`'s packed micro-kernel gives
//! every element of C the same arithmetic whatever the tile's shape — a chain of fused multiply-adds
//! over k in order, starting from zero, then one combine with C (see [`combine`]) — as long as k fits
//! one of its depth blocks (the caller cuts k into chunks of [`super::K_CHUNK`], which does). But for
//! small tiles `gemm` takes other paths (horizontal dot products when `m·n <= 256`, matrix-vector
//! kernels when `m` or `n` is 1, an outer product when `k <= 2`), whose sums are ordered differently; a
//! short sequence alone hits them, the same sequence padded in a batch does not. [`takes_a_special_path`]
//! says when, and [`tile`] computes such a tile exactly as the micro-kernel would have.
//!
//! Fused or not follows `gemm`'s own choice of kernel: fused multiply-adds where the CPU has them
//! (x86-64 with FMA, aarch64), separate multiply and add in `gemm`'s scalar fallback.

use crate::ops::MatStrides;

/// Whether `gemm` would compute an `m x n` tile of depth `k` with something other than its packed
/// micro-kernel (a superset of its conditions, which also depend on strides).
pub(super) fn takes_a_special_path(m: usize, n: usize, k: usize) -> bool {
    m <= 1 || n <= 1 || k <= 2 || m * n <= 16 * 16
}

/// What one depth chunk's product does to C, as `gemm`'s micro-kernel writes it: `gemm` is called as
/// `dst = dst_scale * dst + alpha * acc`, and picks the form by `dst_scale`.
#[derive(Clone, Copy)]
pub(super) enum Combine {
    /// `dst = alpha * acc` (C is not read).
    Overwrite,
    /// `dst = fma(alpha, acc, dst)` (`dst_scale == 1`).
    Accumulate,
    /// `dst = dst_scale * dst + alpha * acc` (separately rounded products).
    Scale(f32),
}

impl Combine {
    pub(super) fn new(read_dst: bool, dst_scale: f32) -> Self {
        if !read_dst || dst_scale == 0.0 {
            Combine::Overwrite
        } else if dst_scale == 1.0 {
            Combine::Accumulate
        } else {
            Combine::Scale(dst_scale)
        }
    }
}

/// The operands of one tile: `dst` is element (0, 0) of an `[m x n]` tile of C, `a` element (0, 0) of
/// the `[m x k]` rows of A, `b` element (0, 0) of the `[k x n]` columns of B, each with its strides.
pub(super) struct Tile<'s> {
    pub dst: *mut f32,
    pub a: *const f32,
    pub b: *const f32,
    pub sc: &'s MatStrides,
    pub sa: &'s MatStrides,
    pub sb: &'s MatStrides,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// Computes the tile as `gemm`'s micro-kernel would: per element, `acc` = fused multiply-adds over
/// `0..k` in order from 0, then `combine` with `alpha`.
///
/// # Safety
///
/// Every element the tile addresses through its pointers and strides must be valid (C's for reads and
/// writes, touched by nobody else during the call).
pub(super) unsafe fn tile(t: &Tile<'_>, alpha: f32, combine: Combine) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above); the caller's promise covers the
        // memory.
        return unsafe {
            for_each_block(t, alpha, combine, true, |panel, a| {
                accumulate_x86_fma(panel, a)
            })
        };
    }
    let fused = cfg!(target_arch = "aarch64");
    // SAFETY: the caller's promise covers the memory.
    unsafe {
        for_each_block(t, alpha, combine, fused, |panel, a| {
            if fused {
                accumulate::<true>(panel, a)
            } else {
                accumulate::<false>(panel, a)
            }
        })
    }
}

/// Columns and rows of C accumulated at once. B's columns are copied, `COLUMNS` at a time, into a
/// contiguous `[k x COLUMNS]` panel (zero-filled past C's last column), so the loop over columns is
/// vectorised — B is often a transposed view here: the keys of attention scores — and `ROWS`
/// independent chains of multiply-adds hide their latency, while each element's sum still runs over k
/// in order.
const COLUMNS: usize = 16;
const ROWS: usize = 4;

type Panel = [[f32; COLUMNS]];
type Block = [[f32; COLUMNS]; ROWS];

/// Walks the tile in blocks of `ROWS x COLUMNS`: packs B's panel, has `accumulate` sum the block's
/// products over k (given the panel and the addresses of the block's rows of A: rows past the tile's
/// last repeat it, computed and not stored, so every loop has a fixed trip count), then combines the
/// sums into C.
///
/// # Safety
///
/// As [`tile`].
unsafe fn for_each_block(
    t: &Tile<'_>,
    alpha: f32,
    combine: Combine,
    fused: bool,
    accumulate: impl Fn(&Panel, [RowOfA; ROWS]) -> Block,
) {
    let madd = |x: f32, y: f32, z: f32| if fused { x.mul_add(y, z) } else { x * y + z };
    let mut panel = vec![[0f32; COLUMNS]; t.k];
    for j0 in (0..t.n).step_by(COLUMNS) {
        let width = COLUMNS.min(t.n - j0);
        for (kk, row) in panel.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate().take(width) {
                let at = kk as isize * t.sb.row_stride + (j0 + j) as isize * t.sb.col_stride;
                // SAFETY: (kk, j0 + j) of B lies inside the tile's operand.
                *v = unsafe { *t.b.offset(at) };
            }
            row[width..].fill(0.0);
        }
        for i0 in (0..t.m).step_by(ROWS) {
            let height = ROWS.min(t.m - i0);
            let rows = std::array::from_fn(|r| RowOfA {
                start: t
                    .a
                    .wrapping_offset((i0 + r.min(height - 1)) as isize * t.sa.row_stride),
                stride: t.sa.col_stride,
            });
            let sums = accumulate(&panel, rows);
            for (r, sums) in sums.iter().enumerate().take(height) {
                for (j, &acc) in sums.iter().enumerate().take(width) {
                    let at =
                        (i0 + r) as isize * t.sc.row_stride + (j0 + j) as isize * t.sc.col_stride;
                    // SAFETY: (i0 + r, j0 + j) lies in C's tile, which is ours alone for the call.
                    let dst = unsafe { &mut *t.dst.offset(at) };
                    *dst = match combine {
                        Combine::Overwrite => alpha * acc,
                        Combine::Accumulate => madd(alpha, acc, *dst),
                        Combine::Scale(dst_scale) => dst_scale * *dst + alpha * acc,
                    };
                }
            }
        }
    }
}

/// One row of A inside the tile: element `kk` is at `start + kk * stride`, for `kk < k` (the panel's
/// length).
#[derive(Clone, Copy)]
struct RowOfA {
    start: *const f32,
    stride: isize,
}

impl RowOfA {
    fn get(self, kk: usize) -> f32 {
        // SAFETY: `for_each_block` builds rows that lie inside the tile's operand A for kk < k.
        unsafe { *self.start.offset(kk as isize * self.stride) }
    }
}

/// The block's sums in plain Rust (`gemm`'s scalar fallback and aarch64).
fn accumulate<const FUSED: bool>(panel: &Panel, rows: [RowOfA; ROWS]) -> Block {
    let mut acc = [[0f32; COLUMNS]; ROWS];
    for (kk, b_row) in panel.iter().enumerate() {
        for (acc, row) in acc.iter_mut().zip(rows) {
            let a = row.get(kk);
            for (acc, &b) in acc.iter_mut().zip(b_row) {
                *acc = if FUSED {
                    a.mul_add(b, *acc)
                } else {
                    a * b + *acc
                };
            }
        }
    }
    acc
}

/// The block's sums with AVX2 fused multiply-adds: `ROWS x 2` accumulators of 8 lanes, in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn accumulate_x86_fma(panel: &Panel, rows: [RowOfA; ROWS]) -> Block {
    use std::arch::x86_64::{__m256, _mm256_storeu_ps};
    use std::arch::x86_64::{_mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps};
    let mut acc: [[__m256; 2]; ROWS] = [[_mm256_setzero_ps(); 2]; ROWS];
    for (kk, b_row) in panel.iter().enumerate() {
        // SAFETY: a panel row is 16 contiguous f32, read as two unaligned 8-lane vectors.
        let b = unsafe {
            [
                _mm256_loadu_ps(b_row.as_ptr()),
                _mm256_loadu_ps(b_row.as_ptr().add(8)),
            ]
        };
        for (acc, row) in acc.iter_mut().zip(rows) {
            let a = _mm256_set1_ps(row.get(kk));
            acc[0] = _mm256_fmadd_ps(a, b[0], acc[0]);
            acc[1] = _mm256_fmadd_ps(a, b[1], acc[1]);
        }
    }
    let mut out = [[0f32; COLUMNS]; ROWS];
    for (out, acc) in out.iter_mut().zip(acc) {
        // SAFETY: `out` rows are 16 f32, written as two unaligned 8-lane vectors.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[1]);
        }
    }
    out
}
