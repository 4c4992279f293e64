//! The non-GEMM ops as CUDA C, compiled once per process by NVRTC for the device's architecture, and
//! their launches.
//!
//! # Promises
//!
//! - The source is compiled on the first op a device runs (not at `CudaDevice::new`, so a program that
//!   only moves memory never needs libnvrtc), for `sm_<major><minor>` of that device; the module and its
//!   functions live as long as the device. A compile or load failure is reported once, as a clear
//!   [`RuntimeError::Device`], on every op call. The module is unloaded when the device's last clone is
//!   dropped (the device's `Drop` makes its context current first).
//! - Every kernel is deterministic: reductions run in a fixed order (warp shuffles, then warp partials
//!   summed in index order by every thread), no atomics — so the same inputs give the same bits on any
//!   stream, which the model's "16 threads bit-identical" property needs.
//! - Semantics match the CPU backend's kernels (`braid_runtime::cpu::kernels`): masked keys get
//!   probability 0 and a fully masked row is all zeros, while a NaN or infinite score propagates as NaN
//!   (the maxima propagate NaN, unlike `fmaxf`); mean pooling divides by `max(Σ mask, 1e-9)`;
//!   L2 normalisation divides by `max(‖x‖, 1e-12)`; GELU is the exact erf form unless `tanh` is asked.
//! - Every op exists for f32, f16 and bf16 storage (`braid_<op>_<dtype>`); f16/bf16 values are widened
//!   to f32 on load and rounded to nearest even on store, so all arithmetic is f32.
//! - Attention is one fused kernel (scores, masked online softmax and the weighted sum of V, for heads
//!   of up to 128 features); the PTX is cached on disk by [`crate::ptx_cache`], so a process after the
//!   first skips NVRTC's ~0.3 s compile.

use std::ffi::{c_void, CString};

use braid_runtime::{DType, Result, RuntimeError};
use cudarc::driver::{result, sys};

use crate::live;

/// The kernels' source. Grid-stride loops for elementwise ops; one block per row for row reductions;
/// one warp per row for the softmax (rows are at most a few hundred keys long).
const SOURCE: &str = r#"
#define WARP 32
typedef unsigned long long u64;
typedef long long i64;

// Storage types: f32 as float; f16 and bf16 as 16-bit patterns converted to and from f32 around every
// computation (no cuda_fp16.h, so the source needs no include path under NVRTC).
struct h16 { unsigned short bits; };
struct b16 { unsigned short bits; };
__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const h16* p) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p->bits));
    return f;
}
__device__ __forceinline__ float load(const b16* p) { return __uint_as_float(((unsigned)p->bits) << 16); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(h16* p, float v) {
    unsigned short b;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(b) : "f"(v));
    p->bits = b;
}
__device__ __forceinline__ void store(b16* p, float v) {  // round to nearest even; NaN stays NaN
    const unsigned u = __float_as_uint(v);
    p->bits = (u & 0x7fffffffu) > 0x7f800000u ? (unsigned short)0x7fc0
                                              : (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
// max that propagates NaN (fmaxf returns the other operand), so a NaN score is not skipped.
__device__ __forceinline__ float max_nan(float a, float b) { return a > b || a != a ? a : b; }
__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Sum over the block, the same bits in every thread: warp sums, then the warp partials in index order.
__device__ float block_sum(float v, float* partials) {
    v = warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & (WARP - 1)) == 0) partials[threadIdx.x / WARP] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < blockDim.x / WARP; ++w) total += partials[w];
    return total;
}
__device__ __forceinline__ float gelu_erf(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
}
__device__ __forceinline__ float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}
#define GRID_STRIDE(i, n) \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

extern "C" __global__ void braid_fill(float* x, u64 n, float value) {
    GRID_STRIDE(i, n) x[i] = value;
}

template <typename T> __device__ void add(T* x, const T* y, u64 n) {
    GRID_STRIDE(i, n) store(x + i, load(x + i) + load(y + i));
}

