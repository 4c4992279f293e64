//! [`Ops`]: the op set every backend implements — what a transformer encoder needs — and its
//! descriptors, one struct per op ([`Gemm`], [`BiasGelu`], [`LayerNorm`], ...), with the
//! backend-neutral layout types ([`GemmSpec`], [`MatStrides`], [`AttentionShape`]).
//!
//! Ops are encoded on a native stream and run in stream order; none blocks the host. Operands are
//! [`View`]s (a backend buffer, a byte offset, a length) and element counts: the tensor layer
//! ([`crate::runtime::Runtime`]) has already checked shapes, dtypes and that every view covers what the op
//! reads or writes, so a backend may trust them (wgpu-hal's rule: validation is the caller's job). Every float operand of one op has the op's `dtype` (f32, f16 or bf16; masks are always f32,
//! ids u32); a backend that lacks a dtype for an op returns [`RuntimeError::Unsupported`] — the CPU
//! backend computes in f32 only, the CUDA backend in all three (accumulating in f32), the wgpu backend in
//! f32 and, where the adapter has `SHADER_F16`, f16 (accumulating in f32).
//!
//! [`Ops::attention`] has a provided implementation (two batched GEMMs around a masked softmax, through
//! a scratch tensor of probabilities); a backend with a fused kernel overrides it and asks for no
//! scratch ([`Ops::attention_scratch`]).
//!
//! Packed batches ([`Packing`]): the tokens of every sequence in one `[tokens, ..]` matrix with no
//! padding, sequence `b` at rows `offsets[b]..offsets[b + 1]`. Only attention and mean pooling look
//! across tokens, so only they have a packed form ([`Ops::attention_packed`], [`Ops::mean_pool_packed`]);
//! every other op is row-wise and runs on the packed matrix as it is. Their provided implementations run
//! the padded op once per sequence (correct everywhere, one launch per sequence); a backend with
//! variable-length kernels overrides them. [`Ops::prefers_packed`] tells a model which layout to build.

use crate::device::{DType, Device, View};
use crate::error::{Result, RuntimeError};

/// Layout of one operand of a (batched) matrix product, in elements from the operand view's start.
/// Element (batch `i0`, `i1`, row `r`, column `c`) is at
/// `i0 * batch_stride[0] + i1 * batch_stride[1] + r * row_stride + c * col_stride`
/// (an operand inside a fused tensor, e.g. K inside `[Q | K | V]`, is a view that starts there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatStrides {
    /// Elements between rows.
    pub row_stride: isize,
    /// Elements between columns.
    pub col_stride: isize,
    /// Elements between outer and inner batch entries.
    pub batch_stride: [isize; 2],
}

impl MatStrides {
    /// Row-major, contiguous, unbatched, `cols` columns.
    pub fn row_major(cols: usize) -> Self {
        Self {
            row_stride: cols as isize,
            col_stride: 1,
            batch_stride: [0, 0],
        }
    }

    /// The transpose view of a row-major matrix of `cols` columns (it reads as `[cols x rows]`).
    pub fn transposed(cols: usize) -> Self {
        Self {
            row_stride: 1,
            col_stride: cols as isize,
            batch_stride: [0, 0],
        }
    }

    /// The same strides with batch strides set.
    pub fn with_batch(self, outer: isize, inner: isize) -> Self {
        Self {
            batch_stride: [outer, inner],
            ..self
        }
    }

    /// Elements from the operand's start that an operand of `rows x cols` in `batch` reaches
    /// (strides are non-negative).
    pub fn extent(&self, rows: usize, cols: usize, batch: [usize; 2]) -> usize {
        let span = |n: usize, stride: isize| n.saturating_sub(1) * stride.unsigned_abs();
        1 + span(rows, self.row_stride)
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
    /// `batch` sequences of `seq` tokens, `heads` heads of `head_dim` features, scores scaled by
    /// `1 / sqrt(head_dim)` (BERT's).
    pub fn new(batch: usize, seq: usize, heads: usize, head_dim: usize) -> Self {
        Self {
            batch,
            seq,
            heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
        }
    }

    /// `heads * head_dim`.
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Elements of the `[batch, heads, seq, seq]` probabilities of unfused attention.
    pub fn probabilities(&self) -> usize {
        self.batch * self.heads * self.seq * self.seq
    }

    /// The two products of unfused attention over the fused `qkv` matrix, reading every head as a
    /// strided view and writing the context with heads interleaved:
    /// `(scores = scale·Q·Kᵀ into [batch, heads, seq, seq], context = P·V)`. The scores' B operand is
    /// K, a view of `qkv` starting `hidden` elements in; the context's B is V, starting at `2 * hidden`.
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
            b: q,
            c: MatStrides::row_major(hidden).with_batch((seq * hidden) as isize, head_dim as isize),
            alpha: 1.0,
            beta: 0.0,
        };
        (scores, context)
    }
}

