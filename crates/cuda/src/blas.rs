//! [`Blas`]: a stream's cuBLAS handle, and the GEMM of the op set mapped onto it.
//!
//! # Promises
//!
//! - A handle is created on its stream's first GEMM, bound to that stream with `cublasSetStream`, and
//!   never re-bound; it is destroyed at the stream's shutdown, before the stream.
//! - Every GEMM accumulates in fp32 (`CUBLAS_COMPUTE_32F`; alpha and beta are f32) whatever the storage
//!   dtype (f32, f16 or bf16; f16/bf16 run on tensor cores). fp32 GEMMs use full fp32 by default
//!   (bit-reproducible run to run, as the model's 16-thread test requires); `BRAID_CUDA_TF32=1` makes
//!   them TF32 tensor-core GEMMs (`CUBLAS_COMPUTE_32F_FAST_TF32`).
//! - braid's row-major, strided view of `C = alpha·A·B + beta·C` becomes one column-major
//!   `cublasGemmStridedBatchedEx` per outer batch entry: computing `Cᵀ = Bᵀ·Aᵀ` in column-major order reads
//!   braid's row-major operands in place (no transposes). An operand must be contiguous along rows or
//!   along columns, and C along rows; anything else is refused with `Unsupported` rather than computed
//!   slowly.
//!
//! - A GEMM with a bias goes to cuBLASLt's bias epilogue ([`crate::blas_lt`]) when it takes the
//!   product; the handle for it is made on the stream's first biased GEMM.

use std::ffi::{c_int, c_void};

use braid_runtime::ops::{GemmSpec, MatStrides};
use braid_runtime::{DType, Result, RuntimeError};
use cudarc::cublas::sys as cublas;
use cudarc::driver::sys;

use crate::blas_lt::BlasLt;
use crate::live;

/// The environment variable that turns on TF32 math for fp32 GEMMs.
pub const TF32_ENV: &str = "BRAID_CUDA_TF32";

/// One stream's cuBLAS handle.
pub(crate) struct Blas {
    handle: cublas::cublasHandle_t,
    /// The stream the handle is bound to (for cuBLASLt calls, which take it per call).
    stream: sys::CUstream,
    /// The cuBLASLt handle for biased GEMMs, made on the first; `None` if cuBLASLt cannot be loaded.
    lt: std::sync::OnceLock<Option<BlasLt>>,
}

// SAFETY: a cuBLAS handle may be used from any thread; it is bound to one stream at creation and never
// reconfigured afterwards, so concurrent GEMMs through it (a stream shared under the `share` policy)
// change no handle state.
unsafe impl Send for Blas {}
// SAFETY: as for `Send`.
unsafe impl Sync for Blas {}

fn blas_error(call: &str, status: cublas::cublasStatus_t) -> RuntimeError {
    RuntimeError::Device(format!("{call} failed: {status:?}"))
}

fn check(call: &str, status: cublas::cublasStatus_t) -> Result<()> {
    if status == cublas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(blas_error(call, status))
    }
}

/// Whether TF32 was asked for (read once).
fn tf32() -> bool {
    static TF32: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TF32.get_or_init(|| std::env::var(TF32_ENV).is_ok_and(|v| v == "1"))
}

impl Blas {
    /// A handle bound to `stream` (the caller has the context current and the stream live).
    pub(crate) fn new(stream: sys::CUstream) -> Result<Self> {
        let handle = std::panic::catch_unwind(cudarc::cublas::result::create_handle)
            .map_err(|_| {
                RuntimeError::Device(
                    "cannot load cuBLAS (libcublas): put the CUDA toolkit's lib directory on \
                     LD_LIBRARY_PATH"
                        .into(),
                )
            })?
            .map_err(|e| RuntimeError::Device(format!("cublasCreate failed: {e:?}")))?;
        live::BLAS_HANDLES.up();
        // From here on `Drop` destroys the handle, also if binding it to the stream fails.
        let blas = Self {
            handle,
            stream,
            lt: std::sync::OnceLock::new(),
        };
        // SAFETY: `handle` was just created; `stream` is live (caller's contract). cuBLAS's stream type is
        // the driver's `CUstream` under another name.
        check("cublasSetStream", unsafe {
            cublas::cublasSetStream_v2(handle, stream as cublas::cudaStream_t)
        })?;
        // The math mode stays the default: each GEMM names its compute type (see `gemm`).
        Ok(blas)
    }

    /// The cuBLASLt handle, made on first use (`None` if cuBLASLt cannot be loaded). A capture stream
    /// makes it before its capture begins ([`crate::CudaStream`]), so no handle is created while
    /// capturing.
    pub(crate) fn lt(&self) -> Option<&BlasLt> {
        self.lt
            .get_or_init(|| {
                BlasLt::new()
                    .map_err(
                        |e| tracing::warn!(error = %e, "biased GEMMs fall back to GEMM + bias kernel"),
                    )
                    .ok()
            })
            .as_ref()
    }

