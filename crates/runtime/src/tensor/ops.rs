//! The tensor ops of [`Runtime`]: each checks shapes and dtypes once, for every backend, allocates
//! its output on the current stream and encodes one op descriptor there.

use super::{expect_f32_mask, float_dtype, rows_cols, shape_error, Tensor};
use crate::device::Device;
use crate::device::{DType, View};
use crate::error::Result;
use crate::ops::{
    Accumulate, Add, Attention, AttentionShape, BiasGelu, GatherRows, Gelu, Gemm, GemmSpec,
    L2Normalize, LayerNorm, MaskedSoftmax, MatStrides, MeanPool, Ops,
};
use crate::runtime::Runtime;

/// An operand of [`Runtime::gemm`]: a tensor read from element `offset` on, so an operand can sit
/// inside a fused tensor (K inside `[Q | K | V]`). A `&Tensor` is the operand from its first element.
pub struct GemmOperand<'t, D: Device> {
    tensor: &'t Tensor<D>,
    offset: usize,
}

impl<D: Device> Clone for GemmOperand<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D: Device> Copy for GemmOperand<'_, D> {}

impl<'t, D: Device> From<&'t Tensor<D>> for GemmOperand<'t, D> {
    fn from(tensor: &'t Tensor<D>) -> Self {
        Self { tensor, offset: 0 }
    }
}

impl<D: Device> Tensor<D> {
    /// This tensor as a [`Runtime::gemm`] operand whose layout starts `offset` elements in.
    pub fn starting_at(&self, offset: usize) -> GemmOperand<'_, D> {
        GemmOperand {
            tensor: self,
            offset,
        }
    }
}

impl<'t, D: Device> GemmOperand<'t, D> {
    /// Elements from the operand's start to the tensor's end.
    fn available(&self) -> usize {
        self.tensor.numel().saturating_sub(self.offset)
    }

    fn view(&self) -> View<'t, D> {
        self.tensor
            .view()
            .skip(self.offset * self.tensor.dtype.size())
    }
}