/// `dst[..len] = value` (f32).
pub struct Fill<'a, D: Device> {
    /// The destination.
    pub dst: View<'a, D>,
    /// Elements.
    pub len: usize,
    /// The value.
    pub value: f32,
}

/// The product described by `spec` (see [`GemmSpec`]), plus `bias[n]` added to every row of C when
/// given. Every operand has `dtype`.
pub struct Gemm<'a, D: Device> {
    /// The element type of A, B, C and the bias.
    pub dtype: DType,
    /// Sizes, strides and scales.
    pub spec: GemmSpec,
    /// A, from its first element.
    pub a: View<'a, D>,
    /// B, from its first element.
    pub b: View<'a, D>,
    /// C, from its first element (does not overlap A or B).
    pub c: View<'a, D>,
    /// `[n]`, added to every row of C.
    pub bias: Option<View<'a, D>>,
}

/// Which GELU: the exact one (erf) or the tanh approximation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gelu {
    /// `x · Φ(x)` with the error function (BERT's `gelu`).
    Erf,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    Tanh,
}

/// `x[r, c] = gelu(x[r, c] + bias[c])` over `rows x cols`, in place.
pub struct BiasGelu<'a, D: Device> {
    /// The element type of x and bias.
    pub dtype: DType,
    /// `[rows, cols]`, in place.
    pub x: View<'a, D>,
    /// `[cols]`.
    pub bias: View<'a, D>,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Which GELU.
    pub gelu: Gelu,
}

/// `out[r] = LayerNorm(x[r] + bias + residual[r]) * gamma + beta` over `rows x cols`: the bias of the
/// linear before it and the residual connection after it, in one pass.
pub struct LayerNorm<'a, D: Device> {
    /// The element type of every operand.
    pub dtype: DType,
    /// `[rows, cols]`.
    pub x: View<'a, D>,
    /// `[cols]`, added to every row of x first.
    pub bias: Option<View<'a, D>>,
    /// `[rows, cols]`, added to x first.
    pub residual: Option<View<'a, D>>,
    /// `[cols]`.
    pub gamma: View<'a, D>,
    /// `[cols]`.
    pub beta: View<'a, D>,
    /// `[rows, cols]`, overlapping no input.
    pub out: View<'a, D>,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Added to the variance.
    pub eps: f32,
}

/// In-place `softmax(scale * scores)` over the last axis of `[batch, heads, q_len, k_len]`, where keys
/// with `mask[b, j] == 0` get probability 0 (a row with no such key gets zeros). A non-finite score
/// makes its row non-finite: it is never taken for masked.
pub struct MaskedSoftmax<'a, D: Device> {
    /// The element type of the scores.
    pub dtype: DType,
    /// `[batch, heads, q_len, k_len]`, in place.
    pub scores: View<'a, D>,
    /// `[batch, k_len]`, f32 (1.0 keep, 0.0 masked).
    pub mask: View<'a, D>,
    /// Sequences.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Queries.
    pub q_len: usize,
    /// Keys.
    pub k_len: usize,
    /// Scale applied before the softmax.
    pub scale: f32,
}

/// Multi-head self-attention (see [`AttentionShape`]): for every sequence, head and query,
/// `out = Σ_j p_j v_j` with `p = softmax(scale · q·k_j)` over the keys whose `mask` entry is nonzero (a
/// query with no such key gets zeros).
pub struct Attention<'a, D: Device> {
    /// The element type of qkv, out and scratch.
    pub dtype: DType,
    /// Sizes and scale.
    pub shape: AttentionShape,
    /// `[batch, seq, 3 * hidden]`.
    pub qkv: View<'a, D>,
    /// `[batch, seq]`, f32.
    pub mask: View<'a, D>,
    /// `[batch, seq, hidden]`.
    pub out: View<'a, D>,
    /// [`Ops::attention_scratch`] elements, when that is not 0.
    pub scratch: Option<View<'a, D>>,
}

/// Where the sequences of a packed batch lie: sequence `b` is rows `offsets[b]..offsets[b + 1]` of a
/// packed operand (`offsets[0] == 0`, non-decreasing, one entry more than sequences), the same offsets
/// on the device (u32, for kernels) and on the host (for per-sequence fallbacks and launch sizes).
#[derive(Clone, Copy)]
pub struct Packing<'a, D: Device> {
    /// `[sequences + 1]`, u32.
    pub offsets: View<'a, D>,
    /// The same offsets.
    pub host: &'a [u32],
}

