//! [`Ops`]: the op set every backend implements — what a transformer encoder needs — and the
//! backend-neutral argument types ([`GemmSpec`], [`MatStrides`]).
//!
//! Ops are encoded on a native stream and run in stream order; none blocks the host. Arguments are raw
//! device addresses and element counts of f32 data: the tensor layer ([`crate::Runtime`]) has already
//! checked shapes, dtypes and sizes, so a backend may trust them (wgpu-hal's rule: validation is the
//! caller's job). f16/bf16 variants come with the CUDA backend.

use crate::{Device, DevicePtr, Result};

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

/// The op set, encoded on `stream`; all data f32 (module doc).
pub trait Ops: Device {
    /// `dst[..len] = value`.
    fn fill(&self, stream: &Self::Stream, dst: DevicePtr, len: usize, value: f32) -> Result<()>;
    /// The product described by `spec`, plus `bias[n]` added to every row of C when given.
    fn gemm(
        &self,
        stream: &Self::Stream,
        spec: &GemmSpec,
        a: DevicePtr,
        b: DevicePtr,
        c: DevicePtr,
        bias: Option<DevicePtr>,
    ) -> Result<()>;
    /// `x[r, c] = gelu(x[r, c] + bias[c])` over `rows x cols` (exact erf GELU, or tanh when `tanh`).
    fn bias_gelu(
        &self,
        stream: &Self::Stream,
        x: DevicePtr,
        bias: DevicePtr,
        rows: usize,
        cols: usize,
        tanh: bool,
    ) -> Result<()>;
    /// `out[r] = LayerNorm(x[r] + residual[r]) * gamma + beta` over `rows x cols`.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &self,
        stream: &Self::Stream,
        x: DevicePtr,
        residual: Option<DevicePtr>,
        gamma: DevicePtr,
        beta: DevicePtr,
        out: DevicePtr,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()>;
    /// In-place `softmax(scale * scores)` over the last axis of `[batch, heads, q_len, k_len]`, where
    /// keys with `mask[b, j] == 0` get probability 0 (`mask` is `[batch, k_len]`).
    #[allow(clippy::too_many_arguments)]
    fn masked_softmax(
        &self,
        stream: &Self::Stream,
        scores: DevicePtr,
        mask: DevicePtr,
        batch: usize,
        heads: usize,
        q_len: usize,
        k_len: usize,
        scale: f32,
    ) -> Result<()>;
    /// `out[i] (+)= table[ids[i]]` for `n_ids` rows of `dim`; ids are u32 and `< table_rows`.
    #[allow(clippy::too_many_arguments)]
    fn gather_rows(
        &self,
        stream: &Self::Stream,
        table: DevicePtr,
        table_rows: usize,
        ids: DevicePtr,
        n_ids: usize,
        dim: usize,
        out: DevicePtr,
        accumulate: bool,
    ) -> Result<()>;
    /// Masked mean over `seq` of `x [batch, seq, dim]` into `out [batch, dim]`.
    #[allow(clippy::too_many_arguments)]
    fn mean_pool(
        &self,
        stream: &Self::Stream,
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
        x: DevicePtr,
        rows: usize,
        dim: usize,
    ) -> Result<()>;
    /// `x[..len] += y[..len]`.
    fn add(&self, stream: &Self::Stream, x: DevicePtr, y: DevicePtr, len: usize) -> Result<()>;
}