// Row-wise elementwise kernels run on a 2-D grid: x strides over the columns, y over the rows, so no
// thread divides by the row length per element.
#define ROWS_2D(r, rows) for (u64 r = blockIdx.y; r < (rows); r += gridDim.y)
#define COLS_2D(j, cols) for (u64 j = blockIdx.x * (u64)blockDim.x + threadIdx.x; j < (cols); j += (u64)gridDim.x * blockDim.x)

template <typename T>
__device__ void bias_gelu(T* x, const T* bias, u64 rows, u64 cols, int use_tanh) {
    ROWS_2D(r, rows) {
        T* xr = x + r * cols;
        COLS_2D(j, cols) {
            const float v = load(xr + j) + load(bias + j);
            store(xr + j, use_tanh ? gelu_tanh(v) : gelu_erf(v));
        }
    }
}

// c[r * ldc + j] += bias[j] for batches of rows x cols at batch stride `batch_stride`.
template <typename T>
__device__ void add_bias(T* c, const T* bias, u64 batches, i64 batch_stride, u64 rows, u64 cols, i64 ldc) {
    ROWS_2D(r, batches * rows) {
        const u64 b = r / rows;
        T* cr = c + b * batch_stride + (r - b * rows) * ldc;
        COLS_2D(j, cols) store(cr + j, load(cr + j) + load(bias + j));
    }
}

// One block per row: out = LayerNorm(x + bias + residual) * gamma + beta (bias, residual optional).
template <typename T>
__device__ void layer_norm(const T* x, const T* bias, const T* residual, const T* gamma, const T* beta,
                           T* out, u64 cols, float eps) {
    __shared__ float partials[WARP];
    const u64 row = blockIdx.x;
    const T* xr = x + row * cols;
    const T* rr = residual ? residual + row * cols : 0;
    T* o = out + row * cols;
    #define LN_INPUT(c) (load(xr + c) + (bias ? load(bias + c) : 0.0f) + (rr ? load(rr + c) : 0.0f))
    float s = 0.0f;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) s += LN_INPUT(c);
    const float mean = block_sum(s, partials) / (float)cols;
    float q = 0.0f;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = LN_INPUT(c) - mean;
        q += d * d;
    }
    const float inv = rsqrtf(block_sum(q, partials) / (float)cols + eps);
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x)
        store(o + c, (LN_INPUT(c) - mean) * inv * load(gamma + c) + load(beta + c));
    #undef LN_INPUT
}