impl<D: Device> Packing<'_, D> {
    /// Sequence `b`'s first row and its token count.
    pub fn span(&self, b: usize) -> (usize, usize) {
        let first = self.host[b] as usize;
        (first, self.host[b + 1] as usize - first)
    }

    /// Sequences.
    pub fn sequences(&self) -> usize {
        self.host.len().saturating_sub(1)
    }
}

/// Whether [`GatherRows`] overwrites its output or adds to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Accumulate {
    /// `out[i] = table[ids[i]]`.
    Overwrite,
    /// `out[i] += table[ids[i]]`.
    Add,
}

/// `out[i] (+)= table[ids[i]]` for `n_ids` rows of `dim`; ids are u32 and `< table_rows`.
pub struct GatherRows<'a, D: Device> {
    /// The element type of table and out.
    pub dtype: DType,
    /// `[table_rows, dim]`.
    pub table: View<'a, D>,
    /// Rows of the table.
    pub table_rows: usize,
    /// `[n_ids]`, u32.
    pub ids: View<'a, D>,
    /// Ids.
    pub n_ids: usize,
    /// Row width.
    pub dim: usize,
    /// `[n_ids, dim]`.
    pub out: View<'a, D>,
    /// Overwrite or add.
    pub mode: Accumulate,
}

/// Masked mean over `seq` of `x [batch, seq, dim]` into `out [batch, dim]`.
pub struct MeanPool<'a, D: Device> {
    /// The element type of x and out.
    pub dtype: DType,
    /// `[batch, seq, dim]`.
    pub x: View<'a, D>,
    /// `[batch, seq]`, f32.
    pub mask: View<'a, D>,
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Features.
    pub dim: usize,
    /// `[batch, dim]`.
    pub out: View<'a, D>,
}

/// Each of `rows` rows of `dim` divided by its L2 norm (zero rows stay zero), in place.
pub struct L2Normalize<'a, D: Device> {
    /// The element type of x.
    pub dtype: DType,
    /// `[rows, dim]`, in place.
    pub x: View<'a, D>,
    /// Rows.
    pub rows: usize,
    /// Features.
    pub dim: usize,
}

/// `x[..len] += y[..len]`.
pub struct Add<'a, D: Device> {
    /// The element type of x and y.
    pub dtype: DType,
    /// In place.
    pub x: View<'a, D>,
    /// Does not overlap x.
    pub y: View<'a, D>,
    /// Elements.
    pub len: usize,
}

