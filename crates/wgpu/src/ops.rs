//! The op set ([`Ops`]) on wgpu: each op binds the windows of its operand views ([`Binding::window`]),
//! packs its sizes, offsets and scales as the kernel's immediates, and encodes one dispatch on the
//! stream; nothing waits. Arguments were validated by the tensor layer, as the [`Ops`] contract says.
//!
//! Every op computes in f32; f16 operands are read and written as f16 (each kernel's f16 variant) where
//! the adapter has `SHADER_F16`; another dtype is [`RuntimeError::Unsupported`]. Sizes past what a
//! kernel indexes with 32 bits, or a batch past 65,535 products, are clear errors.
//!
//! - **GEMM**: products of at most [`SMALL_GEMM_MAX_ROWS`] rows go to the few-row kernel (K split over
//!   lanes: a batch of one sentence is a handful of rows, which a tiled kernel would give a handful of
//!   workgroups); larger ones to the tiled kernel, with 128-row tiles when that still makes
//!   [`WIDE_GRID`] workgroups, 64-row tiles otherwise (more workgroups for narrow products).
//! - **Attention** is one fused kernel with no scratch: for short sequences (up to
//!   [`BLOCK_MAX_SEQ`] tokens, heads up to 64 features) `attention_block.wgsl`, which reads a head's
//!   keys and values once per block of 16 queries, where the adapter's workgroup memory holds them;
//!   else, up to [`FUSED_MAX_SEQ`] tokens and heads up to [`FUSED_MAX_HEAD_DIM`] features,
//!   `attention.wgsl` (one query per workgroup); past them, the provided unfused path (scores GEMM,
//!   masked softmax, context GEMM).

use braid_runtime::device::{DType, View};
use braid_runtime::ops::{
    unfused_attention, Accumulate, Add, Attention, AttentionShape, BiasGelu, Fill, GatherRows,
    Gelu, Gemm, L2Normalize, LayerNorm, MaskedSoftmax, MatStrides, MeanPool, Ops,
};
use braid_runtime::{Result, RuntimeError};

use crate::bind::{grid, Binding};
use crate::device::Shared;
use crate::kernels::Kernel;
use crate::{WgpuDevice, WgpuStream};

/// The most rows (per product) the few-row GEMM takes.
pub const SMALL_GEMM_MAX_ROWS: usize = 64;

/// Workgroups from which the tiled GEMM uses 128-row tiles (two waves of a 132-SM GPU).
pub const WIDE_GRID: usize = 256;

/// The longest sequence the fused attention takes (its workgroup holds a query's probabilities).
pub const FUSED_MAX_SEQ: usize = 512;

/// The largest head the fused attention takes (its workgroup holds the query).
pub const FUSED_MAX_HEAD_DIM: usize = 256;

/// The longest sequence the block attention takes (with heads of at most 64 features, and
/// `seq * (head_dim + 1)` at most 2,112: its workgroup holds the head's keys and values).
pub const BLOCK_MAX_SEQ: usize = 64;

/// Whether the block attention takes `shape`.
fn block_attention(shape: &AttentionShape) -> bool {
    shape.seq <= BLOCK_MAX_SEQ && shape.head_dim <= 64 && shape.seq * (shape.head_dim + 1) <= 2112
}

/// The GEMM kernel for `m` x `n` outputs in `products` products, and its grid (see the module doc).
/// `forced` (`BRAID_WGPU_GEMM`) overrides the choice.
fn gemm_plan(m: usize, n: usize, products: usize, forced: Option<Kernel>) -> (Kernel, [usize; 3]) {
    let wide = [n.div_ceil(64), m.div_ceil(128), products];
    let kernel = forced.unwrap_or(if m <= SMALL_GEMM_MAX_ROWS {
        Kernel::GemmSmall
    } else if wide.iter().product::<usize>() >= WIDE_GRID {
        Kernel::Gemm128
    } else {
        Kernel::Gemm64
    });
    let groups = match kernel {
        Kernel::GemmSmall => [n.div_ceil(8), m.div_ceil(16), products],
        Kernel::Gemm128 => wide,
        _ => [n.div_ceil(64), m.div_ceil(64), products],
    };
    (kernel, groups)
}