// One warp per row of `scores [batch, heads, q, k]`; keys with mask[b, j] == 0 get probability 0. A kept
// NaN or +inf score (or only -inf kept scores) makes the kept keys NaN; a fully masked row is zeros.
template <typename T>
__device__ void masked_softmax(T* scores, const float* mask, u64 rows, u64 rows_per_batch, u64 k, float scale) {
    const u64 row = blockIdx.x * (u64)(blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;
    const int lane = threadIdx.x & (WARP - 1);
    T* r = scores + row * k;
    const float* m = mask + (row / rows_per_batch) * k;
    float top = __int_as_float(0xff800000);  // -infinity (NVRTC has no math.h)
    for (u64 j = lane; j < k; j += WARP) if (m[j] != 0.0f) top = max_nan(top, load(r + j) * scale);
    top = warp_max(top);
    float sum = 0.0f;
    for (u64 j = lane; j < k; j += WARP) {
        const float e = m[j] != 0.0f ? expf(load(r + j) * scale - top) : 0.0f;
        sum += e;
    }
    sum = warp_sum(sum);
    const float inv = sum == 0.0f ? 0.0f : 1.0f / sum;  // 0 only when every key is masked; NaN stays NaN
    for (u64 j = lane; j < k; j += WARP)
        store(r + j, m[j] != 0.0f ? expf(load(r + j) * scale - top) * inv : 0.0f);
}

// Fused multi-head attention over qkv [batch, seq, 3 * hidden] (Q | K | V, heads side by side) into
// out [batch, seq, hidden]. Grid (ceil(seq / ATT_QUERIES), heads, batch), ATT_WARPS warps per block; each
// warp owns ATT_PER_WARP queries and works on all of them at once (independent accumulators, so the
// loops are not one long dependency chain). Keys stream through shared memory ATT_KEYS at a time with
// an online softmax (running max and sum in f32, fixed order: deterministic). head_dim <= ATT_MAX_HD.
#define ATT_WARPS 4
#define ATT_QUERIES 16
#define ATT_PER_WARP (ATT_QUERIES / ATT_WARPS)
#define ATT_KEYS 32
#define ATT_MAX_HD 128
#define ATT_LOADS 8
template <typename T>
__device__ void attention(const T* qkv, const float* mask, T* out, u64 seq, u64 heads, u64 head_dim, float scale) {
    __shared__ float ks[ATT_KEYS][ATT_MAX_HD + 1];  // +1: lanes read different rows, different banks
    __shared__ float vs[ATT_KEYS][ATT_MAX_HD];
    __shared__ float qs[ATT_WARPS][ATT_PER_WARP][ATT_MAX_HD];
    __shared__ float keep[ATT_KEYS];
    const unsigned hd = (unsigned)head_dim, n = (unsigned)seq;
    const u64 b = blockIdx.z, h = blockIdx.y, hidden = heads * head_dim, row = 3 * hidden;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x & (WARP - 1);
    const unsigned q0 = blockIdx.x * ATT_QUERIES + warp * ATT_PER_WARP;
    const T* base = qkv + b * seq * row + h * head_dim;
    #pragma unroll
    for (int i = 0; i < ATT_PER_WARP; ++i)  // queries past the end compute on zeros and store nothing
        for (unsigned d = lane; d < hd; d += WARP)
            qs[warp][i][d] = q0 + i < n ? load(base + (q0 + i) * row + d) * scale : 0.0f;
    const float neg_inf = __int_as_float(0xff800000);
    float top[ATT_PER_WARP], total[ATT_PER_WARP], acc[ATT_PER_WARP][ATT_MAX_HD / WARP];
    #pragma unroll
    for (int i = 0; i < ATT_PER_WARP; ++i) {
        top[i] = neg_inf;
        total[i] = 0.0f;
        #pragma unroll
        for (int c = 0; c < ATT_MAX_HD / WARP; ++c) acc[i][c] = 0.0f;
    }
    for (unsigned k0 = 0; k0 < n; k0 += ATT_KEYS) {
        __syncthreads();  // the previous tile is no longer read (and qs is written, on the first pass)
        // ATT_LOADS elements of K and of V per thread in flight at once, then stored: a loop that stored
        // each load before issuing the next would wait for global memory once per element.
        for (unsigned e0 = threadIdx.x; e0 < ATT_KEYS * hd; e0 += ATT_LOADS * blockDim.x) {
            float kr[ATT_LOADS], vr[ATT_LOADS];
            #pragma unroll
            for (int u = 0; u < ATT_LOADS; ++u) {
                const unsigned e = e0 + u * blockDim.x, j = e / hd, d = e - j * hd, key = k0 + j;
                const bool in = e < ATT_KEYS * hd && key < n;
                kr[u] = in ? load(base + key * row + hidden + d) : 0.0f;
                vr[u] = in ? load(base + key * row + 2 * hidden + d) : 0.0f;
            }
            #pragma unroll
            for (int u = 0; u < ATT_LOADS; ++u) {
                const unsigned e = e0 + u * blockDim.x, j = e / hd, d = e - j * hd;
                if (e < ATT_KEYS * hd) {
                    ks[j][d] = kr[u];
                    vs[j][d] = vr[u];
                }
            }
        }
        if (threadIdx.x < ATT_KEYS) {
            const unsigned key = k0 + threadIdx.x;
            keep[threadIdx.x] = key < n && mask[b * seq + key] != 0.0f ? 1.0f : 0.0f;
        }
        __syncthreads();
        // Scores: lane j holds key k0 + j's score for every query of this warp.
        const bool kept = keep[lane] != 0.0f;
        float s[ATT_PER_WARP];
        #pragma unroll
        for (int i = 0; i < ATT_PER_WARP; ++i) s[i] = 0.0f;
        #pragma unroll 8
        for (unsigned d = 0; d < hd; ++d) {
            const float k = ks[lane][d];
            #pragma unroll
            for (int i = 0; i < ATT_PER_WARP; ++i) s[i] += qs[warp][i][d] * k;
        }
        // Online softmax: new running max, the old sum and context rescaled to it.
        float p[ATT_PER_WARP], rescale[ATT_PER_WARP];
        #pragma unroll
        for (int i = 0; i < ATT_PER_WARP; ++i) {
            const float new_top = max_nan(top[i], warp_max(kept ? s[i] : neg_inf));
            // -infinity only while every key so far is masked or -inf: nothing to rescale (a kept -inf
            // score gives p = NaN). NaN once a kept score is NaN, and it stays NaN: the output is NaN.
            rescale[i] = new_top == neg_inf ? 1.0f : expf(top[i] - new_top);
            p[i] = kept ? expf(s[i] - new_top) : 0.0f;
            top[i] = new_top;
            total[i] = total[i] * rescale[i] + warp_sum(p[i]);
        }
        // Context: lane d accumulates feature d (and d + 32, …) of every query over this tile's keys.
        #pragma unroll
        for (int c = 0; c < ATT_MAX_HD / WARP; ++c) {
            if (c * WARP >= hd) break;  // warp-uniform: every lane shuffles below
            const unsigned d = lane + c * WARP;
            float a[ATT_PER_WARP];
            #pragma unroll
            for (int i = 0; i < ATT_PER_WARP; ++i) a[i] = acc[i][c] * rescale[i];
            #pragma unroll 8
            for (int j = 0; j < ATT_KEYS; ++j) {
                const float v = d < hd ? vs[j][d] : 0.0f;
                #pragma unroll
                for (int i = 0; i < ATT_PER_WARP; ++i) a[i] += __shfl_sync(0xffffffffu, p[i], j) * v;
            }
            #pragma unroll
            for (int i = 0; i < ATT_PER_WARP; ++i) acc[i][c] = a[i];
        }
    }
    #pragma unroll
    for (int i = 0; i < ATT_PER_WARP; ++i) {
        if (q0 + i >= n) break;
        const float inv = total[i] == 0.0f ? 0.0f : 1.0f / total[i];  // 0: every key masked; NaN stays
        #pragma unroll
        for (int c = 0; c < ATT_MAX_HD / WARP; ++c) {
            const unsigned d = lane + c * WARP;
            if (d < hd) store(out + (b * seq + q0 + i) * hidden + h * head_dim + d, acc[i][c] * inv);
        }
    }
}

// out[i, :] (+)= table[ids[i], :]; an id out of range writes NaN (the tensor layer checks ids first).
template <typename T>
__device__ void gather_rows(const T* table, u64 table_rows, const unsigned* ids, u64 n_ids, u64 dim, T* out,
                            int accumulate) {
    GRID_STRIDE(i, n_ids * dim) {
        const u64 id = ids[i / dim];
        const float v = id < table_rows ? load(table + id * dim + i % dim) : __int_as_float(0x7fc00000);
        store(out + i, accumulate ? load(out + i) + v : v);
    }
}

// out[b, d] = Σ_s x[b, s, d] * mask[b, s] / max(Σ_s mask[b, s], 1e-9). Grid (batch, ceil(dim / 32)) of
// POOL_WARPS warps: lane = feature, the warps stride over the sequence, their partials summed in order.
#define POOL_WARPS 8
template <typename T>
__device__ void mean_pool(const T* x, const float* mask, u64 batch, u64 seq, u64 dim, T* out) {
    __shared__ float sums[POOL_WARPS][WARP];
    __shared__ float counts[POOL_WARPS];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x & (WARP - 1);
    const u64 b = blockIdx.x, d = blockIdx.y * (u64)WARP + lane;
    float acc = 0.0f, count = 0.0f;
    for (u64 s = warp; s < seq; s += POOL_WARPS) {
        const float m = mask[b * seq + s];
        if (m != 0.0f && d < dim) acc += m * load(x + (b * seq + s) * dim + d);
        count += m;
    }
    sums[warp][lane] = acc;
    if (lane == 0) counts[warp] = count;
    __syncthreads();
    if (warp == 0 && d < dim) {
        float a = 0.0f, c = 0.0f;
        for (int w = 0; w < POOL_WARPS; ++w) {
            a += sums[w][lane];
            c += counts[w];
        }
        store(out + b * dim + d, a / fmaxf(c, 1e-9f));
    }
}

// One block per row: x /= max(|x|, 1e-12).
template <typename T> __device__ void l2_normalize(T* x, u64 dim) {
    __shared__ float partials[WARP];
    T* r = x + blockIdx.x * dim;
    float s = 0.0f;
    for (u64 c = threadIdx.x; c < dim; c += blockDim.x) s += load(r + c) * load(r + c);
    const float inv = 1.0f / fmaxf(sqrtf(block_sum(s, partials)), 1e-12f);
    for (u64 c = threadIdx.x; c < dim; c += blockDim.x) store(r + c, load(r + c) * inv);
}

// One set of entry points per storage type: braid_<op>_<dtype>.
#define BRAID_KERNELS(S, T) \
extern "C" __global__ void braid_add_##S(T* x, const T* y, u64 n) { add(x, y, n); } \
extern "C" __global__ void braid_bias_gelu_##S(T* x, const T* bias, u64 rows, u64 cols, int use_tanh) { \
    bias_gelu(x, bias, rows, cols, use_tanh); } \
