//! The non-GEMM ops as CUDA C, compiled once per process by NVRTC for the device's architecture, and
//! their launches.
//!
//! # Promises
//!
//! - The source is compiled on the first op a device runs (not at `CudaDevice::new`, so a program that
//!   only moves memory never needs libnvrtc), for `sm_<major><minor>` of that device; the module and its
//!   functions live as long as the device. A compile or load failure is reported once, as a clear
//!   [`RuntimeError::Device`], on every op call.
//! - Every kernel is deterministic: reductions run in a fixed order (warp shuffles, then warp partials
//!   summed in index order by every thread), no atomics — so the same inputs give the same bits on any
//!   stream, which the model's "16 threads bit-identical" property needs.
//! - Semantics match the CPU backend's kernels (`braid_runtime::cpu::kernels`): masked keys get
//!   probability 0 and a fully masked row is all zeros; mean pooling divides by `max(Σ mask, 1e-9)`;
//!   L2 normalisation divides by `max(‖x‖, 1e-12)`; GELU is the exact erf form unless `tanh` is asked.
//!
//! Not yet: an on-disk cache of the compiled PTX (compilation takes ~0.3 s once per process), fusion of
//! the attention softmax with its GEMMs, f16/bf16 variants.

use std::ffi::{c_void, CString};

use braid_runtime::{Result, RuntimeError};
use cudarc::driver::{result, sys};

/// The kernels' source. Grid-stride loops for elementwise ops; one block per row for row reductions;
/// one warp per row for the softmax (rows are at most a few hundred keys long).
const SOURCE: &str = r#"
#define WARP 32
typedef unsigned long long u64;
typedef long long i64;

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
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

extern "C" __global__ void braid_fill(float* x, u64 n, float value) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        x[i] = value;
}

extern "C" __global__ void braid_add(float* x, const float* y, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        x[i] += y[i];
}

extern "C" __global__ void braid_bias_gelu(float* x, const float* bias, u64 rows, u64 cols, int use_tanh) {
    const u64 n = rows * cols;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float v = x[i] + bias[i % cols];
        x[i] = use_tanh ? gelu_tanh(v) : gelu_erf(v);
    }
}

// c[r * ldc + j] += bias[j] for batches of rows x cols at batch stride `batch_stride`.
extern "C" __global__ void braid_add_bias(float* c, const float* bias, u64 batches, i64 batch_stride,
                                          u64 rows, u64 cols, i64 ldc) {
    const u64 n = batches * rows * cols;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const u64 j = i % cols, r = (i / cols) % rows, b = i / (cols * rows);
        c[b * batch_stride + r * ldc + j] += bias[j];
    }
}

// One block per row: out = LayerNorm(x + residual) * gamma + beta.
extern "C" __global__ void braid_layer_norm(const float* x, const float* residual, const float* gamma,
                                            const float* beta, float* out, u64 cols, float eps) {
    __shared__ float partials[WARP];
    const u64 row = blockIdx.x;
    const float* xr = x + row * cols;
    const float* rr = residual ? residual + row * cols : 0;
    float* o = out + row * cols;
    float s = 0.0f;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c] + (rr ? rr[c] : 0.0f);
    const float mean = block_sum(s, partials) / (float)cols;
    float q = 0.0f;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = xr[c] + (rr ? rr[c] : 0.0f) - mean;
        q += d * d;
    }
    const float inv = rsqrtf(block_sum(q, partials) / (float)cols + eps);
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x)
        o[c] = (xr[c] + (rr ? rr[c] : 0.0f) - mean) * inv * gamma[c] + beta[c];
}