/// Whether the fused attention kernel takes `shape` (else the unfused path runs).
fn fused_attention(shape: &AttentionShape) -> bool {
    shape.seq <= FUSED_MAX_SEQ
        && shape.head_dim <= FUSED_MAX_HEAD_DIM
        && shape.heads <= 65_535
        && shape.batch <= 65_535
}

impl WgpuDevice {
    /// `kernel` for operands of `dtype` (f32, or the f16 variant where there is one), or
    /// `Unsupported` naming `op`.
    fn typed(&self, op: &'static str, kernel: Kernel, dtype: DType) -> Result<(Kernel, bool)> {
        match dtype {
            DType::F32 => Ok((kernel, false)),
            DType::F16 if self.shared.kernels.has_f16(kernel) => Ok((kernel, true)),
            _ => Err(RuntimeError::Unsupported {
                op,
                dtype,
                backend: "wgpu",
            }),
        }
    }
}

/// `value` as a kernel's u32 parameter, or an error naming the op.
fn word(op: &'static str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| RuntimeError::Shape {
        op,
        detail: format!("{value} is past what the wgpu kernels index (u32)"),
    })
}

/// A stride as the GEMM kernel's i32 parameter (bit pattern), or an error.
fn stride(value: isize) -> Result<u32> {
    i32::try_from(value)
        .map(|v| v as u32)
        .map_err(|_| RuntimeError::Shape {
            op: "gemm",
            detail: format!("stride {value} is past what the wgpu kernel indexes (i32)"),
        })
}

/// The window of the first `elements` elements of `size` bytes of `view`, and the kernel's offset
/// parameter for it.
fn bind<'a>(
    shared: &Shared,
    view: View<'a, WgpuDevice>,
    elements: usize,
    size: usize,
) -> Result<(Binding<'a>, u32)> {
    let at = view.buffer.base + view.offset as u64;
    let binding = Binding::window(shared, &view.buffer.buffer, at, (elements * size) as u64)?;
    Ok((binding, binding.first(size)))
}

/// The four strides of a GEMM operand, as kernel parameters.
fn strides(s: &MatStrides) -> Result<[u32; 4]> {
    Ok([
        stride(s.row_stride)?,
        stride(s.col_stride)?,
        stride(s.batch_stride[0])?,
        stride(s.batch_stride[1])?,
    ])
}