/// The op set, encoded on `stream` (module doc): one descriptor per op.
pub trait Ops: Device {
    /// The float dtypes every op computes in on this backend (f32 at least).
    fn compute_dtypes(&self) -> &'static [DType] {
        &[DType::F32]
    }
    /// See [`Fill`].
    fn fill(&self, stream: &Self::Stream, op: &Fill<'_, Self>) -> Result<()>;
    /// See [`Gemm`].
    fn gemm(&self, stream: &Self::Stream, op: &Gemm<'_, Self>) -> Result<()>;
    /// See [`BiasGelu`].
    fn bias_gelu(&self, stream: &Self::Stream, op: &BiasGelu<'_, Self>) -> Result<()>;
    /// See [`LayerNorm`].
    fn layer_norm(&self, stream: &Self::Stream, op: &LayerNorm<'_, Self>) -> Result<()>;
    /// See [`MaskedSoftmax`].
    fn masked_softmax(&self, stream: &Self::Stream, op: &MaskedSoftmax<'_, Self>) -> Result<()>;
    /// Elements of scratch (of the op's dtype) that [`Ops::attention`] needs for `shape`; 0 for a fused
    /// kernel.
    fn attention_scratch(&self, shape: &AttentionShape) -> usize {
        shape.probabilities()
    }
    /// See [`Attention`]. Provided: scores GEMM, masked softmax, context GEMM, with the probabilities
    /// in the scratch ([`unfused_attention`]).
    fn attention(&self, stream: &Self::Stream, op: &Attention<'_, Self>) -> Result<()> {
        unfused_attention(self, stream, op)
    }
    /// Whether a packed batch runs faster here than the same batch padded: true where
    /// [`Ops::attention_packed`] and [`Ops::mean_pool_packed`] are single kernels, or where a launch per
    /// sequence costs nothing (the CPU); false where each launch is a dispatch that costs more than the
    /// padding saves.
    fn prefers_packed(&self) -> bool {
        false
    }
    /// [`Attention`] over a packed batch (module doc): `op.qkv` is `[tokens, 3 * hidden]`, `op.mask` and
    /// `op.out` are `[tokens]` and `[tokens, hidden]`, `op.shape.batch` is the number of sequences and
    /// `op.shape.seq` the longest; the scratch is what [`Ops::attention_scratch`] asks for one sequence
    /// of the longest length. Provided: [`attention_by_sequence`].
    fn attention_packed(
        &self,
        stream: &Self::Stream,
        op: &Attention<'_, Self>,
        packing: &Packing<'_, Self>,
    ) -> Result<()> {
        attention_by_sequence(self, stream, op, packing)
    }
    /// See [`GatherRows`].
    fn gather_rows(&self, stream: &Self::Stream, op: &GatherRows<'_, Self>) -> Result<()>;
    /// See [`MeanPool`].
    fn mean_pool(&self, stream: &Self::Stream, op: &MeanPool<'_, Self>) -> Result<()>;
    /// [`MeanPool`] over a packed batch: `op.x` is `[tokens, dim]`, `op.mask` `[tokens]`, `op.batch` the
    /// number of sequences and `op.seq` the longest. Provided: [`mean_pool_by_sequence`].
    fn mean_pool_packed(
        &self,
        stream: &Self::Stream,
        op: &MeanPool<'_, Self>,
        packing: &Packing<'_, Self>,
    ) -> Result<()> {
        mean_pool_by_sequence(self, stream, op, packing)
    }
    /// See [`L2Normalize`].
    fn l2_normalize(&self, stream: &Self::Stream, op: &L2Normalize<'_, Self>) -> Result<()>;
    /// See [`Add`].
    fn add(&self, stream: &Self::Stream, op: &Add<'_, Self>) -> Result<()>;
}

/// [`Ops::attention`] from the other ops: the scores GEMM into the scratch (`[batch, heads, seq, seq]`),
/// the masked softmax in place, the context GEMM into `out`. The provided implementation, and the
/// fallback of a fused kernel for shapes it does not take.
pub fn unfused_attention<D: Ops>(
    device: &D,
    stream: &D::Stream,
    op: &Attention<'_, D>,
) -> Result<()> {
    let probs = op.scratch.ok_or_else(|| RuntimeError::Shape {
        op: "attention",
        detail: "the unfused attention needs a scratch tensor of probabilities".into(),
    })?;
    let shape = &op.shape;
    let element = op.dtype.size();
    let (scores, context) = shape.gemm_specs();
    device.gemm(
        stream,
        &Gemm {
            dtype: op.dtype,
            spec: scores,
            a: op.qkv,
            b: op.qkv.skip(shape.hidden() * element),
            c: probs,
            bias: None,
        },
    )?;
    device.masked_softmax(
        stream,
        &MaskedSoftmax {
            dtype: op.dtype,
            scores: probs,
            mask: op.mask,
            batch: shape.batch,
            heads: shape.heads,
            q_len: shape.seq,
            k_len: shape.seq,
            scale: 1.0,
        },
    )?;
    device.gemm(
        stream,
        &Gemm {
            dtype: op.dtype,
            spec: context,
            a: probs,
            b: op.qkv.skip(2 * shape.hidden() * element),
            c: op.out,
            bias: None,
        },
    )
}

/// [`Ops::attention_packed`] as one padded [`Ops::attention`] per sequence, each on its own rows of the
/// packed operands (and the same scratch, reused in stream order): the same arithmetic as the sequence
/// alone.
pub fn attention_by_sequence<D: Ops>(
    device: &D,
    stream: &D::Stream,
    op: &Attention<'_, D>,
    packing: &Packing<'_, D>,
) -> Result<()> {
    let element = op.dtype.size();
    let hidden = op.shape.hidden();
    for b in 0..packing.sequences() {
        let (first, len) = packing.span(b);
        if len == 0 {
            continue;
        }
        device.attention(
            stream,
            &Attention {
                dtype: op.dtype,
                shape: AttentionShape {
                    batch: 1,
                    seq: len,
                    ..op.shape
                },
                qkv: op.qkv.skip(first * 3 * hidden * element),
                mask: op.mask.skip(first * DType::F32.size()),
                out: op.out.skip(first * hidden * element),
                scratch: op.scratch,
            },
        )?;
    }
    Ok(())
}

/// [`Ops::mean_pool_packed`] as one padded [`Ops::mean_pool`] per sequence.
pub fn mean_pool_by_sequence<D: Ops>(
    device: &D,
    stream: &D::Stream,
    op: &MeanPool<'_, D>,
    packing: &Packing<'_, D>,
) -> Result<()> {
    let element = op.dtype.size();
    for b in 0..packing.sequences() {
        let (first, len) = packing.span(b);
        device.mean_pool(
            stream,
            &MeanPool {
                dtype: op.dtype,
                x: op.x.skip(first * op.dim * element),
                mask: op.mask.skip(first * DType::F32.size()),
                batch: 1,
                seq: len,
                dim: op.dim,
                out: op.out.skip(b * op.dim * element),
            },
        )?;
    }
    Ok(())
}
