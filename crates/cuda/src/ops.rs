//! The op set ([`Ops`]) on CUDA: GEMMs through the stream's cuBLAS handle ([`crate::blas`]), the rest
//! through braid's NVRTC kernels ([`crate::kernels`]), each in f32, f16 or bf16. Every op takes its
//! descriptor ([`braid_runtime::ops`]), resolves each operand view to `buffer + offset`
//! (`crate::device::addr`), encodes on the given stream and returns without waiting; arguments were
//! validated by the tensor layer (`braid_runtime::tensor`), as the [`Ops`] contract says.
//!
//! Attention is one fused kernel (no scratch) for heads of up to [`ATTENTION_MAX_HEAD_DIM`] features —
//! on tensor cores for f16/bf16 heads of 32, 64 or 128 features with 16-byte-aligned operands, on CUDA
//! cores otherwise ([`CudaDevice::attention_on_cuda_cores`], also the reference the tensor-core kernel
//! is tested against) — and the unfused GEMM–softmax–GEMM path above that. A GEMM with a bias goes
//! through cuBLASLt's bias epilogue where it takes the product. Row gathers, bias + GELU and LayerNorm
//! use their 16-byte-vector kernels when the row width and operand alignment allow.

use std::ffi::c_void;

use braid_runtime::device::DType;
use braid_runtime::ops::{
    attention_by_sequence, unfused_attention, Accumulate, Add, Attention, AttentionShape, BiasGelu,
    Fill, GatherRows, Gelu, Gemm, L2Normalize, LayerNorm, MaskedSoftmax, MeanPool, Ops, Packing,
};
use braid_runtime::Result;
use cudarc::driver::sys;

use crate::device::addr;
use crate::kernels::{
    arg, grid_for, grid_rows, launch, KernelSet, ATTENTION_BLOCK, ATTENTION_MAX_HEAD_DIM,
    ATTENTION_QUERIES, BLOCK, LN_VECS_PER_LANE, LN_WARPS, MMA_ATTENTION_BLOCK,
    MMA_ATTENTION_QUERIES, MMA_HEAD_DIMS, POOL_BLOCK, POOL_FEATURES,
};
use crate::{CudaDevice, CudaStream};

impl CudaDevice {
    /// Runs `f` with the live stream handle and the kernels for `dtype`.
    fn with_kernels(
        &self,
        stream: &CudaStream,
        dtype: DType,
        op: &'static str,
        f: impl FnOnce(sys::CUstream, &KernelSet) -> Result<()>,
    ) -> Result<()> {
        let kernels = self.kernels()?.of(dtype, op)?;
        stream.with_raw(|raw| f(raw, kernels))
    }
}

/// A launch of `function` over `grid` blocks of [`BLOCK`] threads with `args` (addresses of the
/// parameter values).
fn go(
    function: sys::CUfunction,
    grid: u32,
    raw: sys::CUstream,
    args: &mut [*mut c_void],
) -> Result<()> {
    // SAFETY: every call site passes the kernel's parameters in order, as values alive for the call, and
    // device addresses of views the tensor layer checked against the op's extents.
    unsafe { launch(function, (grid, 1, 1), BLOCK, raw, args) }
}

/// Whether the fused attention kernel takes `shape`.
fn fused_attention(shape: &AttentionShape) -> bool {
    shape.head_dim <= ATTENTION_MAX_HEAD_DIM
}

/// A device address for an optional operand: 0 (the kernels' "absent") when there is none.
fn addr_or_null(view: Option<braid_runtime::device::View<'_, CudaDevice>>) -> u64 {
    view.map_or(0, addr)
}

/// Elements of `dtype` in one 16-byte vector (the vectorised kernels' load width).
fn vector_len(dtype: DType) -> u64 {
    16 / dtype.size() as u64
}

/// `rows x cols` elements of `dtype` as 16-byte vectors for the vector kernels — `(vectors in all,
/// vectors a row)` — when `cols` is a multiple of the vector, every address is 16-byte aligned and the
/// count fits the kernels' 32-bit indices; `None` sends the op to its scalar kernel.
fn vector_rows(dtype: DType, rows: u64, cols: u64, addresses: &[u64]) -> Option<(u32, u32)> {
    let vec = vector_len(dtype);
    if cols % vec != 0 || !aligned16(addresses) {
        return None;
    }
    Some((
        u32::try_from(rows * cols / vec).ok()?,
        u32::try_from(cols / vec).ok()?,
    ))
}

/// Whether every address is a multiple of 16 (0, an absent operand, is).
fn aligned16(addresses: &[u64]) -> bool {
    addresses.iter().all(|a| a % 16 == 0)
}

