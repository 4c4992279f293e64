//! [`Ops`]: the op set every backend implements — what a transformer encoder needs — and the
//! backend-neutral argument types ([`GemmSpec`], [`MatStrides`]).
//!
//! Ops are encoded on a native stream and run in stream order; none blocks the host. Arguments are raw
//! device addresses and element counts: the tensor layer ([`crate::Runtime`]) has already checked
//! shapes, dtypes and sizes, so a backend may trust them (wgpu-hal's rule: validation is the caller's
//! job). Every float operand of one op has the op's `dtype` (f32, f16 or bf16; masks are always f32,
//! ids u32); a backend that lacks a dtype for an op returns [`RuntimeError::Unsupported`] — the CPU
//! backend computes in f32 only, the CUDA backend in all three (accumulating in f32).
//!
//! [`Ops::attention`] has a provided implementation (two batched GEMMs around a masked softmax, through
//! a scratch tensor of probabilities); a backend with a fused kernel overrides it and asks for no
//! scratch ([`Ops::attention_scratch`]).

use crate::{DType, Device, DevicePtr, Result, RuntimeError};

/// Layout of one operand of a (batched) matrix product, in elements from the tensor's start.
/// Element (batch `i0`, `i1`, row `r`, column `c`) is at
/// `offset + i0 * batch_stride[0] + i1 * batch_stride[1] + r * row_stride + c * col_stride`
/// (the offset lets an operand be a view into a fused tensor, e.g. K inside `[Q | K | V]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatStrides {
    /// Elements between rows.
    pub row_stride: isize,
    /// Elements between columns.
    pub col_stride: isize,
    /// Elements between outer and inner batch entries.
    pub batch_stride: [isize; 2],
    /// Elements before the operand's first element.
    pub offset: usize,
}

impl MatStrides {
    /// Row-major, contiguous, unbatched, `cols` columns.
    pub fn row_major(cols: usize) -> Self {
        Self {
            row_stride: cols as isize,
            col_stride: 1,
            batch_stride: [0, 0],
            offset: 0,
        }
    }

    /// The transpose view of a row-major matrix of `cols` columns (it reads as `[cols x rows]`).
    pub fn transposed(cols: usize) -> Self {
        Self {
            row_stride: 1,
            col_stride: cols as isize,
            batch_stride: [0, 0],
            offset: 0,
        }
    }

    /// The same strides with batch strides set.
    pub fn with_batch(self, outer: isize, inner: isize) -> Self {
        Self {
            batch_stride: [outer, inner],
            ..self
        }
    }

    /// The same strides starting `offset` elements into the tensor.
    pub fn at(self, offset: usize) -> Self {
        Self { offset, ..self }
    }

    /// Elements from the tensor's start that an operand of `rows x cols` in `batch` reaches, offset
    /// included (strides are non-negative).
    pub fn extent(&self, rows: usize, cols: usize, batch: [usize; 2]) -> usize {
        let span = |n: usize, stride: isize| n.saturating_sub(1) * stride.unsigned_abs();
        self.offset
            + 1
            + span(rows, self.row_stride)
            + span(cols, self.col_stride)
            + span(batch[0], self.batch_stride[0])
            + span(batch[1], self.batch_stride[1])
    }
}

/// A (batched) product `C = alpha * A·B + beta * C` with `A [m x k]`, `B [k x n]`, `C [m x n]`;
/// `batch = [outer, inner]` counts (`[1, 1]` for a plain product). With `beta == 0` C's old contents
/// are ignored.
#[derive(Clone, Copy, Debug)]
pub struct GemmSpec {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Batch counts.
    pub batch: [usize; 2],
    /// A's layout.
    pub a: MatStrides,
    /// B's layout.
    pub b: MatStrides,
    /// C's layout.
    pub c: MatStrides,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of C's old contents.
    pub beta: f32,
}

impl GemmSpec {
    /// Elements spanned by A, B and C.
    pub fn extents(&self) -> (usize, usize, usize) {
        (
            self.a.extent(self.m, self.k, self.batch),
            self.b.extent(self.k, self.n, self.batch),
            self.c.extent(self.m, self.n, self.batch),
        )
    }
}