extern "C" __global__ void braid_add_bias_##S(T* c, const T* bias, u64 batches, i64 batch_stride, u64 rows, \
    u64 cols, i64 ldc) { add_bias(c, bias, batches, batch_stride, rows, cols, ldc); } \
extern "C" __global__ void braid_layer_norm_##S(const T* x, const T* bias, const T* residual, \
    const T* gamma, const T* beta, T* out, u64 cols, float eps) { \
    layer_norm(x, bias, residual, gamma, beta, out, cols, eps); } \
extern "C" __global__ void braid_masked_softmax_##S(T* scores, const float* mask, u64 rows, \
    u64 rows_per_batch, u64 k, float scale) { masked_softmax(scores, mask, rows, rows_per_batch, k, scale); } \
extern "C" __global__ void braid_attention_##S(const T* qkv, const float* mask, T* out, u64 seq, u64 heads, \
    u64 hd, float scale) { attention(qkv, mask, out, seq, heads, hd, scale); } \
extern "C" __global__ void braid_gather_rows_##S(const T* table, u64 table_rows, const unsigned* ids, \
    u64 n_ids, u64 dim, T* out, int accumulate) { gather_rows(table, table_rows, ids, n_ids, dim, out, accumulate); } \
extern "C" __global__ void braid_mean_pool_##S(const T* x, const float* mask, u64 batch, u64 seq, u64 dim, \
    T* out) { mean_pool(x, mask, batch, seq, dim, out); } \