/// A launch of the tensor-core attention kernel: the function for the head size, and the sizes as the
/// kernel's 32-bit parameters.
struct TensorCoreLaunch {
    kernel: sys::CUfunction,
    seq: u32,
    heads: u32,
}

impl TensorCoreLaunch {
    /// Encodes `op`, padded (`offsets` 0) or packed (`offsets` the device address of its [`Packing`]).
    fn encode(
        &self,
        stream: &CudaStream,
        op: &Attention<'_, CudaDevice>,
        offsets: u64,
    ) -> Result<()> {
        let shape = &op.shape;
        if shape.batch == 0 || shape.seq == 0 {
            return Ok(());
        }
        let (qkv, mask, out) = (addr(op.qkv), addr(op.mask), addr(op.out));
        let (seq, heads) = (self.seq, self.heads);
        let grid = (
            shape.seq.div_ceil(MMA_ATTENTION_QUERIES) as u32,
            heads,
            shape.batch as u32,
        );
        let scale_log2 = shape.scale * std::f32::consts::LOG2_E;
        stream.with_raw(|raw| {
            let args = &mut [
                arg(&qkv),
                arg(&mask),
                arg(&offsets),
                arg(&out),
                arg(&seq),
                arg(&heads),
                arg(&scale_log2),
            ];
            // SAFETY: the parameters in the kernel's order, alive for the call; the tensor layer checked
            // qkv [tokens, 3 * heads * head_dim], mask [tokens] and out [tokens, hidden], and the
            // offsets (when given) against them; qkv and out are 16-byte aligned and head_dim is the
            // kernel's (`tensor_core_attention`).
            unsafe { launch(self.kernel, grid, MMA_ATTENTION_BLOCK, raw, args) }
        })
    }
}

impl CudaDevice {
    /// The tensor-core kernel for `op` when it takes it: f16 or bf16, a head of 32, 64 or 128
    /// features, qkv and out 16-byte aligned, sequence and heads within 32 bits.
    fn tensor_core_attention(&self, op: &Attention<'_, Self>) -> Result<Option<TensorCoreLaunch>> {
        let shape = &op.shape;
        let Some(kernels) = self.kernels()?.of(op.dtype, "attention")?.attention_mma else {
            return Ok(None);
        };
        let head = MMA_HEAD_DIMS.iter().position(|&d| d == shape.head_dim);
        let sizes = (u32::try_from(shape.seq), u32::try_from(shape.heads));
        Ok(match (head, sizes) {
            (Some(i), (Ok(seq), Ok(heads))) if aligned16(&[addr(op.qkv), addr(op.out)]) => {
                Some(TensorCoreLaunch {
                    kernel: kernels[i],
                    seq,
                    heads,
                })
            }
            _ => None,
        })
    }

    /// [`Ops::attention`] on the tensor-core kernel, or an `Unsupported` error naming what it takes
    /// when `op` is not one it takes (the op itself then runs the CUDA-core kernel). For tests and
    /// benchmarks that must know which kernel ran. Encodes on `stream` without waiting.
    pub fn attention_on_tensor_cores(
        &self,
        stream: &CudaStream,
        op: &Attention<'_, Self>,
    ) -> Result<()> {
        match self.tensor_core_attention(op)? {
            Some(launch) => launch.encode(stream, op, 0),
            None => Err(braid_runtime::RuntimeError::Unsupported {
                op: "tensor-core attention (f16/bf16, head_dim 32/64/128, 16-byte-aligned qkv and out)",
                dtype: op.dtype,
                backend: "cuda",
            }),
        }
    }

    /// [`Ops::attention`] on the CUDA-core fused kernel (f32 arithmetic) whatever the dtype: the
    /// kernel f32 and head sizes the tensor-core kernel lacks use, and the reference that kernel is
    /// tested against. Takes heads of up to [`ATTENTION_MAX_HEAD_DIM`] features; a larger head is a
    /// `Shape` error (the unfused path is [`braid_runtime::ops::unfused_attention`]). Encodes on
    /// `stream` without waiting.
    pub fn attention_on_cuda_cores(
        &self,
        stream: &CudaStream,
        op: &Attention<'_, Self>,
    ) -> Result<()> {
        self.cuda_core_attention(stream, op, 0)
    }