/// The shape of one [`Ops::attention`]: `qkv [batch, seq, 3 * heads * head_dim]` (Q | K | V per token,
/// heads side by side within each), `mask [batch, seq]`, `out [batch, seq, heads * head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence (queries and keys).
    pub seq: usize,
    /// Heads.
    pub heads: usize,
    /// Features per head.
    pub head_dim: usize,
    /// Scale of the scores `q·k` before the softmax (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
}

impl AttentionShape {
    /// `heads * head_dim`.
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Elements of the `[batch, heads, seq, seq]` probabilities of unfused attention.
    pub fn probabilities(&self) -> usize {
        self.batch * self.heads * self.seq * self.seq
    }

    /// The two products of unfused attention over the fused `qkv` matrix, reading every head as a
    /// strided view (K at an offset of `hidden` elements, V at `2 * hidden`) and writing the context
    /// with heads interleaved: `(scores = scale·Q·Kᵀ into [batch, heads, seq, seq], context = P·V)`.
    pub fn gemm_specs(&self) -> (GemmSpec, GemmSpec) {
        let (seq, heads, head_dim, hidden) = (self.seq, self.heads, self.head_dim, self.hidden());
        // Head `h` of sequence `b`, token `t`, feature `d` of Q sits at b*seq*3H + t*3H + h*hd + d.
        let row = (3 * hidden) as isize;
        let per_sequence = seq as isize * row;
        let q = MatStrides::row_major(3 * hidden).with_batch(per_sequence, head_dim as isize);
        let k_transposed = MatStrides {
            row_stride: 1,
            col_stride: row,
            batch_stride: [per_sequence, head_dim as isize],
            offset: hidden,
        };
        let probs = MatStrides::row_major(seq)
            .with_batch((heads * seq * seq) as isize, (seq * seq) as isize);
        let scores = GemmSpec {
            m: seq,
            n: seq,
            k: head_dim,
            batch: [self.batch, heads],
            a: q,
            b: k_transposed,
            c: probs,
            alpha: self.scale,
            beta: 0.0,
        };
        let context = GemmSpec {
            m: seq,
            n: head_dim,
            k: seq,
            batch: [self.batch, heads],
            a: probs,
            b: q.at(2 * hidden),
            c: MatStrides::row_major(hidden).with_batch((seq * hidden) as isize, head_dim as isize),
            alpha: 1.0,
            beta: 0.0,
        };
        (scores, context)
    }
}

