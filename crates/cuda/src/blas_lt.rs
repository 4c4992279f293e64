//! [`BlasLt`]: a stream's cuBLASLt handle, for the product plain cuBLAS cannot fuse: `C = A·B + bias`
//! with the bias added in the GEMM's epilogue (`CUBLASLT_EPILOGUE_BIAS`), so a biased linear layer is
//! one kernel instead of a GEMM and a bias pass over C.
//!
//! # Promises
//!
//! - The handle is created on its stream's first biased GEMM ([`crate::blas::Blas`] holds it) and
//!   destroyed with the stream's cuBLAS handle.
//! - The same arithmetic as [`crate::blas::Blas::gemm`]: fp32 accumulation whatever the storage dtype,
//!   full fp32 for f32 unless `BRAID_CUDA_TF32=1`; the bias (of C's dtype) is added to every row of C
//!   (every column of cuBLAS's column-major `Cᵀ`) before C is rounded to its dtype.
//! - Unbatched products only, with every operand contiguous along rows or columns and C along rows;
//!   [`BlasLt::gemm_bias`] answers `false` for anything else (or when cuBLASLt has no algorithm for
//!   it), and the caller takes the GEMM + bias-kernel path.
//! - No workspace is offered, so nothing is allocated; the algorithm comes from cuBLASLt's heuristic
//!   once per problem (sizes, layouts, dtype, operand alignment) and is cached with the problem's
//!   layout descriptors, so later calls search nothing. The heuristic is deterministic and the
//!   algorithms it may return without workspace do no split-K reduction, so the same inputs give the
//!   same bits on every stream.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_void;

use braid_runtime::ops::GemmSpec;
use braid_runtime::{DType, Result, RuntimeError};
use cudarc::cublas::sys as cublas;
use cudarc::cublaslt::sys as lt;
use cudarc::driver::sys;
use parking_lot::Mutex;

use crate::live;

/// One problem's cached plan: the layouts of cuBLAS's A, B and C (= D) and the chosen algorithm.
struct Plan {
    layouts: [lt::cublasLtMatrixLayout_t; 3],
    algo: lt::cublasLtMatmulAlgo_t,
}

/// What a plan depends on: dtype, sizes, transposes, leading dimensions and operand alignments.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Problem {
    dtype: DType,
    tf32: bool,
    /// cuBLAS's view: `Cᵀ [n x m] = op(B) [n x k] · op(A) [k x m]`.
    mnk: [u64; 3],
    transposed: [bool; 2],
    leading: [i64; 3],
    /// Alignment in bytes (a power of two, at most 256) of cuBLAS's A, B, C and the bias.
    align: [u32; 4],
}

/// A stream's cuBLASLt handle and its plans.
pub(crate) struct BlasLt {
    handle: lt::cublasLtHandle_t,
    plans: Mutex<HashMap<Problem, Option<Plan>>>,
}

// SAFETY: a cuBLASLt handle may be used from any thread, and so may the descriptors: plans are created
// under the mutex and only read afterwards (cublasLtMatmul does not modify its descriptors).
unsafe impl Send for BlasLt {}
// SAFETY: as for `Send`.
unsafe impl Sync for BlasLt {}

fn lt_check(call: &str, status: lt::cublasStatus_t) -> Result<()> {
    if status == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(RuntimeError::Device(format!("{call} failed: {status:?}")))
    }
}

/// The largest power of two (at most 256) dividing `address`.
fn alignment(address: u64) -> u32 {
    1 << address.trailing_zeros().min(8)
}