    /// Encodes `spec` plus `bias` (added to every row of C) through cuBLASLt's bias epilogue and answers
    /// `true`, or answers `false` having encoded nothing when that path does not take the product (see
    /// [`crate::blas_lt`]).
    ///
    /// # Safety
    /// As [`Blas::gemm`]; `bias` addresses `spec.n` elements of `dtype`, valid until the work has run.
    pub(crate) unsafe fn gemm_bias(
        &self,
        dtype: DType,
        spec: &GemmSpec,
        [a, b, c, bias]: [u64; 4],
    ) -> Result<bool> {
        match self.lt() {
            // SAFETY: forwarded from the caller; the stream is live while its `Blas` is.
            Some(lt) => unsafe { lt.gemm_bias(self.stream, dtype, spec, [a, b, c, bias], tf32()) },
            None => Ok(false),
        }
    }

    /// Encodes `spec` on the handle's stream, every operand of `dtype` (f32, f16 or bf16). Pointers
    /// are at the operands' starts (offsets already applied).
    ///
    /// # Safety
    /// `a`, `b` and `c` address device memory holding every element `spec` reaches, valid until the work
    /// has run; C does not overlap A or B.
    pub(crate) unsafe fn gemm(
        &self,
        dtype: DType,
        spec: &GemmSpec,
        a: u64,
        b: u64,
        c: u64,
    ) -> Result<()> {
        let unsupported = |op| RuntimeError::Unsupported {
            op,
            dtype,
            backend: "cuda",
        };
        let (data_type, compute) = match dtype {
            DType::F32 if tf32() => (
                cublas::cudaDataType::CUDA_R_32F,
                cublas::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
            ),
            DType::F32 => (
                cublas::cudaDataType::CUDA_R_32F,
                cublas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
            DType::F16 => (
                cublas::cudaDataType::CUDA_R_16F,
                cublas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
            DType::BF16 => (
                cublas::cudaDataType::CUDA_R_16BF,
                cublas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
            DType::U32 => return Err(unsupported("gemm")),
        };
        let strided_both_ways = "gemm with an operand strided along both rows and columns";
        if spec.c.col_stride != 1 {
            return Err(unsupported(strided_both_ways));
        }
        // Column-major Cᵀ [n x m] = op(B-view) [n x k] · op(A-view) [k x m].
        let (op_b, ld_b) = operand(&spec.b).ok_or_else(|| unsupported(strided_both_ways))?;
        let (op_a, ld_a) = operand(&spec.a).ok_or_else(|| unsupported(strided_both_ways))?;
        let dim = |v: usize| c_int::try_from(v).map_err(|_| dims_error(spec));
        let (m, n, k) = (dim(spec.m)?, dim(spec.n)?, dim(spec.k)?);
        let ldc = dim(spec.c.row_stride as usize)?;
        let (ld_a, ld_b) = (dim(ld_a)?, dim(ld_b)?);
        let inner = dim(spec.batch[1])?;
        let size = dtype.size() as u64;
        for outer in 0..spec.batch[0] as u64 {
            let at = |base: u64, s: &MatStrides| base + outer * s.batch_stride[0] as u64 * size;
            // SAFETY: the caller guarantees every element of every batch entry is addressable; alpha and
            // beta are f32 host values (the compute type is 32F) that outlive the call (cuBLAS reads
            // host scalars before returning).
            check("cublasGemmStridedBatchedEx", unsafe {
                cublas::cublasGemmStridedBatchedEx(
                    self.handle,
                    op_b,
                    op_a,
                    n,
                    m,
                    k,
                    (&spec.alpha as *const f32).cast(),
                    at(b, &spec.b) as *const c_void,
                    data_type,
                    ld_b,
                    spec.b.batch_stride[1] as i64,
                    at(a, &spec.a) as *const c_void,
                    data_type,
                    ld_a,
                    spec.a.batch_stride[1] as i64,
                    (&spec.beta as *const f32).cast(),
                    at(c, &spec.c) as *mut c_void,
                    data_type,
                    ldc,
                    spec.c.batch_stride[1] as i64,
                    inner,
                    compute,
                    cublas::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                )
            })?;
        }
        Ok(())
    }
}

/// How cuBLAS (column-major) reads a braid operand so that it sees its transpose: row-major storage is
/// already the transpose (`N`, leading dimension = row stride); column-major storage needs `T`.
fn operand(s: &MatStrides) -> Option<(cublas::cublasOperation_t, usize)> {
    if s.col_stride == 1 {
        Some((
            cublas::cublasOperation_t::CUBLAS_OP_N,
            s.row_stride.max(1) as usize,
        ))
    } else if s.row_stride == 1 {
        Some((
            cublas::cublasOperation_t::CUBLAS_OP_T,
            s.col_stride.max(1) as usize,
        ))
    } else {
        None
    }
}

fn dims_error(spec: &GemmSpec) -> RuntimeError {
    RuntimeError::Shape {
        op: "gemm",
        detail: format!("dimensions or strides exceed cuBLAS's 32-bit range: {spec:?}"),
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `Blas::new` and is destroyed once; the owner made the context
        // current. (cuBLAS synchronizes the device here: handles are destroyed only at stream shutdown.)
        let status = unsafe { cublas::cublasDestroy_v2(self.handle) };
        if status != cublas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            tracing::warn!(?status, "cublasDestroy failed");
        }
        live::BLAS_HANDLES.down();
    }
}