    /// The CUDA-core kernel on `op`, padded (`offsets` 0) or packed.
    fn cuda_core_attention(
        &self,
        stream: &CudaStream,
        op: &Attention<'_, Self>,
        offsets: u64,
    ) -> Result<()> {
        let shape = &op.shape;
        if !fused_attention(shape) {
            return Err(braid_runtime::RuntimeError::Shape {
                op: "attention",
                detail: format!(
                    "the CUDA-core attention kernel takes heads of at most {ATTENTION_MAX_HEAD_DIM} \
                     features, not {}",
                    shape.head_dim
                ),
            });
        }
        if shape.batch == 0 || shape.seq == 0 {
            return Ok(());
        }
        let grid = (
            shape.seq.div_ceil(ATTENTION_QUERIES) as u32,
            shape.heads as u32,
            shape.batch as u32,
        );
        let (qkv, mask, out) = (addr(op.qkv), addr(op.mask), addr(op.out));
        let (seq, heads, head_dim) = (shape.seq as u64, shape.heads as u64, shape.head_dim as u64);
        self.with_kernels(stream, op.dtype, "attention", |raw, k| {
            let args = &mut [
                arg(&qkv),
                arg(&mask),
                arg(&offsets),
                arg(&out),
                arg(&seq),
                arg(&heads),
                arg(&head_dim),
                arg(&shape.scale),
            ];
            // SAFETY: the parameters in the kernel's order, alive for the call; the tensor layer checked
            // qkv [tokens, 3 * heads * head_dim], mask [tokens] and out [tokens, hidden], and the
            // offsets (when given) against them.
            unsafe { launch(k.attention, grid, ATTENTION_BLOCK, raw, args) }
        })
    }
}

impl CudaDevice {
    /// Mean pooling, padded (`offsets` 0) or packed.
    fn pool_means(&self, stream: &CudaStream, op: &MeanPool<'_, Self>, offsets: u64) -> Result<()> {
        if op.batch == 0 || op.dim == 0 {
            return Ok(());
        }
        let grid = (op.batch as u32, op.dim.div_ceil(POOL_FEATURES) as u32, 1);
        let (x, mask, out) = (addr(op.x), addr(op.mask), addr(op.out));
        let (batch, seq, dim) = (op.batch as u64, op.seq as u64, op.dim as u64);
        self.with_kernels(stream, op.dtype, "mean_pool", |raw, k| {
            let args = &mut [
                arg(&x),
                arg(&mask),
                arg(&offsets),
                arg(&batch),
                arg(&seq),
                arg(&dim),
                arg(&out),
            ];
            // SAFETY: the parameters in the kernel's order, alive for the call; the tensor layer checked
            // x [tokens, dim], mask [tokens] and out [batch, dim], and the offsets (when given).
            unsafe { launch(k.mean_pool, grid, POOL_BLOCK, raw, args) }
        })
    }
}

