//! [`Tensor`] (a buffer, a shape and a dtype) and the tensor ops of [`Runtime`], which validate shapes
//! once for every backend and encode on the calling thread's current stream.
//!
//! Every output is a fresh buffer from the caching allocator, allocated for the current stream; a
//! tensor's buffer returns to the allocator when the tensor is dropped, so an intermediate's memory is
//! reusable by the next op as soon as it is dead. Inputs are expected on the current stream; a tensor
//! used on another stream must be marked with [`Tensor::record_stream`] first (the allocator's
//! stream-ordered contract).

use crate::ops::{AttentionShape, GemmSpec, MatStrides, Ops};
use crate::{Buffer, DType, Device, Result, Runtime, RuntimeError, Stream};

/// A dense tensor on a device.
pub struct Tensor<D: Device> {
    buffer: Buffer<D>,
    shape: Vec<usize>,
    dtype: DType,
}

impl<D: Device> Tensor<D> {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The underlying buffer.
    pub fn buffer(&self) -> &Buffer<D> {
        &self.buffer
    }

    /// Marks that `stream` uses this tensor (see [`Buffer::record_stream`]).
    pub fn record_stream(&mut self, stream: Stream<D>) {
        self.buffer.record_stream(stream);
    }

    /// The same data seen with another shape of the same element count.
    pub fn reshape(self, shape: &[usize]) -> Result<Self> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(RuntimeError::Shape {
                op: "reshape",
                detail: format!(
                    "cannot view {:?} as {:?}: element counts differ",
                    self.shape, shape
                ),
            });
        }
        Ok(Self {
            shape: shape.to_vec(),
            ..self
        })
    }

    fn ptr(&self) -> crate::DevicePtr {
        self.buffer.ptr()
    }
}

impl<D: Device> std::fmt::Debug for Tensor<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.dtype)
    }
}

fn shape_error(op: &'static str, detail: String) -> RuntimeError {
    RuntimeError::Shape { op, detail }
}

/// The one float dtype that every tensor of an op has (f32, f16 or bf16); whether the backend computes
/// in it is the backend's answer (`Unsupported`).
fn float_dtype<'a, D: Device + 'a>(
    op: &'static str,
    tensors: impl IntoIterator<Item = &'a Tensor<D>>,
) -> Result<DType> {
    let mut tensors = tensors.into_iter();
    let dtype = tensors
        .next()
        .expect("every op passes at least one tensor")
        .dtype;
    if dtype == DType::U32 {
        return Err(shape_error(op, "u32 tensors hold ids, not values".into()));
    }
    match tensors.find(|t| t.dtype != dtype) {
        Some(t) => Err(shape_error(
            op,
            format!(
                "operands are {dtype} and {}: an op takes one float dtype (masks f32)",
                t.dtype
            ),
        )),
        None => Ok(dtype),
    }
}

/// A mask must be f32 (1.0 keep, 0.0 masked) whatever the compute dtype.
fn expect_f32_mask<D: Device>(op: &'static str, mask: &Tensor<D>) -> Result<()> {
    if mask.dtype == DType::F32 {
        Ok(())
    } else {
        Err(shape_error(
            op,
            format!(
                "the mask is {}; masks are f32 (1.0 keep, 0.0 masked)",
                mask.dtype
            ),
        ))
    }
}

/// The last dimension and the product of the others.
fn rows_cols(shape: &[usize]) -> (usize, usize) {
    let cols = shape.last().copied().unwrap_or(1);
    (shape.iter().rev().skip(1).product(), cols)
}

impl<D: Ops> Runtime<D> {
    /// Runs `encode` on the current stream's native stream, then applies the commit policy.
    fn encode(&self, encode: impl FnOnce(&D, &D::Stream) -> Result<()>) -> Result<()> {
        let stream = self.current_stream()?;
        encode(self.device(), stream.raw()?)?;
        stream.encoded()
    }

