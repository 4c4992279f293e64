//! Run-time SIMD dispatch for the memory-bound kernels.
//!
//! Owns the `simd_versions!` macro (used by `gelu` and `softmax`). Promise: every version of a
//! dispatched function computes the same IEEE operations in the same order, so the result does
//! not depend on which instruction set the CPU offers; only the speed does.

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