impl Ops for CudaDevice {
    fn compute_dtypes(&self) -> &'static [DType] {
        &[DType::F32, DType::F16, DType::BF16]
    }

    fn fill(&self, stream: &CudaStream, op: &Fill<'_, Self>) -> Result<()> {
        let (x, n, value) = (addr(op.dst), op.len as u64, op.value);
        let fill = self.kernels()?.fill;
        stream.with_raw(|raw| go(fill, grid_for(n), raw, &mut [arg(&x), arg(&n), arg(&value)]))
    }

    fn gemm(&self, stream: &CudaStream, op: &Gemm<'_, Self>) -> Result<()> {
        let (dtype, spec) = (op.dtype, &op.spec);
        let (a, b, c) = (addr(op.a), addr(op.b), addr(op.c));
        let bias = op.bias.map(addr);
        let kernels = match bias {
            Some(_) => Some(self.kernels()?.of(dtype, "gemm")?),
            None => None,
        };
        stream.with_blas(|raw, blas| {
            if let Some(bias) = bias {
                // SAFETY: as for `gemm` below; the bias holds `spec.n` elements (tensor layer).
                if unsafe { blas.gemm_bias(dtype, spec, [a, b, c, bias])? } {
                    return Ok(());
                }
            }
            // SAFETY: the tensor layer checked that every element `spec` reaches from each operand view's
            // start lies inside the view, and C is a fresh output; the buffers stay allocated until this
            // work has run (allocator contract).
            unsafe { blas.gemm(dtype, spec, a, b, c)? };
            let (Some(bias), Some(k)) = (bias, kernels) else {
                return Ok(());
            };
            // Bias per row of C, for every batch entry (outer entries one launch each).
            let size = dtype.size() as u64;
            let (rows, cols, ldc) = (spec.m as u64, spec.n as u64, spec.c.row_stride as i64);
            let (batches, batch_stride) = (spec.batch[1] as u64, spec.c.batch_stride[1] as i64);
            for outer in 0..spec.batch[0] as u64 {
                let c = c + outer * spec.c.batch_stride[0] as u64 * size;
                let args = &mut [
                    arg(&c),
                    arg(&bias),
                    arg(&batches),
                    arg(&batch_stride),
                    arg(&rows),
                    arg(&cols),
                    arg(&ldc),
                ];
                let grid = grid_rows(batches * rows, cols);
                // SAFETY: the parameters in the kernel's order, alive for the call; C spans every row
                // the GEMM wrote, the bias `cols` elements (tensor layer).
                unsafe { launch(k.add_bias, grid, BLOCK, raw, args) }?;
            }
            Ok(())
        })
    }

    fn bias_gelu(&self, stream: &CudaStream, op: &BiasGelu<'_, Self>) -> Result<()> {
        let (x, bias) = (addr(op.x), addr(op.bias));
        let (rows, cols) = (op.rows as u64, op.cols as u64);
        let tanh = i32::from(op.gelu == Gelu::Tanh);
        if let Some((chunks, row_chunks)) = vector_rows(op.dtype, rows, cols, &[x, bias]) {
            return self.with_kernels(stream, op.dtype, "bias_gelu", |raw, k| {
                let args = &mut [
                    arg(&x),
                    arg(&bias),
                    arg(&chunks),
                    arg(&row_chunks),
                    arg(&tanh),
                ];
                go(k.bias_gelu_vec, grid_for(chunks as u64), raw, args)
            });
        }
        self.with_kernels(stream, op.dtype, "bias_gelu", |raw, k| {
            let args = &mut [arg(&x), arg(&bias), arg(&rows), arg(&cols), arg(&tanh)];
            // SAFETY: the parameters in the kernel's order, alive for the call; x holds rows x cols
            // elements, the bias `cols` (tensor layer).
            unsafe { launch(k.bias_gelu, grid_rows(rows, cols), BLOCK, raw, args) }
        })
    }

    fn layer_norm(&self, stream: &CudaStream, op: &LayerNorm<'_, Self>) -> Result<()> {
        if op.rows == 0 {
            return Ok(());
        }
        let (x, gamma, beta, out) = (addr(op.x), addr(op.gamma), addr(op.beta), addr(op.out));
        let (bias, residual) = (addr_or_null(op.bias), addr_or_null(op.residual));
        let (cols, eps) = (op.cols as u64, op.eps);
        let (vec, per_lane) = (vector_len(op.dtype), LN_VECS_PER_LANE as u64);
        // 16 lanes per row when that holds the row, else 32 (see the kernel).
        let lanes = [16u64, 32].into_iter().find(|l| cols / vec <= l * per_lane);
        let vector_path = cols % vec == 0 && aligned16(&[x, bias, residual, gamma, beta, out]);
        if let (true, Some(lanes)) = (vector_path, lanes) {
            let (rows, cols) = (op.rows as u64, cols as u32);
            let rows_per_block = LN_WARPS as u64 * 32 / lanes;
            let grid = rows.div_ceil(rows_per_block) as u32;
            return self.with_kernels(stream, op.dtype, "layer_norm", |raw, k| {
                let kernel = k.layer_norm_rows[usize::from(lanes == 32)];
                let args = &mut [
                    arg(&x),
                    arg(&bias),
                    arg(&residual),
                    arg(&gamma),
                    arg(&beta),
                    arg(&out),
                    arg(&rows),
                    arg(&cols),
                    arg(&eps),
                ];
                // SAFETY: the parameters in the kernel's order, alive for the call; x, residual and out
                // hold rows x cols elements, bias, gamma and beta `cols`, all 16-byte aligned (or 0 for
                // an absent operand), cols a multiple of the vector within the kernel's row limit.
                unsafe { launch(kernel, (grid, 1, 1), LN_WARPS * 32, raw, args) }
            });
        }
        self.with_kernels(stream, op.dtype, "layer_norm", |raw, k| {
            go(
                k.layer_norm,
                op.rows as u32,
                raw,
                &mut [
                    arg(&x),
                    arg(&bias),
                    arg(&residual),
                    arg(&gamma),
                    arg(&beta),
                    arg(&out),
                    arg(&cols),
                    arg(&eps),
                ],
            )
        })
    }

    fn masked_softmax(&self, stream: &CudaStream, op: &MaskedSoftmax<'_, Self>) -> Result<()> {
        let rows_per_batch = (op.heads * op.q_len) as u64;
        let rows = op.batch as u64 * rows_per_batch;
        if rows == 0 {
            return Ok(());
        }
        let (scores, mask) = (addr(op.scores), addr(op.mask));
        let (k_len, scale) = (op.k_len as u64, op.scale);
        let rows_per_block = (BLOCK / 32) as u64;
        self.with_kernels(stream, op.dtype, "masked_softmax", |raw, k| {
            go(
                k.masked_softmax,
                rows.div_ceil(rows_per_block) as u32,
                raw,
                &mut [
                    arg(&scores),
                    arg(&mask),
                    arg(&rows),
                    arg(&rows_per_batch),
                    arg(&k_len),
                    arg(&scale),
                ],
            )
        })
    }

    fn attention_scratch(&self, shape: &AttentionShape) -> usize {
        if fused_attention(shape) {
            0
        } else {
            shape.probabilities()
        }
    }

    fn attention(&self, stream: &CudaStream, op: &Attention<'_, Self>) -> Result<()> {
        if !fused_attention(&op.shape) {
            return unfused_attention(self, stream, op);
        }
        match self.tensor_core_attention(op)? {
            Some(launch) => launch.encode(stream, op, 0),
            None => self.attention_on_cuda_cores(stream, op),
        }
    }

    /// Packed batches run as one launch of the same kernels (`sequence_span` in `common.cuh`).
    fn prefers_packed(&self) -> bool {
        true
    }

    fn attention_packed(
        &self,
        stream: &CudaStream,
        op: &Attention<'_, Self>,
        packing: &Packing<'_, Self>,
    ) -> Result<()> {
        if !fused_attention(&op.shape) {
            return attention_by_sequence(self, stream, op, packing);
        }
        let offsets = addr(packing.offsets);
        match self.tensor_core_attention(op)? {
            Some(launch) => launch.encode(stream, op, offsets),
            None => self.cuda_core_attention(stream, op, offsets),
        }
    }

    fn gather_rows(&self, stream: &CudaStream, op: &GatherRows<'_, Self>) -> Result<()> {
        let (table, ids, out) = (addr(op.table), addr(op.ids), addr(op.out));
        let (table_rows, n_ids, dim) = (op.table_rows as u64, op.n_ids as u64, op.dim as u64);
        let accumulate = i32::from(op.mode == Accumulate::Add);
        let vector = vector_rows(op.dtype, n_ids, dim, &[table, out]);
        if let (Some((chunks, row_chunks)), Ok(rows)) = (vector, u32::try_from(table_rows)) {
            return self.with_kernels(stream, op.dtype, "gather_rows", |raw, k| {
                let args = &mut [
                    arg(&table),
                    arg(&rows),
                    arg(&ids),
                    arg(&chunks),
                    arg(&row_chunks),
                    arg(&out),
                    arg(&accumulate),
                ];
                go(k.gather_rows_vec, grid_for(chunks as u64), raw, args)
            });
        }
        self.with_kernels(stream, op.dtype, "gather_rows", |raw, k| {
            go(
                k.gather_rows,
                grid_for(n_ids * dim),
                raw,
                &mut [
                    arg(&table),
                    arg(&table_rows),
                    arg(&ids),
                    arg(&n_ids),
                    arg(&dim),
                    arg(&out),
                    arg(&accumulate),
                ],
            )
        })
    }

    fn mean_pool(&self, stream: &CudaStream, op: &MeanPool<'_, Self>) -> Result<()> {
        self.pool_means(stream, op, 0)
    }

    fn mean_pool_packed(
        &self,
        stream: &CudaStream,
        op: &MeanPool<'_, Self>,
        packing: &Packing<'_, Self>,
    ) -> Result<()> {
        self.pool_means(stream, op, addr(packing.offsets))
    }

    fn l2_normalize(&self, stream: &CudaStream, op: &L2Normalize<'_, Self>) -> Result<()> {
        if op.rows == 0 {
            return Ok(());
        }
        let (x, dim) = (addr(op.x), op.dim as u64);
        self.with_kernels(stream, op.dtype, "l2_normalize", |raw, k| {
            go(
                k.l2_normalize,
                op.rows as u32,
                raw,
                &mut [arg(&x), arg(&dim)],
            )
        })
    }

    fn add(&self, stream: &CudaStream, op: &Add<'_, Self>) -> Result<()> {
        let (x, y, n) = (addr(op.x), addr(op.y), op.len as u64);
        self.with_kernels(stream, op.dtype, "add", |raw, k| {
            go(k.add, grid_for(n), raw, &mut [arg(&x), arg(&y), arg(&n)])
        })
    }
}
