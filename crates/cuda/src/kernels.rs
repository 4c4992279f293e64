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
//!   to f32 on load and rounded to nearest even on store, so all arithmetic is f32 (the tensor-core
//!   attention multiplies 16-bit inputs exactly and accumulates in f32).
//! - Attention is one fused kernel (scores, masked online softmax and the weighted sum of V): on tensor
//!   cores (`mma.sync.m16n8k16`, f32 accumulators) for f16 and bf16 heads of 32, 64 or 128 features,
//!   on CUDA cores (f32 arithmetic) for f32 and other heads of up to 128 features. bf16 splits the
//!   probabilities into two bf16 parts (hi + lo) so they keep ~16 bits. The PTX is cached on disk by
//!   [`crate::ptx_cache`], so a process after the first skips NVRTC's compile.
//! - The row kernels move 16 bytes per load where the row width and the operands' alignment allow it
//!   (row gathers; bias + GELU; LayerNorm with 16 or 32 lanes per row and the row in registers), else the scalar
//!   forms. In f16/bf16 the vector GELU's erf is Abramowitz & Stegun 7.1.26 (error ≤ ~3e-7, far below
//!   the storage's rounding); f32 keeps `erff`.

use std::ffi::{c_void, CString};

use braid_runtime::{DType, Result, RuntimeError};
use cudarc::driver::{result, sys};

use crate::live;

/// The kernels' source, one file per family under `src/cuda/` (concatenated in this order; NVRTC gets
/// no include path): storage types and reductions; the elementwise and row ops (grid-stride loops for
/// elementwise ops, one block per row for row reductions, one warp per row for the softmax); the
/// CUDA-core fused attention; the tensor-core attention; the vectorised row kernels; the entry points.
const SOURCE: &str = concat!(
    include_str!("cuda/common.cuh"),
    include_str!("cuda/ops.cu"),
    include_str!("cuda/attention_simt.cu"),
    include_str!("cuda/attention_mma.cu"),
    include_str!("cuda/rows.cu"),
    include_str!("cuda/entry.cu"),
);

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
/// The tensor-core attention: threads per block (`MMA_WARPS * 32`), queries per block
/// (`MMA_QUERIES`) and the head sizes it is instantiated for (`braid_attention_mma<D>_<dtype>`).
pub(crate) const MMA_ATTENTION_BLOCK: u32 = 4 * 32;
pub(crate) const MMA_ATTENTION_QUERIES: usize = 64;
pub(crate) const MMA_HEAD_DIMS: [usize; 3] = [32, 64, 128];
/// The vectorised LayerNorm: warps per block (`LN_WARPS`) and 16-byte vectors per lane (`LN_VECS`);
/// a row takes 16 lanes up to `16 * LN_VECS` vectors, 32 lanes up to `32 * LN_VECS`.
pub(crate) const LN_WARPS: u32 = 8;
pub(crate) const LN_VECS_PER_LANE: usize = 4;

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
    /// 16-byte-vector row gather (`braid_gather_rows_vec_<dtype>`).
    pub(crate) gather_rows_vec: sys::CUfunction,
    /// 16-byte-vector bias + GELU (`braid_bias_gelu_vec_<dtype>`).
    pub(crate) bias_gelu_vec: sys::CUfunction,
    /// Vectorised LayerNorm with 16 and 32 lanes per row (`braid_layer_norm_rows{16,32}_<dtype>`).
    pub(crate) layer_norm_rows: [sys::CUfunction; 2],
    /// Tensor-core attention per head size of [`MMA_HEAD_DIMS`] (f16 and bf16 only).
    pub(crate) attention_mma: Option<[sys::CUfunction; 3]>,
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
                gather_rows_vec: f("gather_rows_vec")?,
                bias_gelu_vec: f("bias_gelu_vec")?,
                layer_norm_rows: [f("layer_norm_rows16")?, f("layer_norm_rows32")?],
                attention_mma: if dtype == "f32" {
                    None
                } else {
                    let [a, b, c] = MMA_HEAD_DIMS.map(|d| f(&format!("attention_mma{d}")));
                    Some([a?, b?, c?])
                },
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
