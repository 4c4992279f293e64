//! The op set ([`Ops`]) on wgpu: each op binds the windows of its operand views ([`Binding::window`]),
//! packs its sizes, offsets and scales as the kernel's immediates, and encodes one dispatch on the
//! stream; nothing waits. Arguments were validated by the tensor layer, as the [`Ops`] contract says.
//!
//! Every op computes in f32; another dtype is [`RuntimeError::Unsupported`]. Attention is the provided
//! unfused path (scores GEMM, masked softmax, context GEMM through the scratch tensor). Sizes past
//! what a kernel indexes with 32 bits, or a batch past 65,535 products, are clear errors.

use braid_runtime::device::{DType, View};
use braid_runtime::ops::{
    Accumulate, Add, BiasGelu, Fill, GatherRows, Gelu, Gemm, L2Normalize, LayerNorm, MaskedSoftmax,
    MatStrides, MeanPool, Ops,
};
use braid_runtime::{Result, RuntimeError};

use crate::device::Shared;
use crate::kernels::{grid, Binding, Kernel, NARROW_GEMM_ROWS};
use crate::{WgpuDevice, WgpuStream};

/// The GEMM kernel's tile of outputs per workgroup: columns, and rows of the general kernel (the
/// narrow one's are [`NARROW_GEMM_ROWS`]).
const GEMM_TILE: usize = 64;