impl<D: Ops> Runtime<D> {
    /// The (batched) product described by `spec` into a new tensor of `out_shape`, plus `bias[n]` per
    /// row. The strides must stay inside each operand, from its offset on (checked).
    pub fn gemm<'t>(
        &self,
        spec: &GemmSpec,
        a: impl Into<GemmOperand<'t, D>>,
        b: impl Into<GemmOperand<'t, D>>,
        bias: Option<&Tensor<D>>,
        out_shape: &[usize],
    ) -> Result<Tensor<D>> {
        let (a, b) = (a.into(), b.into());
        let dtype = float_dtype("gemm", [a.tensor, b.tensor].into_iter().chain(bias))?;
        let (a_len, b_len, c_len) = spec.extents();
        let out_len: usize = out_shape.iter().product();
        for (name, need, have) in [
            ("A", a_len, a.available()),
            ("B", b_len, b.available()),
            ("C", c_len, out_len),
        ] {
            if need > have {
                return Err(shape_error(
                    "gemm",
                    format!(
                        "operand {name} spans {need} elements but has {have} from its offset ({spec:?})"
                    ),
                ));
            }
        }
        if let Some(bias) = bias {
            if bias.numel() != spec.n {
                return Err(shape_error(
                    "gemm",
                    format!("bias has {} elements, n is {}", bias.numel(), spec.n),
                ));
            }
        }
        let out = self.empty(out_shape, dtype)?;
        self.encode(|d, s| {
            d.gemm(
                s,
                &Gemm {
                    dtype,
                    spec: *spec,
                    a: a.view(),
                    b: b.view(),
                    c: out.view(),
                    bias: bias.map(Tensor::view),
                },
            )
        })?;
        Ok(out)
    }

    /// `x [.., in] · weight[out, in]ᵀ + bias[out]` (a PyTorch `Linear`).
    pub fn linear(
        &self,
        x: &Tensor<D>,
        weight: &Tensor<D>,
        bias: Option<&Tensor<D>>,
    ) -> Result<Tensor<D>> {
        let (rows, k) = rows_cols(&x.shape);
        let [n, wk] = weight.shape[..] else {
            return Err(shape_error(
                "linear",
                format!("weight must be 2-D, got {:?}", weight.shape),
            ));
        };
        if wk != k {
            return Err(shape_error(
                "linear",
                format!(
                    "input {:?} has {k} features, weight {:?} expects {wk}",
                    x.shape, weight.shape
                ),
            ));
        }
        let spec = GemmSpec {
            m: rows,
            n,
            k,
            batch: [1, 1],
            a: MatStrides::row_major(k),
            b: MatStrides::transposed(k),
            c: MatStrides::row_major(n),
            alpha: 1.0,
            beta: 0.0,
        };
        let mut out_shape = x.shape.clone();
        *out_shape
            .last_mut()
            .expect("rows_cols checked a last dimension") = n;
        self.gemm(&spec, x, weight, bias, &out_shape)
    }

    /// `x = gelu(x + bias)` in place over the last dimension.
    pub fn bias_gelu(&self, x: &mut Tensor<D>, bias: &Tensor<D>, gelu: Gelu) -> Result<()> {
        let dtype = float_dtype("bias_gelu", [&*x, bias])?;
        let (rows, cols) = rows_cols(&x.shape);
        if bias.numel() != cols {
            return Err(shape_error(
                "bias_gelu",
                format!("bias has {} elements, rows have {cols}", bias.numel()),
            ));
        }
        self.encode(|d, s| {
            d.bias_gelu(
                s,
                &BiasGelu {
                    dtype,
                    x: x.view(),
                    bias: bias.view(),
                    rows,
                    cols,
                    gelu,
                },
            )
        })
    }

    /// `LayerNorm(x + bias + residual) * gamma + beta` over the last dimension, into a new tensor
    /// (`bias [cols]`, e.g. the bias of the linear that made `x`, and `residual` are optional).
    pub fn layer_norm(
        &self,
        x: &Tensor<D>,
        bias: Option<&Tensor<D>>,
        residual: Option<&Tensor<D>>,
        gamma: &Tensor<D>,
        beta: &Tensor<D>,
        eps: f32,
    ) -> Result<Tensor<D>> {
        let operands = [x, gamma, beta].into_iter().chain(bias).chain(residual);
        let dtype = float_dtype("layer_norm", operands)?;
        let (rows, cols) = rows_cols(&x.shape);
        if let Some(r) = residual {
            if r.shape != x.shape {
                return Err(shape_error(
                    "layer_norm",
                    format!("residual {:?} differs from input {:?}", r.shape, x.shape),
                ));
            }
        }
        if gamma.numel() != cols || beta.numel() != cols || bias.is_some_and(|b| b.numel() != cols)
        {
            return Err(shape_error(
                "layer_norm",
                format!("gamma, beta and bias must have {cols} elements"),
            ));
        }
        let out = self.empty(&x.shape, dtype)?;
        self.encode(|d, s| {
            d.layer_norm(
                s,
                &LayerNorm {
                    dtype,
                    x: x.view(),
                    bias: bias.map(Tensor::view),
                    residual: residual.map(Tensor::view),
                    gamma: gamma.view(),
                    beta: beta.view(),
                    out: out.view(),
                    rows,
                    cols,
                    eps,
                },
            )
        })?;
        Ok(out)
    }

    /// In-place masked softmax of `scores [batch, heads, q, k]` with `mask [batch, k]` (see [`Ops::masked_softmax`]).
    pub fn masked_softmax(
        &self,
        scores: &mut Tensor<D>,
        mask: &Tensor<D>,
        scale: f32,
    ) -> Result<()> {
        let dtype = float_dtype("masked_softmax", [&*scores])?;
        expect_f32_mask("masked_softmax", mask)?;
        let [batch, heads, q, k] = scores.shape[..] else {
            return Err(shape_error(
                "masked_softmax",
                format!(
                    "scores must be [batch, heads, q, k], got {:?}",
                    scores.shape
                ),
            ));
        };
        if mask.shape != [batch, k] {
            return Err(shape_error(
                "masked_softmax",
                format!("mask must be [{batch}, {k}], got {:?}", mask.shape),
            ));
        }
        self.encode(|d, s| {
            d.masked_softmax(
                s,
                &MaskedSoftmax {
                    dtype,
                    scores: scores.view(),
                    mask: mask.view(),
                    batch,
                    heads,
                    q_len: q,
                    k_len: k,
                    scale,
                },
            )
        })
    }

    /// Multi-head self-attention of `qkv [batch * seq, 3 * hidden]` (Q | K | V per token, as one fused
    /// linear makes it) with `mask [batch, seq]`, into the context `[batch * seq, hidden]` (heads side
    /// by side), scores scaled by `1 / sqrt(head_dim)`. See [`Ops::attention`].
    pub fn attention(&self, qkv: &Tensor<D>, mask: &Tensor<D>, heads: usize) -> Result<Tensor<D>> {
        let dtype = float_dtype("attention", [qkv])?;
        expect_f32_mask("attention", mask)?;
        let [batch, seq] = mask.shape[..] else {
            return Err(shape_error(
                "attention",
                format!("mask must be [batch, seq], got {:?}", mask.shape),
            ));
        };
        let (tokens, width) = rows_cols(&qkv.shape);
        if tokens != batch * seq || heads == 0 || width % (3 * heads) != 0 {
            return Err(shape_error(
                "attention",
                format!(
                    "qkv must be [{batch} * {seq}, 3 * hidden] with hidden a multiple of {heads} \
                     heads, got {:?}",
                    qkv.shape
                ),
            ));
        }
        let shape = AttentionShape::new(batch, seq, heads, width / (3 * heads));
        let (out, scratch) = self.attention_outputs(&shape, batch, tokens, dtype)?;
        self.encode(|d, s| {
            d.attention(
                s,
                &Attention {
                    dtype,
                    shape,
                    qkv: qkv.view(),
                    mask: mask.view(),
                    out: out.view(),
                    scratch: scratch.as_ref().map(Tensor::view),
                },
            )
        })?;
        Ok(out)
    }

    /// The context `[tokens, hidden]` of an attention of `shape`, and the scratch the device asks for
    /// `scratch_batch` of its sequences at once (all of them padded; one, packed: one at a time).
    pub(super) fn attention_outputs(
        &self,
        shape: &AttentionShape,
        scratch_batch: usize,
        tokens: usize,
        dtype: DType,
    ) -> Result<(Tensor<D>, Option<Tensor<D>>)> {
        let out = self.empty(&[tokens, shape.hidden()], dtype)?;
        let scratch_shape = AttentionShape {
            batch: scratch_batch,
            ..*shape
        };
        let scratch = match self.device().attention_scratch(&scratch_shape) {
            0 => None,
            elements => Some(self.empty(&[elements], dtype)?),
        };
        Ok((out, scratch))
    }

    /// Rows of `table [rows, dim]` picked by `ids` (u32), into a new `[ids.., dim]` tensor, or added
    /// into `into` when given.
    pub fn gather_rows(
        &self,
        table: &Tensor<D>,
        ids: &Tensor<D>,
        into: Option<&mut Tensor<D>>,
    ) -> Result<Option<Tensor<D>>> {
        let dtype = float_dtype("gather_rows", [table])?;
        if ids.dtype != DType::U32 {
            return Err(shape_error(
                "gather_rows",
                format!("ids must be u32, got {}", ids.dtype),
            ));
        }
        let [rows, dim] = table.shape[..] else {
            return Err(shape_error(
                "gather_rows",
                format!("table must be 2-D, got {:?}", table.shape),
            ));
        };
        let n = ids.numel();
        let mut out_shape = ids.shape.clone();
        out_shape.push(dim);
        if let Some(out) = &into {
            float_dtype("gather_rows", [table, &**out])?;
            if out.shape != out_shape {
                return Err(shape_error(
                    "gather_rows",
                    format!("accumulator is {:?}, expected {out_shape:?}", out.shape),
                ));
            }
        }
        let gather = |out: View<'_, D>, mode: Accumulate| {
            self.encode(|d, s| {
                d.gather_rows(
                    s,
                    &GatherRows {
                        dtype,
                        table: table.view(),
                        table_rows: rows,
                        ids: ids.view(),
                        n_ids: n,
                        dim,
                        out,
                        mode,
                    },
                )
            })
        };
        match into {
            Some(into) => gather(into.view(), Accumulate::Add).map(|()| None),
            None => {
                let fresh = self.empty(&out_shape, dtype)?;
                gather(fresh.view(), Accumulate::Overwrite)?;
                Ok(Some(fresh))
            }
        }
    }

    /// Masked mean over the sequence of `x [batch, seq, dim]` with `mask [batch, seq]`, into `[batch, dim]`.
    pub fn mean_pool(&self, x: &Tensor<D>, mask: &Tensor<D>) -> Result<Tensor<D>> {
        let dtype = float_dtype("mean_pool", [x])?;
        expect_f32_mask("mean_pool", mask)?;
        let [batch, seq, dim] = x.shape[..] else {
            return Err(shape_error(
                "mean_pool",
                format!("x must be [batch, seq, dim], got {:?}", x.shape),
            ));
        };
        if mask.shape != [batch, seq] {
            return Err(shape_error(
                "mean_pool",
                format!("mask must be [{batch}, {seq}], got {:?}", mask.shape),
            ));
        }
        let out = self.empty(&[batch, dim], dtype)?;
        self.encode(|d, s| {
            d.mean_pool(
                s,
                &MeanPool {
                    dtype,
                    x: x.view(),
                    mask: mask.view(),
                    batch,
                    seq,
                    dim,
                    out: out.view(),
                },
            )
        })?;
        Ok(out)
    }

    /// Divides each row (last dimension) by its L2 norm, in place.
    pub fn l2_normalize(&self, x: &mut Tensor<D>) -> Result<()> {
        let dtype = float_dtype("l2_normalize", [&*x])?;
        let (rows, dim) = rows_cols(&x.shape);
        self.encode(|d, s| {
            d.l2_normalize(
                s,
                &L2Normalize {
                    dtype,
                    x: x.view(),
                    rows,
                    dim,
                },
            )
        })
    }

    /// `x += y` elementwise (same shapes).
    pub fn add_assign(&self, x: &mut Tensor<D>, y: &Tensor<D>) -> Result<()> {
        let dtype = float_dtype("add", [&*x, y])?;
        if x.shape != y.shape {
            return Err(shape_error(
                "add",
                format!("shapes differ: {:?} and {:?}", x.shape, y.shape),
            ));
        }
        self.encode(|d, s| {
            d.add(
                s,
                &Add {
                    dtype,
                    x: x.view(),
                    y: y.view(),
                    len: x.numel(),
                },
            )
        })
    }
}