/// The op set, encoded on `stream` (module doc).
pub trait Ops: Device {
    /// The float dtypes every op computes in on this backend (f32 at least).
    fn compute_dtypes(&self) -> &'static [DType] {
        &[DType::F32]
    }
    /// `dst[..len] = value` (f32).
    fn fill(&self, stream: &Self::Stream, dst: DevicePtr, len: usize, value: f32) -> Result<()>;
    /// The product described by `spec`, plus `bias[n]` added to every row of C when given.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        stream: &Self::Stream,
        dtype: DType,
        spec: &GemmSpec,
        a: DevicePtr,
        b: DevicePtr,
        c: DevicePtr,
        bias: Option<DevicePtr>,
    ) -> Result<()>;
    /// `x[r, c] = gelu(x[r, c] + bias[c])` over `rows x cols` (exact erf GELU, or tanh when `tanh`).
    #[allow(clippy::too_many_arguments)]
    fn bias_gelu(
        &self,
        stream: &Self::Stream,
        dtype: DType,
        x: DevicePtr,
        bias: DevicePtr,
        rows: usize,
        cols: usize,
        tanh: bool,
    ) -> Result<()>;
    /// `out[r] = LayerNorm(x[r] + bias + residual[r]) * gamma + beta` over `rows x cols` (bias `[cols]`
    /// and residual `[rows x cols]` optional): the bias of the linear before it and the residual
    /// connection after it, in one pass.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &self,
        stream: &Self::Stream,
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
    ) -> Result<()>;
    /// In-place `softmax(scale * scores)` over the last axis of `[batch, heads, q_len, k_len]`, where
    /// keys with `mask[b, j] == 0` get probability 0 (`mask` is `[batch, k_len]`, f32).
    #[allow(clippy::too_many_arguments)]
    fn masked_softmax(
        &self,
        stream: &Self::Stream,
        dtype: DType,
        scores: DevicePtr,
        mask: DevicePtr,
        batch: usize,
        heads: usize,
        q_len: usize,
        k_len: usize,
        scale: f32,
    ) -> Result<()>;
    /// Elements of scratch (of `dtype`) that [`Ops::attention`] needs for `shape`; 0 for a fused
    /// kernel.
    fn attention_scratch(&self, shape: &AttentionShape) -> usize {
        shape.probabilities()
    }
    /// Multi-head self-attention (see [`AttentionShape`]): for every sequence, head and query,
    /// `out = Σ_j p_j v_j` with `p = softmax(scale · q·k_j)` over the keys whose `mask` entry is nonzero
    /// (a query with no such key gets zeros). `scratch` holds [`Ops::attention_scratch`] elements.
    ///
    /// Provided: scores GEMM, masked softmax, context GEMM (the probabilities live in `scratch`).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        stream: &Self::Stream,
        dtype: DType,
        shape: &AttentionShape,
        qkv: DevicePtr,
        mask: DevicePtr,
        out: DevicePtr,
        scratch: Option<DevicePtr>,
    ) -> Result<()> {
        unfused_attention(self, stream, dtype, shape, qkv, mask, out, scratch)
    }
    /// `out[i] (+)= table[ids[i]]` for `n_ids` rows of `dim`; ids are u32 and `< table_rows`.
    #[allow(clippy::too_many_arguments)]
    fn gather_rows(
        &self,
        stream: &Self::Stream,
        dtype: DType,
        table: DevicePtr,
        table_rows: usize,
        ids: DevicePtr,
        n_ids: usize,
        dim: usize,
        out: DevicePtr,
        accumulate: bool,
    ) -> Result<()>;
    /// Masked mean over `seq` of `x [batch, seq, dim]` into `out [batch, dim]` (mask f32).
    #[allow(clippy::too_many_arguments)]
    fn mean_pool(
        &self,
        stream: &Self::Stream,
        dtype: DType,
        x: DevicePtr,
        mask: DevicePtr,
        batch: usize,
        seq: usize,
        dim: usize,
        out: DevicePtr,
    ) -> Result<()>;
    /// Each of `rows` rows of `dim` divided by its L2 norm (zero rows stay zero), in place.
    fn l2_normalize(
        &self,
        stream: &Self::Stream,
        dtype: DType,
        x: DevicePtr,
        rows: usize,
        dim: usize,
    ) -> Result<()>;
    /// `x[..len] += y[..len]`.
    fn add(
        &self,
        stream: &Self::Stream,
        dtype: DType,
        x: DevicePtr,
        y: DevicePtr,
        len: usize,
    ) -> Result<()>;
}

/// [`Ops::attention`] from the other ops: the scores GEMM into `scratch` (`[batch, heads, seq, seq]`),
/// the masked softmax in place, the context GEMM into `out`. The provided implementation, and the
/// fallback of a fused kernel for shapes it does not take.
#[allow(clippy::too_many_arguments)]
pub fn unfused_attention<D: Ops>(
    device: &D,
    stream: &D::Stream,
    dtype: DType,
    shape: &AttentionShape,
    qkv: DevicePtr,
    mask: DevicePtr,
    out: DevicePtr,
    scratch: Option<DevicePtr>,
) -> Result<()> {
    let probs = scratch.ok_or_else(|| RuntimeError::Shape {
        op: "attention",
        detail: "the unfused attention needs a scratch tensor of probabilities".into(),
    })?;
    let (scores, context) = shape.gemm_specs();
    device.gemm(stream, dtype, &scores, qkv, qkv, probs, None)?;
    device.masked_softmax(
        stream,
        dtype,
        probs,
        mask,
        shape.batch,
        shape.heads,
        shape.seq,
        shape.seq,
        1.0,
    )?;
    device.gemm(stream, dtype, &context, probs, qkv, out, None)
}