// One warp per row of `scores [batch, heads, q, k]`; keys with mask[b, j] == 0 get probability 0.
extern "C" __global__ void braid_masked_softmax(float* scores, const float* mask, u64 rows,
                                                u64 rows_per_batch, u64 k, float scale) {
    const u64 row = blockIdx.x * (u64)(blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;
    const int lane = threadIdx.x & (WARP - 1);
    float* r = scores + row * k;
    const float* m = mask + (row / rows_per_batch) * k;
    float top = __int_as_float(0xff800000);  // -infinity (NVRTC has no math.h)
    for (u64 j = lane; j < k; j += WARP) if (m[j] != 0.0f) top = fmaxf(top, r[j] * scale);
    top = warp_max(top);
    float sum = 0.0f;
    for (u64 j = lane; j < k; j += WARP) {
        const float e = m[j] != 0.0f ? expf(r[j] * scale - top) : 0.0f;
        r[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (u64 j = lane; j < k; j += WARP) r[j] *= inv;
}

// out[i, :] (+)= table[ids[i], :]; an id out of range writes NaN (the tensor layer checks ids first).
extern "C" __global__ void braid_gather_rows(const float* table, u64 table_rows, const unsigned* ids,
                                             u64 n_ids, u64 dim, float* out, int accumulate) {
    const u64 n = n_ids * dim;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const u64 id = ids[i / dim];
        const float v = id < table_rows ? table[id * dim + i % dim] : __int_as_float(0x7fc00000);
        out[i] = accumulate ? out[i] + v : v;
    }
}

// out[b, d] = Σ_s x[b, s, d] * mask[b, s] / max(Σ_s mask[b, s], 1e-9); one thread per (b, d).
extern "C" __global__ void braid_mean_pool(const float* x, const float* mask, u64 batch, u64 seq,
                                           u64 dim, float* out) {
    const u64 n = batch * dim;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const u64 b = i / dim, d = i % dim;
        float acc = 0.0f, count = 0.0f;
        for (u64 s = 0; s < seq; ++s) {
            const float m = mask[b * seq + s];
            if (m != 0.0f) acc += m * x[(b * seq + s) * dim + d];
            count += m;
        }
        out[i] = acc / fmaxf(count, 1e-9f);
    }
}

// One block per row: x /= max(|x|, 1e-12).
extern "C" __global__ void braid_l2_normalize(float* x, u64 dim) {
    __shared__ float partials[WARP];
    float* r = x + blockIdx.x * dim;
    float s = 0.0f;
    for (u64 c = threadIdx.x; c < dim; c += blockDim.x) s += r[c] * r[c];
    const float inv = 1.0f / fmaxf(sqrtf(block_sum(s, partials)), 1e-12f);
    for (u64 c = threadIdx.x; c < dim; c += blockDim.x) r[c] *= inv;
}
"#;

/// Threads per block for every kernel (a multiple of the warp size, at most 32 warps).
pub(crate) const BLOCK: u32 = 256;
/// Grid-stride kernels launch at most this many blocks (enough to fill an H100's 132 SMs many times).
const MAX_GRID: u64 = 132 * 32;

/// The loaded module and one function handle per kernel.
pub(crate) struct Kernels {
    module: sys::CUmodule,
    pub(crate) fill: sys::CUfunction,
    pub(crate) add: sys::CUfunction,
    pub(crate) bias_gelu: sys::CUfunction,
    pub(crate) add_bias: sys::CUfunction,
    pub(crate) layer_norm: sys::CUfunction,
    pub(crate) masked_softmax: sys::CUfunction,
    pub(crate) gather_rows: sys::CUfunction,
    pub(crate) mean_pool: sys::CUfunction,
    pub(crate) l2_normalize: sys::CUfunction,
}

// SAFETY: module and function handles are driver objects usable from any thread (the driver API is
// thread-safe); they are only read after loading and unloaded once, in `Drop`.
unsafe impl Send for Kernels {}
// SAFETY: as for `Send`.
unsafe impl Sync for Kernels {}

impl Kernels {
    /// Compiles the source for compute capability `(major, minor)` and loads it into the current context.
    pub(crate) fn compile_and_load(capability: (i32, i32)) -> Result<Self> {
        let arch: &'static str =
            Box::leak(format!("sm_{}{}", capability.0, capability.1).into_boxed_str());
        let options = cudarc::nvrtc::CompileOptions {
            arch: Some(arch),
            name: Some("braid_kernels.cu".into()),
            ..Default::default()
        };
        let ptx =
            std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(SOURCE, options))
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
        let image = CString::new(ptx.to_src())
            .map_err(|_| RuntimeError::Device("NVRTC returned PTX with a NUL byte".into()))?;
        // SAFETY: `image` is a NUL-terminated PTX image that outlives the call; the caller made the
        // device's context current.
        let module = unsafe { result::module::load_data(image.as_ptr().cast::<c_void>()) }
            .map_err(|e| {
                RuntimeError::Device(format!("cuModuleLoadData (braid's kernels): {e:?}"))
            })?;
        let function = |name: &str| {
            // SAFETY: `module` was loaded above and is not unloaded while `Kernels` lives.
            unsafe {
                result::module::get_function(
                    module,
                    CString::new(name).expect("kernel names have no NUL"),
                )
            }
            .map_err(|e| {
                RuntimeError::Device(format!("kernel {name} missing from the module: {e:?}"))
            })
        };
        Ok(Self {
            fill: function("braid_fill")?,
            add: function("braid_add")?,
            bias_gelu: function("braid_bias_gelu")?,
            add_bias: function("braid_add_bias")?,
            layer_norm: function("braid_layer_norm")?,
            masked_softmax: function("braid_masked_softmax")?,
            gather_rows: function("braid_gather_rows")?,
            mean_pool: function("braid_mean_pool")?,
            l2_normalize: function("braid_l2_normalize")?,
            module,
        })
    }
}

impl Drop for Kernels {
    fn drop(&mut self) {
        // SAFETY: the module was loaded by `compile_and_load` and is unloaded once; the device (and so
        // every stream that could still run these kernels) is being dropped.
        let _ = unsafe { sys::cuModuleUnload(self.module) };
    }
}

/// Blocks for a grid-stride kernel over `n` elements.
pub(crate) fn grid_for(n: u64) -> u32 {
    n.div_ceil(BLOCK as u64).clamp(1, MAX_GRID) as u32
}

/// A kernel argument: the address of a value the launch reads.
pub(crate) fn arg<T>(value: &T) -> *mut c_void {
    (value as *const T).cast_mut().cast::<c_void>()
}

/// Launches `function` on `stream` with `grid` blocks of [`BLOCK`] threads.
///
/// # Safety
/// `args` point at values matching the kernel's parameters in order, alive for the call; every device
/// pointer among them addresses memory the kernel may read or write, valid until the work runs.
pub(crate) unsafe fn launch(
    function: sys::CUfunction,
    grid: u32,
    stream: sys::CUstream,
    args: &mut [*mut c_void],
) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { result::launch_kernel(function, (grid, 1, 1), (BLOCK, 1, 1), 0, stream, args) }
        .map_err(|e| RuntimeError::Device(format!("cuLaunchKernel: {e:?}")))
}
