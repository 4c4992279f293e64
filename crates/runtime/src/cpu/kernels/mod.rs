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
//! [`gemm_f32`] is multi-threaded: its `threads` argument bounds how many
//! rayon workers the call may occupy (the calling thread counts as one), and it
//! only goes parallel when each worker gets at least ~1 MFLOP. All other
//! kernels are single-threaded loops the compiler vectorises; the backend runs
//! the row-wise ones (bias + GELU, LayerNorm, softmax) over chunks of whole
//! rows with [`split_rows`], so a stream alone on the machine uses every core
//! for them too (each row's arithmetic is the same in any chunk). The transcendental ones (GELU, softmax) are compiled
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
//! Results are also **independent of the batch**: an element of C depends only
//! on its row of A, its column of B, k, alpha and beta, not on the product's
//! shape or the element's place in it (`gemm::canonical` says how), and the
//! other kernels work per row or add masked positions as exact zeros. So a
//! sequence's embedding has the same bits alone, padded in a batch, or batched
//! with other callers' sequences by the engine.
//!
//! # Panics
//!
//! Kernels panic only on caller bugs (slices too short, inconsistent shapes,
//! out-of-range ids, a C view that overlaps itself); those messages start with
//! `"invariant violated:"`.
//!
//! # Layout
//!
//! One file per concern; this module re-exports every public kernel, so callers name them
//! `kernels::gemm_f32`, `kernels::layer_norm_f32`, ... whichever file holds them.
//!
//! - `gemm/`: the deterministic tiled matrix product ([`gemm_f32`]) and its threading.
//! - `simd.rs`: the `simd_versions!` macro, run-time dispatch between SSE2, AVX2 and AVX-512F builds.
//! - `math.rs`: scalar transcendental functions (`exp`, `erf`, `erfc`) the kernels inline.
//! - `gelu.rs`: exact and tanh GELU, and bias + GELU fused ([`gelu_f32`], [`gelu_tanh_f32`],
//!   [`bias_gelu_f32`]).
//! - `norm.rs`: residual + LayerNorm ([`layer_norm_f32`]) and row-wise L2 normalisation
//!   ([`l2_normalize_f32`]).
//! - `softmax.rs`: the masked softmax of attention scores ([`masked_softmax_f32`]).
//! - `gather.rs`: embedding-table row gathers ([`gather_rows_f32`]).
//! - `pooling.rs`: masked mean pooling ([`mean_pool_f32`]).
//! - `elementwise.rs`: element-wise addition ([`add_f32`]).
//! - `rows.rs`: [`split_rows`], a row-wise kernel over chunks of whole rows on several threads.

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

#[macro_use]
mod simd;

mod elementwise;
mod gather;
mod gelu;
mod gemm;
mod math;
mod norm;
mod pooling;
mod rows;
mod softmax;
#[cfg(test)]
mod test_util;

pub use self::elementwise::add_f32;
pub use self::gather::gather_rows_f32;
pub use self::gelu::{bias_gelu_f32, gelu_f32, gelu_tanh_f32};
pub use self::gemm::{gemm_f32, GemmSpec, MatStrides};
pub use self::norm::{l2_normalize_f32, layer_norm_f32, LayerNormInputs};
pub use self::pooling::mean_pool_f32;
pub use self::rows::split_rows;
pub use self::softmax::masked_softmax_f32;