/// `Unsupported` unless `dtype` is f32.
fn f32_only(op: &'static str, dtype: DType) -> Result<()> {
    if dtype == DType::F32 {
        return Ok(());
    }
    Err(RuntimeError::Unsupported {
        op,
        dtype,
        backend: "wgpu",
    })
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

/// The window of the first `elements` f32/u32 elements of `view`.
fn bind<'a>(shared: &Shared, view: View<'a, WgpuDevice>, elements: usize) -> Result<Binding<'a>> {
    let at = view.buffer.base + view.offset as u64;
    Binding::window(shared, &view.buffer.buffer, at, (elements * 4) as u64)
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
    fn fill(&self, stream: &WgpuStream, op: &Fill<'_, Self>) -> Result<()> {
        if op.len == 0 {
            return Ok(());
        }
        let dst = bind(&self.shared, op.dst, op.len)?;
        let params = [dst.first(), word("fill", op.len)?, op.value.to_bits()];
        stream.dispatch(Kernel::Fill, &[dst], &params, grid(op.len as u64, 256)?)
    }

    fn gemm(&self, stream: &WgpuStream, op: &Gemm<'_, Self>) -> Result<()> {
        f32_only("gemm", op.dtype)?;
        let s = &op.spec;
        let products = s.batch[0] * s.batch[1];
        if s.m == 0 || s.n == 0 || products == 0 {
            return Ok(());
        }
        if products > 65_535 || s.m.div_ceil(GEMM_TILE) > 65_535 || s.n.div_ceil(GEMM_TILE) > 65_535
        {
            return Err(RuntimeError::Shape {
                op: "gemm",
                detail: format!(
                    "{} x {} outputs in {products} products are more than one wgpu dispatch takes",
                    s.m, s.n
                ),
            });
        }
        let (a_len, b_len, c_len) = s.extents();
        let shared = &self.shared;
        let (a, b, c) = (
            bind(shared, op.a, a_len)?,
            bind(shared, op.b, b_len)?,
            bind(shared, op.c, c_len)?,
        );
        let bias = match op.bias {
            Some(view) => Some(bind(shared, view, s.n)?),
            None => None,
        };
        let mut params = vec![
            word("gemm", s.m)?,
            word("gemm", s.n)?,
            word("gemm", s.k)?,
            word("gemm", s.batch[1].max(1))?,
        ];
        for (binding, layout) in [(&a, &s.a), (&b, &s.b), (&c, &s.c)] {
            params.push(binding.first());
            params.extend(strides(layout)?);
        }
        params.extend([
            bias.map_or(0, |b| b.first()),
            u32::from(bias.is_some()),
            s.alpha.to_bits(),
            s.beta.to_bits(),
        ]);
        let (kernel, tile_rows) = if s.m <= NARROW_GEMM_ROWS {
            (Kernel::GemmNarrow, NARROW_GEMM_ROWS)
        } else {
            (Kernel::Gemm, GEMM_TILE)
        };
        let groups = [
            s.n.div_ceil(GEMM_TILE) as u32,
            s.m.div_ceil(tile_rows) as u32,
            products as u32,
        ];
        stream.dispatch(kernel, &[a, b, c, bias.unwrap_or(c)], &params, groups)
    }

    fn bias_gelu(&self, stream: &WgpuStream, op: &BiasGelu<'_, Self>) -> Result<()> {
        f32_only("bias_gelu", op.dtype)?;
        let n = op.rows * op.cols;
        if n == 0 {
            return Ok(());
        }
        let (x, bias) = (
            bind(&self.shared, op.x, n)?,
            bind(&self.shared, op.bias, op.cols)?,
        );
        let params = [
            x.first(),
            bias.first(),
            word("bias_gelu", n)?,
            word("bias_gelu", op.cols)?,
            u32::from(op.gelu == Gelu::Tanh),
        ];
        stream.dispatch(Kernel::BiasGelu, &[x, bias], &params, grid(n as u64, 256)?)
    }

    fn layer_norm(&self, stream: &WgpuStream, op: &LayerNorm<'_, Self>) -> Result<()> {
        f32_only("layer_norm", op.dtype)?;
        let n = op.rows * op.cols;
        if n == 0 {
            return Ok(());
        }
        let shared = &self.shared;
        let x = bind(shared, op.x, n)?;
        let bias = op.bias.map(|v| bind(shared, v, op.cols)).transpose()?;
        let residual = op.residual.map(|v| bind(shared, v, n)).transpose()?;
        let (gamma, beta) = (
            bind(shared, op.gamma, op.cols)?,
            bind(shared, op.beta, op.cols)?,
        );
        let out = bind(shared, op.out, n)?;
        let params = [
            x.first(),
            bias.map_or(0, |b| b.first()),
            residual.map_or(0, |r| r.first()),
            gamma.first(),
            beta.first(),
            out.first(),
            word("layer_norm", op.rows)?,
            word("layer_norm", op.cols)?,
            op.eps.to_bits(),
            u32::from(bias.is_some()),
            u32::from(residual.is_some()),
        ];
        let bindings = [
            x,
            bias.unwrap_or(x),
            residual.unwrap_or(x),
            gamma,
            beta,
            out,
        ];
        stream.dispatch(
            Kernel::LayerNorm,
            &bindings,
            &params,
            grid(op.rows as u64, 1)?,
        )
    }

    fn masked_softmax(&self, stream: &WgpuStream, op: &MaskedSoftmax<'_, Self>) -> Result<()> {
        f32_only("masked_softmax", op.dtype)?;
        let rows = op.batch * op.heads * op.q_len;
        if rows == 0 || op.k_len == 0 {
            return Ok(());
        }
        let scores = bind(&self.shared, op.scores, rows * op.k_len)?;
        let mask = bind(&self.shared, op.mask, op.batch * op.k_len)?;
        let params = [
            scores.first(),
            mask.first(),
            word("masked_softmax", rows)?,
            word("masked_softmax", op.heads * op.q_len)?,
            word("masked_softmax", op.k_len)?,
            op.scale.to_bits(),
        ];
        stream.dispatch(
            Kernel::MaskedSoftmax,
            &[scores, mask],
            &params,
            grid(rows as u64, 1)?,
        )
    }

    fn gather_rows(&self, stream: &WgpuStream, op: &GatherRows<'_, Self>) -> Result<()> {
        f32_only("gather_rows", op.dtype)?;
        let n = op.n_ids * op.dim;
        if n == 0 {
            return Ok(());
        }
        let shared = &self.shared;
        let table = bind(shared, op.table, op.table_rows * op.dim)?;
        let ids = bind(shared, op.ids, op.n_ids)?;
        let out = bind(shared, op.out, n)?;
        let params = [
            table.first(),
            ids.first(),
            out.first(),
            word("gather_rows", n)?,
            word("gather_rows", op.dim)?,
            word("gather_rows", op.table_rows)?,
            u32::from(op.mode == Accumulate::Add),
        ];
        stream.dispatch(
            Kernel::GatherRows,
            &[table, ids, out],
            &params,
            grid(n as u64, 256)?,
        )
    }

    fn mean_pool(&self, stream: &WgpuStream, op: &MeanPool<'_, Self>) -> Result<()> {
        f32_only("mean_pool", op.dtype)?;
        let outputs = op.batch * op.dim;
        if outputs == 0 {
            return Ok(());
        }
        let shared = &self.shared;
        let x = bind(shared, op.x, op.batch * op.seq * op.dim)?;
        let mask = bind(shared, op.mask, op.batch * op.seq)?;
        let out = bind(shared, op.out, outputs)?;
        let params = [
            x.first(),
            mask.first(),
            out.first(),
            word("mean_pool", op.batch)?,
            word("mean_pool", op.seq)?,
            word("mean_pool", op.dim)?,
        ];
        stream.dispatch(
            Kernel::MeanPool,
            &[x, mask, out],
            &params,
            grid(outputs as u64, 256)?,
        )
    }

    fn l2_normalize(&self, stream: &WgpuStream, op: &L2Normalize<'_, Self>) -> Result<()> {
        f32_only("l2_normalize", op.dtype)?;
        if op.rows == 0 || op.dim == 0 {
            return Ok(());
        }
        let x = bind(&self.shared, op.x, op.rows * op.dim)?;
        let params = [
            x.first(),
            word("l2_normalize", op.rows)?,
            word("l2_normalize", op.dim)?,
        ];
        stream.dispatch(Kernel::L2Normalize, &[x], &params, grid(op.rows as u64, 1)?)
    }

    fn add(&self, stream: &WgpuStream, op: &Add<'_, Self>) -> Result<()> {
        f32_only("add", op.dtype)?;
        if op.len == 0 {
            return Ok(());
        }
        let (x, y) = (
            bind(&self.shared, op.x, op.len)?,
            bind(&self.shared, op.y, op.len)?,
        );
        let params = [x.first(), y.first(), word("add", op.len)?];
        stream.dispatch(Kernel::Add, &[x, y], &params, grid(op.len as u64, 256)?)
    }
}