extern "C" __global__ void braid_l2_normalize_##S(T* x, u64 dim) { l2_normalize(x, dim); }

BRAID_KERNELS(f32, float)
BRAID_KERNELS(f16, h16)
BRAID_KERNELS(bf16, b16)
"#;

/// Threads per block for the row and grid-stride kernels (a multiple of the warp size, at most 32
/// warps).
pub(crate) const BLOCK: u32 = 256;
/// Grid-stride kernels launch at most this many blocks (enough to fill an H100's 132 SMs many times).
const MAX_GRID: u64 = 132 * 32;
/// The fused attention kernel: threads per block, queries per block and the largest head it takes
/// (`ATT_WARPS * 32`, `ATT_QUERIES`, `ATT_MAX_HD` in the source).
pub(crate) const ATTENTION_BLOCK: u32 = 4 * 32;
pub(crate) const ATTENTION_QUERIES: usize = 16;
pub(crate) const ATTENTION_MAX_HEAD_DIM: usize = 128;
/// The mean-pooling kernel: threads per block (`POOL_WARPS * 32`) and features per block (one warp's).
pub(crate) const POOL_BLOCK: u32 = 8 * 32;
pub(crate) const POOL_FEATURES: usize = 32;

/// The kernels of one storage dtype (`braid_<op>_<dtype>` in the source).
pub(crate) struct KernelSet {
    pub(crate) add: sys::CUfunction,
    pub(crate) bias_gelu: sys::CUfunction,
    pub(crate) add_bias: sys::CUfunction,
    pub(crate) layer_norm: sys::CUfunction,
    pub(crate) masked_softmax: sys::CUfunction,
    pub(crate) attention: sys::CUfunction,
    pub(crate) gather_rows: sys::CUfunction,
    pub(crate) mean_pool: sys::CUfunction,
    pub(crate) l2_normalize: sys::CUfunction,
}