impl BlasLt {
    /// A new handle (the caller has the context current).
    pub(crate) fn new() -> Result<Self> {
        let handle = std::panic::catch_unwind(cudarc::cublaslt::result::create_handle)
            .map_err(|_| {
                RuntimeError::Device(
                    "cannot load cuBLASLt (libcublasLt): put the CUDA toolkit's lib directory on \
                     LD_LIBRARY_PATH"
                        .into(),
                )
            })?
            .map_err(|e| RuntimeError::Device(format!("cublasLtCreate failed: {e:?}")))?;
        live::BLAS_HANDLES.up();
        Ok(Self {
            handle,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// Encodes `C = alpha·A·B + beta·C + bias` on `stream` when `spec` is a product this path takes
    /// (module doc) and answers `true`; answers `false`, having encoded nothing, otherwise.
    ///
    /// # Safety
    /// As [`crate::blas::Blas::gemm`]; `bias` addresses `spec.n` elements of `dtype`, valid until the
    /// work has run; `stream` is live.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm_bias(
        &self,
        stream: sys::CUstream,
        dtype: DType,
        spec: &GemmSpec,
        [a, b, c, bias]: [u64; 4],
        tf32: bool,
    ) -> Result<bool> {
        let data_type = match dtype {
            DType::F32 => lt::cudaDataType::CUDA_R_32F,
            DType::F16 => lt::cudaDataType::CUDA_R_16F,
            DType::BF16 => lt::cudaDataType::CUDA_R_16BF,
            DType::U32 => return Ok(false),
        };
        if spec.batch != [1, 1] || spec.c.col_stride != 1 {
            return Ok(false);
        }
        // cuBLAS's A is braid's B, its B braid's A (see `Blas::gemm`).
        let (Some((trans_a, ld_a)), Some((trans_b, ld_b))) = (
            leading(&spec.b.row_stride, &spec.b.col_stride),
            leading(&spec.a.row_stride, &spec.a.col_stride),
        ) else {
            return Ok(false);
        };
        let problem = Problem {
            dtype,
            tf32: tf32 && dtype == DType::F32,
            mnk: [spec.n as u64, spec.m as u64, spec.k as u64],
            transposed: [trans_a, trans_b],
            leading: [ld_a, ld_b, spec.c.row_stride as i64],
            align: [b, a, c, bias].map(alignment),
        };
        let compute = if problem.tf32 {
            lt::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            lt::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let desc = MatmulDesc::new(compute, &problem, bias)?;
        let mut plans = self.plans.lock();
        let plan = match plans.entry(problem) {
            Entry::Occupied(entry) => entry.into_mut(),
            // SAFETY: `desc` is live; the handle is live while `self` is.
            Entry::Vacant(entry) => entry.insert(unsafe { self.plan(&problem, data_type, &desc) }?),
        };
        let Some((layouts, algo)) = plan.as_ref().map(|plan| (plan.layouts, plan.algo)) else {
            return Ok(false);
        };
        // Plans are only destroyed with `self`: the layouts stay valid without the lock.
        drop(plans);
        let [la, lb, lc] = layouts;
        // SAFETY: the caller guarantees the operands and the bias; alpha and beta are f32 host values
        // (scale type 32F) read before the call returns; no workspace is passed, as the algorithm was
        // chosen for none.
        let status = unsafe {
            lt::cublasLtMatmul(
                self.handle,
                desc.0,
                (&spec.alpha as *const f32).cast(),
                b as *const c_void,
                la,
                a as *const c_void,
                lb,
                (&spec.beta as *const f32).cast(),
                c as *const c_void,
                lc,
                c as *mut c_void,
                lc,
                &algo,
                std::ptr::null_mut(),
                0,
                stream as lt::cudaStream_t,
            )
        };
        if status == lt::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED {
            // Refused before anything was encoded: the caller's other path computes it.
            tracing::debug!("cublasLtMatmul refused a planned bias GEMM");
            return Ok(false);
        }
        lt_check("cublasLtMatmul", status)?;
        Ok(true)
    }

    /// The layouts and the heuristic's algorithm for `problem`; `None` when it has none.
    ///
    /// # Safety
    /// `desc` is live.
    unsafe fn plan(
        &self,
        problem: &Problem,
        data_type: lt::cudaDataType,
        desc: &MatmulDesc,
    ) -> Result<Option<Plan>> {
        let [n, m, k] = problem.mnk;
        let [ld_a, ld_b, ld_c] = problem.leading;
        // Stored shapes (before the transposes): A is [n x k] or [k x n], B [k x m] or [m x k].
        let stored = |rows: u64, cols: u64, t: bool| if t { (cols, rows) } else { (rows, cols) };
        let shapes = [
            (stored(n, k, problem.transposed[0]), ld_a),
            (stored(k, m, problem.transposed[1]), ld_b),
            ((n, m), ld_c),
        ];
        let mut layouts = Layouts(Vec::with_capacity(3));
        for ((rows, cols), ld) in shapes {
            let layout = cudarc::cublaslt::result::create_matrix_layout(data_type, rows, cols, ld)
                .map_err(|e| RuntimeError::Device(format!("cublasLtMatrixLayoutCreate: {e:?}")))?;
            layouts.0.push(layout);
        }
        let pref = Preference::new(problem)?;
        let mut result = std::mem::MaybeUninit::<lt::cublasLtMatmulHeuristicResult_t>::zeroed();
        let mut found = 0;
        // SAFETY: every descriptor is live; one result slot is passed and asked for.
        let status = unsafe {
            lt::cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                desc.0,
                layouts.0[0],
                layouts.0[1],
                layouts.0[2],
                layouts.0[2],
                pref.0,
                1,
                result.as_mut_ptr(),
                &mut found,
            )
        };
        if status != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS || found == 0 {
            tracing::debug!(
                ?status,
                "cuBLASLt has no bias-epilogue algorithm for this GEMM"
            );
            return Ok(None);
        }
        // SAFETY: the heuristic filled the one slot it reported.
        let result = unsafe { result.assume_init() };
        if result.state != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Ok(None);
        }
        let taken = std::mem::take(&mut layouts.0);
        Ok(Some(Plan {
            layouts: [taken[0], taken[1], taken[2]],
            algo: result.algo,
        }))
    }
}

/// `(transposed, leading dimension)` of an operand contiguous along rows (`N`) or columns (`T`).
fn leading(row_stride: &isize, col_stride: &isize) -> Option<(bool, i64)> {
    if *col_stride == 1 {
        Some((false, (*row_stride).max(1) as i64))
    } else if *row_stride == 1 {
        Some((true, (*col_stride).max(1) as i64))
    } else {
        None
    }
}

/// A matmul descriptor for one call (it holds the bias pointer), destroyed when dropped.
struct MatmulDesc(lt::cublasLtMatmulDesc_t);

impl MatmulDesc {
    fn new(compute: lt::cublasComputeType_t, problem: &Problem, bias: u64) -> Result<Self> {
        let desc =
            cudarc::cublaslt::result::create_matmul_desc(compute, lt::cudaDataType::CUDA_R_32F)
                .map_err(|e| RuntimeError::Device(format!("cublasLtMatmulDescCreate: {e:?}")))?;
        let desc = Self(desc);
        // cublasOperation_t, a C enum (int32) that cuBLASLt's bindings take from cuBLAS's.
        let op = |t: bool| {
            if t {
                cublas::cublasOperation_t::CUBLAS_OP_T as i32
            } else {
                cublas::cublasOperation_t::CUBLAS_OP_N as i32
            }
        };
        let set = |attr, value: *const c_void, size| {
            // SAFETY: `desc` is live; `value` points at `size` bytes of the attribute's type.
            lt_check("cublasLtMatmulDescSetAttribute", unsafe {
                lt::cublasLtMatmulDescSetAttribute(desc.0, attr, value, size)
            })
        };
        let (trans_a, trans_b) = (op(problem.transposed[0]), op(problem.transposed[1]));
        let epilogue = lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
        let bias_ptr = bias as *const c_void;
        use lt::cublasLtMatmulDescAttributes_t as A;
        set(
            A::CUBLASLT_MATMUL_DESC_TRANSA,
            (&trans_a as *const i32).cast(),
            std::mem::size_of_val(&trans_a),
        )?;
        set(
            A::CUBLASLT_MATMUL_DESC_TRANSB,
            (&trans_b as *const i32).cast(),
            std::mem::size_of_val(&trans_b),
        )?;
        set(
            A::CUBLASLT_MATMUL_DESC_EPILOGUE,
            (&epilogue as *const lt::cublasLtEpilogue_t).cast(),
            std::mem::size_of_val(&epilogue),
        )?;
        set(
            A::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
            (&bias_ptr as *const *const c_void).cast(),
            std::mem::size_of_val(&bias_ptr),
        )?;
        Ok(desc)
    }
}

impl Drop for MatmulDesc {
    fn drop(&mut self) {
        // SAFETY: created by `MatmulDesc::new`, destroyed once.
        let _ = unsafe { lt::cublasLtMatmulDescDestroy(self.0) };
    }
}

/// Heuristic preferences: no workspace, the operands' actual alignments.
struct Preference(lt::cublasLtMatmulPreference_t);

impl Preference {
    fn new(problem: &Problem) -> Result<Self> {
        let pref = cudarc::cublaslt::result::create_matmul_pref()
            .map_err(|e| RuntimeError::Device(format!("cublasLtMatmulPreferenceCreate: {e:?}")))?;
        let pref = Self(pref);
        use lt::cublasLtMatmulPreferenceAttributes_t as P;
        let workspace: u64 = 0;
        let attrs = [
            (
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                problem.align[0],
            ),
            (
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                problem.align[1],
            ),
            (
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                problem.align[2],
            ),
            (
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                problem.align[2],
            ),
        ];
        // SAFETY: `pref` is live; each value is of the attribute's type (u64 workspace, u32 alignment).
        unsafe {
            lt_check(
                "cublasLtMatmulPreferenceSetAttribute",
                lt::cublasLtMatmulPreferenceSetAttribute(
                    pref.0,
                    P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    (&workspace as *const u64).cast(),
                    8,
                ),
            )?;
            for (attr, value) in attrs {
                lt_check(
                    "cublasLtMatmulPreferenceSetAttribute",
                    lt::cublasLtMatmulPreferenceSetAttribute(
                        pref.0,
                        attr,
                        (&value as *const u32).cast(),
                        4,
                    ),
                )?;
            }
        }
        Ok(pref)
    }
}

impl Drop for Preference {
    fn drop(&mut self) {
        // SAFETY: created by `Preference::new`, destroyed once.
        let _ = unsafe { lt::cublasLtMatmulPreferenceDestroy(self.0) };
    }
}

/// Layouts being built, destroyed if a plan is abandoned half-way.
struct Layouts(Vec<lt::cublasLtMatrixLayout_t>);

impl Drop for Layouts {
    fn drop(&mut self) {
        for layout in self.0.drain(..) {
            // SAFETY: created by `create_matrix_layout`, destroyed once (drained).
            let _ = unsafe { lt::cublasLtMatrixLayoutDestroy(layout) };
        }
    }
}

impl Drop for BlasLt {
    fn drop(&mut self) {
        for plan in self.plans.get_mut().drain().filter_map(|(_, p)| p) {
            drop(Layouts(plan.layouts.to_vec()));
        }
        // SAFETY: created by `BlasLt::new`, destroyed once; the owner made the context current and the
        // stream's work is done (handles are destroyed only at stream shutdown).
        let status = unsafe { lt::cublasLtDestroy(self.handle) };
        if status != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            tracing::warn!(?status, "cublasLtDestroy failed");
        }
        live::BLAS_HANDLES.down();
    }
}