impl Ops for WgpuDevice {
    fn compute_dtypes(&self) -> &'static [DType] {
        if self.shared.kernels.has_f16(Kernel::Gemm64) {
            &[DType::F32, DType::F16]
        } else {
            &[DType::F32]
        }
    }

    fn fill(&self, stream: &WgpuStream, op: &Fill<'_, Self>) -> Result<()> {
        if op.len == 0 {
            return Ok(());
        }
        let (dst, at) = bind(&self.shared, op.dst, op.len, 4)?;
        let params = [at, word("fill", op.len)?, op.value.to_bits()];
        let groups = grid(op.len as u64, 256)?;
        stream.dispatch((Kernel::Fill, false), &[dst], &params, groups)
    }

    fn gemm(&self, stream: &WgpuStream, op: &Gemm<'_, Self>) -> Result<()> {
        let s = &op.spec;
        let products = s.batch[0] * s.batch[1];
        let (kernel, groups) = gemm_plan(s.m, s.n, products, self.shared.gemm_override);
        let kernel = self.typed("gemm", kernel, op.dtype)?;
        if s.m == 0 || s.n == 0 || products == 0 {
            return Ok(());
        }
        if groups.iter().any(|&g| g > 65_535) {
            return Err(RuntimeError::Shape {
                op: "gemm",
                detail: format!(
                    "{} x {} outputs in {products} products are more than one wgpu dispatch takes",
                    s.m, s.n
                ),
            });
        }
        let (a_len, b_len, c_len) = s.extents();
        let (shared, size) = (&self.shared, op.dtype.size());
        let (a, a_at) = bind(shared, op.a, a_len, size)?;
        let (b, b_at) = bind(shared, op.b, b_len, size)?;
        let (c, c_at) = bind(shared, op.c, c_len, size)?;
        let bias = op.bias.map(|v| bind(shared, v, s.n, size)).transpose()?;
        let mut params = vec![
            word("gemm", s.m)?,
            word("gemm", s.n)?,
            word("gemm", s.k)?,
            word("gemm", s.batch[1].max(1))?,
        ];
        for (at, layout) in [(a_at, &s.a), (b_at, &s.b), (c_at, &s.c)] {
            params.push(at);
            params.extend(strides(layout)?);
        }
        params.extend([
            bias.map_or(0, |(_, at)| at),
            u32::from(bias.is_some()),
            s.alpha.to_bits(),
            s.beta.to_bits(),
        ]);
        let bias = bias.map_or(c, |(b, _)| b);
        let groups = groups.map(|g| g as u32);
        stream.dispatch(kernel, &[a, b, c, bias], &params, groups)
    }

    fn attention_scratch(&self, shape: &AttentionShape) -> usize {
        match fused_attention(shape) {
            true => 0,
            false => shape.probabilities(),
        }
    }

    fn attention(&self, stream: &WgpuStream, op: &Attention<'_, Self>) -> Result<()> {
        let shape = &op.shape;
        if !fused_attention(shape) {
            return unfused_attention(self, stream, op);
        }
        let block = self.shared.kernels.attention_block && block_attention(shape);
        let kernel = match block {
            true => Kernel::AttentionBlock,
            false => Kernel::Attention,
        };
        let kernel = self.typed("attention", kernel, op.dtype)?;
        let tokens = shape.batch * shape.seq;
        if tokens == 0 || shape.hidden() == 0 {
            return Ok(());
        }
        let (shared, size) = (&self.shared, op.dtype.size());
        let (qkv, qkv_at) = bind(shared, op.qkv, tokens * 3 * shape.hidden(), size)?;
        let (mask, mask_at) = bind(shared, op.mask, tokens, 4)?;
        let (out, out_at) = bind(shared, op.out, tokens * shape.hidden(), size)?;
        let params = [
            qkv_at,
            mask_at,
            out_at,
            word("attention", shape.seq)?,
            word("attention", shape.heads)?,
            word("attention", shape.head_dim)?,
            shape.scale.to_bits(),
        ];
        let queries = match block {
            true => shape.seq.div_ceil(16),
            false => shape.seq,
        };
        let groups = [queries as u32, shape.heads as u32, shape.batch as u32];
        stream.dispatch(kernel, &[qkv, mask, out], &params, groups)
    }

    fn bias_gelu(&self, stream: &WgpuStream, op: &BiasGelu<'_, Self>) -> Result<()> {
        let kernel = self.typed("bias_gelu", Kernel::BiasGelu, op.dtype)?;
        let n = op.rows * op.cols;
        if n == 0 {
            return Ok(());
        }
        let (shared, size) = (&self.shared, op.dtype.size());
        let (x, x_at) = bind(shared, op.x, n, size)?;
        let (bias, bias_at) = bind(shared, op.bias, op.cols, size)?;
        let params = [
            x_at,
            bias_at,
            word("bias_gelu", n)?,
            word("bias_gelu", op.cols)?,
            u32::from(op.gelu == Gelu::Tanh),
        ];
        stream.dispatch(kernel, &[x, bias], &params, grid(n as u64, 256)?)
    }

    fn layer_norm(&self, stream: &WgpuStream, op: &LayerNorm<'_, Self>) -> Result<()> {
        let kernel = self.typed("layer_norm", Kernel::LayerNorm, op.dtype)?;
        let n = op.rows * op.cols;
        if n == 0 {
            return Ok(());
        }
        let (shared, size) = (&self.shared, op.dtype.size());
        let (x, x_at) = bind(shared, op.x, n, size)?;
        let bias = op
            .bias
            .map(|v| bind(shared, v, op.cols, size))
            .transpose()?;
        let residual = op.residual.map(|v| bind(shared, v, n, size)).transpose()?;
        let (gamma, gamma_at) = bind(shared, op.gamma, op.cols, size)?;
        let (beta, beta_at) = bind(shared, op.beta, op.cols, size)?;
        let (out, out_at) = bind(shared, op.out, n, size)?;
        let params = [
            x_at,
            bias.map_or(0, |(_, at)| at),
            residual.map_or(0, |(_, at)| at),
            gamma_at,
            beta_at,
            out_at,
            word("layer_norm", op.rows)?,
            word("layer_norm", op.cols)?,
            op.eps.to_bits(),
            u32::from(bias.is_some()),
            u32::from(residual.is_some()),
        ];
        let (bias, residual) = (bias.map_or(x, |b| b.0), residual.map_or(x, |r| r.0));
        let bindings = [x, bias, residual, gamma, beta, out];
        stream.dispatch(kernel, &bindings, &params, grid(op.rows as u64, 1)?)
    }

    fn masked_softmax(&self, stream: &WgpuStream, op: &MaskedSoftmax<'_, Self>) -> Result<()> {
        let kernel = self.typed("masked_softmax", Kernel::MaskedSoftmax, op.dtype)?;
        let rows = op.batch * op.heads * op.q_len;
        if rows == 0 || op.k_len == 0 {
            return Ok(());
        }
        let shared = &self.shared;
        let (scores, scores_at) = bind(shared, op.scores, rows * op.k_len, op.dtype.size())?;
        let (mask, mask_at) = bind(shared, op.mask, op.batch * op.k_len, 4)?;
        let params = [
            scores_at,
            mask_at,
            word("masked_softmax", rows)?,
            word("masked_softmax", op.heads * op.q_len)?,
            word("masked_softmax", op.k_len)?,
            op.scale.to_bits(),
        ];
        stream.dispatch(kernel, &[scores, mask], &params, grid(rows as u64, 1)?)
    }

    fn gather_rows(&self, stream: &WgpuStream, op: &GatherRows<'_, Self>) -> Result<()> {
        let kernel = self.typed("gather_rows", Kernel::GatherRows, op.dtype)?;
        let n = op.n_ids * op.dim;
        if n == 0 {
            return Ok(());
        }
        let (shared, size) = (&self.shared, op.dtype.size());
        let (table, table_at) = bind(shared, op.table, op.table_rows * op.dim, size)?;
        let (ids, ids_at) = bind(shared, op.ids, op.n_ids, 4)?;
        let (out, out_at) = bind(shared, op.out, n, size)?;
        let params = [
            table_at,
            ids_at,
            out_at,
            word("gather_rows", n)?,
            word("gather_rows", op.dim)?,
            word("gather_rows", op.table_rows)?,
            u32::from(op.mode == Accumulate::Add),
        ];
        stream.dispatch(kernel, &[table, ids, out], &params, grid(n as u64, 256)?)
    }

    fn mean_pool(&self, stream: &WgpuStream, op: &MeanPool<'_, Self>) -> Result<()> {
        let kernel = self.typed("mean_pool", Kernel::MeanPool, op.dtype)?;
        let outputs = op.batch * op.dim;
        if outputs == 0 {
            return Ok(());
        }
        let (shared, size) = (&self.shared, op.dtype.size());
        let (x, x_at) = bind(shared, op.x, op.batch * op.seq * op.dim, size)?;
        let (mask, mask_at) = bind(shared, op.mask, op.batch * op.seq, 4)?;
        let (out, out_at) = bind(shared, op.out, outputs, size)?;
        let params = [
            x_at,
            mask_at,
            out_at,
            word("mean_pool", op.batch)?,
            word("mean_pool", op.seq)?,
            word("mean_pool", op.dim)?,
        ];
        stream.dispatch(kernel, &[x, mask, out], &params, grid(outputs as u64, 256)?)
    }

    fn l2_normalize(&self, stream: &WgpuStream, op: &L2Normalize<'_, Self>) -> Result<()> {
        let kernel = self.typed("l2_normalize", Kernel::L2Normalize, op.dtype)?;
        if op.rows == 0 || op.dim == 0 {
            return Ok(());
        }
        let (x, x_at) = bind(&self.shared, op.x, op.rows * op.dim, op.dtype.size())?;
        let params = [
            x_at,
            word("l2_normalize", op.rows)?,
            word("l2_normalize", op.dim)?,
        ];
        stream.dispatch(kernel, &[x], &params, grid(op.rows as u64, 1)?)
    }

    fn add(&self, stream: &WgpuStream, op: &Add<'_, Self>) -> Result<()> {
        let kernel = self.typed("add", Kernel::Add, op.dtype)?;
        if op.len == 0 {
            return Ok(());
        }
        let (shared, size) = (&self.shared, op.dtype.size());
        let ((x, x_at), (y, y_at)) = (
            bind(shared, op.x, op.len, size)?,
            bind(shared, op.y, op.len, size)?,
        );
        let params = [x_at, y_at, word("add", op.len)?];
        stream.dispatch(kernel, &[x, y], &params, grid(op.len as u64, 256)?)
    }
}