/// A loaded module, unloaded when dropped (with the context current: the device's `Drop` binds it).
struct Loaded(sys::CUmodule);

/// The loaded module and its function handles: `fill` (f32) and one [`KernelSet`] per float dtype.
pub(crate) struct Kernels {
    pub(crate) fill: sys::CUfunction,
    f32: KernelSet,
    f16: KernelSet,
    bf16: KernelSet,
    /// The module the functions above are handles into; unloaded when `Kernels` is dropped.
    _module: Loaded,
}

// SAFETY: module and function handles are driver objects usable from any thread (the driver API is
// thread-safe); they are only read after loading and unloaded once, in `Drop`.
unsafe impl Send for Kernels {}
// SAFETY: as for `Send`.
unsafe impl Sync for Kernels {}
// SAFETY: as for `Kernels`: the handle is only unloaded once, in `Drop`.
unsafe impl Send for Loaded {}
// SAFETY: as for `Send`.
unsafe impl Sync for Loaded {}

impl Kernels {
    /// The kernels that compute on `dtype` data.
    pub(crate) fn of(&self, dtype: DType, op: &'static str) -> Result<&KernelSet> {
        match dtype {
            DType::F32 => Ok(&self.f32),
            DType::F16 => Ok(&self.f16),
            DType::BF16 => Ok(&self.bf16),
            DType::U32 => Err(RuntimeError::Unsupported {
                op,
                dtype,
                backend: "cuda",
            }),
        }
    }

    /// Compiles the source for compute capability `(major, minor)` (or takes the PTX from the on-disk
    /// cache, see [`crate::ptx_cache`]) and loads it into the current context.
    pub(crate) fn compile_and_load(capability: (i32, i32)) -> Result<Self> {
        let arch = format!("sm_{}{}", capability.0, capability.1);
        let ptx = crate::ptx_cache::load_or_compile(SOURCE, &arch, || compile(&arch))?;
        let image = CString::new(ptx)
            .map_err(|_| RuntimeError::Device("NVRTC returned PTX with a NUL byte".into()))?;
        // SAFETY: `image` is a NUL-terminated PTX image that outlives the call; the caller made the
        // device's context current.
        let module = unsafe { result::module::load_data(image.as_ptr().cast::<c_void>()) }
            .map_err(|e| {
                RuntimeError::Device(format!("cuModuleLoadData (braid's kernels): {e:?}"))
            })?;
        live::MODULES.up();
        // From here on the module is unloaded if a function is missing: `Loaded` owns it.
        let module = Loaded(module);
        let function = |name: &str| {
            // SAFETY: `module` was loaded above and is not unloaded while `Kernels` lives.
            unsafe {
                result::module::get_function(
                    module.0,
                    CString::new(name).expect("kernel names have no NUL"),
                )
            }
            .map_err(|e| {
                RuntimeError::Device(format!("kernel {name} missing from the module: {e:?}"))
            })
        };
        let set = |dtype: &str| -> Result<KernelSet> {
            let f = |op: &str| function(&format!("braid_{op}_{dtype}"));
            Ok(KernelSet {
                add: f("add")?,
                bias_gelu: f("bias_gelu")?,
                add_bias: f("add_bias")?,
                layer_norm: f("layer_norm")?,
                masked_softmax: f("masked_softmax")?,
                attention: f("attention")?,
                gather_rows: f("gather_rows")?,
                mean_pool: f("mean_pool")?,
                l2_normalize: f("l2_normalize")?,
            })
        };
        Ok(Self {
            fill: function("braid_fill")?,
            f32: set("f32")?,
            f16: set("f16")?,
            bf16: set("bf16")?,
            _module: module,
        })
    }
}