    /// An uninitialised tensor.
    pub fn empty(&self, shape: &[usize], dtype: DType) -> Result<Tensor<D>> {
        let bytes = shape.iter().product::<usize>() * dtype.size();
        Ok(Tensor {
            buffer: self.alloc(bytes)?,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// A tensor filled with `value`.
    pub fn full(&self, shape: &[usize], value: f32) -> Result<Tensor<D>> {
        let t = self.empty(shape, DType::F32)?;
        self.encode(|d, s| d.fill(s, t.ptr(), t.numel(), value))?;
        Ok(t)
    }

    /// A tensor holding a copy of `data` (f32), of `shape`.
    pub fn from_f32(&self, data: &[f32], shape: &[usize]) -> Result<Tensor<D>> {
        self.upload(bytes_of(data), data.len(), shape, DType::F32)
    }

    /// A tensor of `dtype` (f32, f16 or bf16) holding `data` converted on the host (round to
    /// nearest even), of `shape`: how f32 weights become f16 or bf16 ones.
    pub fn from_f32_as(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor<D>> {
        match dtype {
            DType::F32 => self.from_f32(data, shape),
            DType::F16 => {
                let half: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
                self.upload(bytes_of(&half), data.len(), shape, dtype)
            }
            DType::BF16 => {
                let half: Vec<half::bf16> = data.iter().map(|&v| half::bf16::from_f32(v)).collect();
                self.upload(bytes_of(&half), data.len(), shape, dtype)
            }
            DType::U32 => Err(shape_error(
                "from_f32_as",
                "u32 tensors hold ids: use from_u32".into(),
            )),
        }
    }

    /// A tensor holding a copy of `data` (u32: token ids), of `shape`.
    pub fn from_u32(&self, data: &[u32], shape: &[usize]) -> Result<Tensor<D>> {
        self.upload(bytes_of(data), data.len(), shape, DType::U32)
    }

    fn upload(&self, bytes: &[u8], len: usize, shape: &[usize], dtype: DType) -> Result<Tensor<D>> {
        if shape.iter().product::<usize>() != len {
            return Err(shape_error(
                "upload",
                format!("{len} elements given for shape {shape:?}"),
            ));
        }
        let t = self.empty(shape, dtype)?;
        self.encode(|d, s| d.copy_from_host(s, bytes, t.ptr()))?;
        Ok(t)
    }

    /// Copies a float tensor to the host as f32 (f16 and bf16 widened exactly), after the current
    /// stream's work so far.
    pub fn to_vec_f32(&self, t: &Tensor<D>) -> Result<Vec<f32>> {
        let dtype = float_dtype("download", [t])?;
        let stream = self.current_stream()?;
        let raw = stream.raw()?;
        if dtype == DType::F32 {
            let mut out = vec![0f32; t.numel()];
            self.device()
                .copy_to_host(raw, t.ptr(), bytes_of_mut(&mut out))?;
            return Ok(out);
        }
        let mut bits = vec![0u16; t.numel()];
        self.device()
            .copy_to_host(raw, t.ptr(), bytes_of_mut(&mut bits))?;
        Ok(match dtype {
            DType::F16 => bits
                .iter()
                .map(|&b| half::f16::from_bits(b).to_f32())
                .collect(),
            _ => bits
                .iter()
                .map(|&b| half::bf16::from_bits(b).to_f32())
                .collect(),
        })
    }

    /// The (batched) product described by `spec` into a new tensor of `out_shape`, plus `bias[n]` per
    /// row. The strides must stay inside each operand (checked).
    pub fn gemm(
        &self,
        spec: &GemmSpec,
        a: &Tensor<D>,
        b: &Tensor<D>,
        bias: Option<&Tensor<D>>,
        out_shape: &[usize],
    ) -> Result<Tensor<D>> {
        let dtype = float_dtype("gemm", [a, b].into_iter().chain(bias))?;
        let (a_len, b_len, c_len) = spec.extents();
        let out_len: usize = out_shape.iter().product();
        for (name, need, have) in [
            ("A", a_len, a.numel()),
            ("B", b_len, b.numel()),
            ("C", c_len, out_len),
        ] {
            if need > have {
                return Err(shape_error(
                    "gemm",
                    format!("operand {name} spans {need} elements but has {have} ({spec:?})"),
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
                dtype,
                spec,
                a.ptr(),
                b.ptr(),
                out.ptr(),
                bias.map(Tensor::ptr),
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

    /// `x = gelu(x + bias)` in place over the last dimension (`tanh` selects the tanh approximation).
    pub fn bias_gelu(&self, x: &mut Tensor<D>, bias: &Tensor<D>, tanh: bool) -> Result<()> {
        let dtype = float_dtype("bias_gelu", [&*x, bias])?;
        let (rows, cols) = rows_cols(&x.shape);
        if bias.numel() != cols {
            return Err(shape_error(
                "bias_gelu",
                format!("bias has {} elements, rows have {cols}", bias.numel()),
            ));
        }
        self.encode(|d, s| d.bias_gelu(s, dtype, x.ptr(), bias.ptr(), rows, cols, tanh))
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
                dtype,
                x.ptr(),
                bias.map(Tensor::ptr),
                residual.map(Tensor::ptr),
                gamma.ptr(),
                beta.ptr(),
                out.ptr(),
                rows,
                cols,
                eps,
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
                dtype,
                scores.ptr(),
                mask.ptr(),
                batch,
                heads,
                q,
                k,
                scale,
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
        let head_dim = width / (3 * heads);
        let shape = AttentionShape {
            batch,
            seq,
            heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
        };
        let out = self.empty(&[tokens, shape.hidden()], dtype)?;
        let scratch = match self.device().attention_scratch(&shape) {
            0 => None,
            elements => Some(self.empty(&[elements], dtype)?),
        };
        self.encode(|d, s| {
            d.attention(
                s,
                dtype,
                &shape,
                qkv.ptr(),
                mask.ptr(),
                out.ptr(),
                scratch.as_ref().map(Tensor::ptr),
            )
        })?;
        Ok(out)
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
        let (out, fresh) = match into {
            Some(out) => {
                float_dtype("gather_rows", [table, &*out])?;
                if out.shape != out_shape {
                    return Err(shape_error(
                        "gather_rows",
                        format!("accumulator is {:?}, expected {out_shape:?}", out.shape),
                    ));
                }
                (out.ptr(), None)
            }
            None => {
                let fresh = self.empty(&out_shape, dtype)?;
                (fresh.ptr(), Some(fresh))
            }
        };
        let accumulate = fresh.is_none();
        self.encode(|d, s| {
            d.gather_rows(
                s,
                dtype,
                table.ptr(),
                rows,
                ids.ptr(),
                n,
                dim,
                out,
                accumulate,
            )
        })?;
        Ok(fresh)
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
        self.encode(|d, s| d.mean_pool(s, dtype, x.ptr(), mask.ptr(), batch, seq, dim, out.ptr()))?;
        Ok(out)
    }

    /// Divides each row (last dimension) by its L2 norm, in place.
    pub fn l2_normalize(&self, x: &mut Tensor<D>) -> Result<()> {
        let dtype = float_dtype("l2_normalize", [&*x])?;
        let (rows, dim) = rows_cols(&x.shape);
        self.encode(|d, s| d.l2_normalize(s, dtype, x.ptr(), rows, dim))
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
        self.encode(|d, s| d.add(s, dtype, x.ptr(), y.ptr(), x.numel()))
    }
}

/// The bytes of a plain-old-data slice (f32, u32, f16 or bf16).
fn bytes_of<T: Copy>(data: &[T]) -> &[u8] {
    // SAFETY: T is f32, u32, f16 or bf16 here (no padding, every byte initialised); the length is the slice's size.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

fn bytes_of_mut<T: Copy>(data: &mut [T]) -> &mut [u8] {
    // SAFETY: T is f32 or u16 here: every byte pattern is a valid value; the length is the slice's size.
    unsafe {
        std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(data))
    }
}
