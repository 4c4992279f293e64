//! The op set ([`Ops`]) on CUDA: GEMMs through the stream's cuBLAS handle ([`crate::blas`]), the rest
//! through braid's NVRTC kernels ([`crate::kernels`]), each in f32, f16 or bf16. Every op is encoded on
//! the given stream and returns without waiting; arguments were validated by the tensor layer
//! (`braid_runtime::tensor`), as the [`Ops`] contract says.
//!
//! Attention is the fused kernel (no scratch) for heads of up to
//! [`ATTENTION_MAX_HEAD_DIM`] features, and the unfused GEMM–softmax–GEMM path above that.

use std::ffi::c_void;

use braid_runtime::ops::{unfused_attention, AttentionShape, GemmSpec, Ops};
use braid_runtime::{DType, DevicePtr, Result};
use cudarc::driver::sys;

use crate::kernels::{
    arg, grid_for, grid_rows, launch, KernelSet, ATTENTION_BLOCK, ATTENTION_MAX_HEAD_DIM,
    ATTENTION_QUERIES, BLOCK, POOL_BLOCK, POOL_FEATURES,
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
    // device pointers the tensor layer checked against the op's extents.
    unsafe { launch(function, (grid, 1, 1), BLOCK, raw, args) }
}

/// Whether the fused attention kernel takes `shape`.
fn fused_attention(shape: &AttentionShape) -> bool {
    shape.head_dim <= ATTENTION_MAX_HEAD_DIM
}