/// NVRTC: the source to PTX for `arch`.
fn compile(arch: &str) -> Result<String> {
    // The architecture as a plain option: `CompileOptions::arch` wants a `&'static str`, which a
    // run-time string would have to leak.
    let options = cudarc::nvrtc::CompileOptions {
        options: vec![format!("--gpu-architecture={arch}")],
        name: Some("braid_kernels.cu".into()),
        ..Default::default()
    };
    let ptx = std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(SOURCE, options))
        .map_err(|_| {
            RuntimeError::Device(
                "cannot load NVRTC (libnvrtc): the CUDA ops compile their kernels at run time; \
                 put the CUDA toolkit's lib directory on LD_LIBRARY_PATH"
                    .into(),
            )
        })?
        .map_err(|e| {
            RuntimeError::Device(format!("NVRTC could not compile braid's kernels: {e}"))
        })?;
    Ok(ptx.to_src())
}

impl Drop for Loaded {
    fn drop(&mut self) {
        // SAFETY: the module was loaded by `compile_and_load` and is unloaded once; its owner (the
        // device) is being dropped, so no stream of it can launch these kernels any more, and the
        // device made its context current.
        if let Err(e) = unsafe { sys::cuModuleUnload(self.0) }.result() {
            tracing::warn!(error = %crate::error::describe(e), "cuModuleUnload failed");
        }
        live::MODULES.down();
    }
}

/// Blocks for a grid-stride kernel over `n` elements.
pub(crate) fn grid_for(n: u64) -> u32 {
    n.div_ceil(BLOCK as u64).clamp(1, MAX_GRID) as u32
}

/// The 2-D grid of a row-wise kernel (`ROWS_2D` / `COLS_2D` in the source) over `rows x cols`.
pub(crate) fn grid_rows(rows: u64, cols: u64) -> (u32, u32, u32) {
    let x = cols.div_ceil(BLOCK as u64).clamp(1, MAX_GRID);
    let y = rows.clamp(1, 65_535);
    (x as u32, y as u32, 1)
}

/// A kernel argument: the address of a value the launch reads.
pub(crate) fn arg<T>(value: &T) -> *mut c_void {
    (value as *const T).cast_mut().cast::<c_void>()
}

/// Launches `function` on `stream` with `grid` blocks of `block` threads.
///
/// # Safety
/// `args` point at values matching the kernel's parameters in order, alive for the call; every device
/// pointer among them addresses memory the kernel may read or write, valid until the work runs.
pub(crate) unsafe fn launch(
    function: sys::CUfunction,
    grid: (u32, u32, u32),
    block: u32,
    stream: sys::CUstream,
    args: &mut [*mut c_void],
) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { result::launch_kernel(function, grid, (block, 1, 1), 0, stream, args) }
        .map_err(|e| RuntimeError::Device(format!("cuLaunchKernel: {e:?}")))
}