impl Ops for CudaDevice {
    fn compute_dtypes(&self) -> &'static [DType] {
        &[DType::F32, DType::F16, DType::BF16]
    }

    fn fill(&self, stream: &CudaStream, dst: DevicePtr, len: usize, value: f32) -> Result<()> {
        let (x, n) = (dst.0, len as u64);
        let fill = self.kernels()?.fill;
        stream.with_raw(|raw| go(fill, grid_for(n), raw, &mut [arg(&x), arg(&n), arg(&value)]))
    }

    fn gemm(
        &self,
        stream: &CudaStream,
        dtype: DType,
        spec: &GemmSpec,
        a: DevicePtr,
        b: DevicePtr,
        c: DevicePtr,
        bias: Option<DevicePtr>,
    ) -> Result<()> {
        let size = dtype.size() as u64;
        let at = |p: DevicePtr, offset: usize| p.0 + offset as u64 * size;
        let (a, b, c) = (
            at(a, spec.a.offset),
            at(b, spec.b.offset),
            at(c, spec.c.offset),
        );
        let kernels = match bias {
            Some(_) => Some(self.kernels()?.of(dtype, "gemm")?),
            None => None,
        };
        stream.with_raw(|raw| {
            let blas = stream.blas(raw)?;
            // SAFETY: the tensor layer checked that every element `spec` reaches lies inside A, B and C,
            // and C is a fresh output; the buffers stay allocated until this work has run (allocator
            // contract).
            unsafe { blas.gemm(dtype, spec, a, b, c)? };
            let (Some(bias), Some(k)) = (bias, kernels) else {
                return Ok(());
            };
            // Bias per row of C, for every batch entry (outer entries one launch each).
            let (rows, cols, ldc) = (spec.m as u64, spec.n as u64, spec.c.row_stride as i64);
            let (batches, batch_stride) = (spec.batch[1] as u64, spec.c.batch_stride[1] as i64);
            for outer in 0..spec.batch[0] as u64 {
                let c = c + outer * spec.c.batch_stride[0] as u64 * size;
                let args = &mut [
                    arg(&c),
                    arg(&bias.0),
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

    fn bias_gelu(
        &self,
        stream: &CudaStream,
        dtype: DType,
        x: DevicePtr,
        bias: DevicePtr,
        rows: usize,
        cols: usize,
        tanh: bool,
    ) -> Result<()> {
        let (rows, cols, tanh) = (rows as u64, cols as u64, tanh as i32);
        self.with_kernels(stream, dtype, "bias_gelu", |raw, k| {
            let args = &mut [arg(&x.0), arg(&bias.0), arg(&rows), arg(&cols), arg(&tanh)];
            // SAFETY: the parameters in the kernel's order, alive for the call; x holds rows x cols
            // elements, the bias `cols` (tensor layer).
            unsafe { launch(k.bias_gelu, grid_rows(rows, cols), BLOCK, raw, args) }
        })
    }

    fn layer_norm(
        &self,
        stream: &CudaStream,
        dtype: DType,
        x: DevicePtr,
        bias: Option<DevicePtr>,
        residual: Option<DevicePtr>,
        gamma: DevicePtr,
        beta: DevicePtr,
        out: DevicePtr,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let bias = bias.map_or(0, |p| p.0);
        let residual = residual.map_or(0, |p| p.0);
        let cols = cols as u64;
        self.with_kernels(stream, dtype, "layer_norm", |raw, k| {
            go(
                k.layer_norm,
                rows as u32,
                raw,
                &mut [
                    arg(&x.0),
                    arg(&bias),
                    arg(&residual),
                    arg(&gamma.0),
                    arg(&beta.0),
                    arg(&out.0),
                    arg(&cols),
                    arg(&eps),
                ],
            )
        })
    }

    fn masked_softmax(
        &self,
        stream: &CudaStream,
        dtype: DType,
        scores: DevicePtr,
        mask: DevicePtr,
        batch: usize,
        heads: usize,
        q_len: usize,
        k_len: usize,
        scale: f32,
    ) -> Result<()> {
        let rows_per_batch = (heads * q_len) as u64;
        let rows = batch as u64 * rows_per_batch;
        if rows == 0 {
            return Ok(());
        }
        let k_len = k_len as u64;
        let rows_per_block = (BLOCK / 32) as u64;
        self.with_kernels(stream, dtype, "masked_softmax", |raw, k| {
            go(
                k.masked_softmax,
                rows.div_ceil(rows_per_block) as u32,
                raw,
                &mut [
                    arg(&scores.0),
                    arg(&mask.0),
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

    fn attention(
        &self,
        stream: &CudaStream,
        dtype: DType,
        shape: &AttentionShape,
        qkv: DevicePtr,
        mask: DevicePtr,
        out: DevicePtr,
        scratch: Option<DevicePtr>,
    ) -> Result<()> {
        if !fused_attention(shape) {
            return unfused_attention(self, stream, dtype, shape, qkv, mask, out, scratch);
        }
        if shape.batch == 0 || shape.seq == 0 {
            return Ok(());
        }
        let grid = (
            shape.seq.div_ceil(ATTENTION_QUERIES) as u32,
            shape.heads as u32,
            shape.batch as u32,
        );
        let (seq, heads, head_dim) = (shape.seq as u64, shape.heads as u64, shape.head_dim as u64);
        self.with_kernels(stream, dtype, "attention", |raw, k| {
            let args = &mut [
                arg(&qkv.0),
                arg(&mask.0),
                arg(&out.0),
                arg(&seq),
                arg(&heads),
                arg(&head_dim),
                arg(&shape.scale),
            ];
            // SAFETY: the parameters in the kernel's order, alive for the call; the tensor layer checked
            // qkv [batch * seq, 3 * heads * head_dim], mask [batch, seq] and out [batch * seq, hidden].
            unsafe { launch(k.attention, grid, ATTENTION_BLOCK, raw, args) }
        })
    }

    fn gather_rows(
        &self,
        stream: &CudaStream,
        dtype: DType,
        table: DevicePtr,
        table_rows: usize,
        ids: DevicePtr,
        n_ids: usize,
        dim: usize,
        out: DevicePtr,
        accumulate: bool,
    ) -> Result<()> {
        let (table_rows, n_ids, dim, accumulate) = (
            table_rows as u64,
            n_ids as u64,
            dim as u64,
            accumulate as i32,
        );
        self.with_kernels(stream, dtype, "gather_rows", |raw, k| {
            go(
                k.gather_rows,
                grid_for(n_ids * dim),
                raw,
                &mut [
                    arg(&table.0),
                    arg(&table_rows),
                    arg(&ids.0),
                    arg(&n_ids),
                    arg(&dim),
                    arg(&out.0),
                    arg(&accumulate),
                ],
            )
        })
    }

    fn mean_pool(
        &self,
        stream: &CudaStream,
        dtype: DType,
        x: DevicePtr,
        mask: DevicePtr,
        batch: usize,
        seq: usize,
        dim: usize,
        out: DevicePtr,
    ) -> Result<()> {
        if batch == 0 || dim == 0 {
            return Ok(());
        }
        let grid = (batch as u32, dim.div_ceil(POOL_FEATURES) as u32, 1);
        let (batch, seq, dim) = (batch as u64, seq as u64, dim as u64);
        self.with_kernels(stream, dtype, "mean_pool", |raw, k| {
            let args = &mut [
                arg(&x.0),
                arg(&mask.0),
                arg(&batch),
                arg(&seq),
                arg(&dim),
                arg(&out.0),
            ];
            // SAFETY: the parameters in the kernel's order, alive for the call; the tensor layer checked
            // x [batch, seq, dim], mask [batch, seq] and out [batch, dim].
            unsafe { launch(k.mean_pool, grid, POOL_BLOCK, raw, args) }
        })
    }

    fn l2_normalize(
        &self,
        stream: &CudaStream,
        dtype: DType,
        x: DevicePtr,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let dim = dim as u64;
        self.with_kernels(stream, dtype, "l2_normalize", |raw, k| {
            go(
                k.l2_normalize,
                rows as u32,
                raw,
                &mut [arg(&x.0), arg(&dim)],
            )
        })
    }

    fn add(
        &self,
        stream: &CudaStream,
        dtype: DType,
        x: DevicePtr,
        y: DevicePtr,
        len: usize,
    ) -> Result<()> {
        let n = len as u64;
        self.with_kernels(stream, dtype, "add", |raw, k| {
            go(
                k.add,
                grid_for(n),
                raw,
                &mut [arg(&x.0), arg(&y.0), arg(&n)],
            )
        })
    }
}
