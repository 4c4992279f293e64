//! [`Tensor`] (a buffer, a shape and a dtype), how tensors are made, uploaded and downloaded
//! ([`TensorDownload`]: the non-blocking kind), and — in `ops` — the tensor ops of [`Runtime`], which
//! validate shapes once for every backend and encode one op descriptor on the current stream.
//!
//! Every output is a fresh buffer from the caching allocator, allocated for the current stream; a
//! tensor's buffer returns to the allocator when the tensor is dropped, so an intermediate's memory is
//! reusable by the next op as soon as it is dead. Inputs are expected on the current stream; a tensor
//! used on another stream must be marked with [`Tensor::record_stream`] first (the allocator's
//! stream-ordered contract).

use crate::alloc::Buffer;
use crate::device::{DType, Device, View};
use crate::error::{Result, RuntimeError};
use crate::ops::{Fill, Ops};
use crate::runtime::Runtime;
use crate::stream::Stream;

mod ops;
mod packed;

pub use self::ops::GemmOperand;
pub use self::packed::PackedSequences;

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
    pub fn record_stream(&mut self, stream: Stream<'_, D>) -> Result<()> {
        self.buffer.record_stream(stream)
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

    /// The tensor's bytes, as ops take them.
    pub fn view(&self) -> View<'_, D> {
        self.buffer.view()
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
        self.encode(|d, s| {
            d.fill(
                s,
                &Fill {
                    dst: t.view(),
                    len: t.numel(),
                    value,
                },
            )
        })?;
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
        self.encode(|d, s| d.copy_from_host(s, bytes, t.view()))?;
        Ok(t)
    }

    /// Copies `data` into the existing tensor `t` (u32 or f32, `data.len()` = its elements) on the
    /// current stream: how a graph's fixed input tensors get each call's values.
    pub fn write_u32(&self, t: &Tensor<D>, data: &[u32]) -> Result<()> {
        if t.dtype.size() != 4 || t.numel() != data.len() {
            return Err(shape_error(
                "write_u32",
                format!("{} u32 values for a {t:?}", data.len()),
            ));
        }
        self.encode(|d, s| d.copy_from_host(s, bytes_of(data), t.view()))
    }

    /// Copies the bytes of `src` from byte `src_offset` on into the whole of `dst` (device to device,
    /// on the current stream; element types are not checked, only the byte ranges): how a packed
    /// tensor is split into several.
    pub fn copy_bytes(&self, src: &Tensor<D>, src_offset: usize, dst: &Tensor<D>) -> Result<()> {
        let bytes = dst.view().len;
        if src_offset
            .checked_add(bytes)
            .is_none_or(|end| end > src.view().len)
        {
            return Err(shape_error(
                "copy_bytes",
                format!("{bytes} bytes from byte {src_offset} of a {src:?}"),
            ));
        }
        let from = src.view().skip(src_offset);
        let from = View { len: bytes, ..from };
        self.encode(|d, s| d.copy_device(s, from, dst.view()))
    }

    /// Starts copying a float tensor to the host after the current stream's work so far and returns
    /// at once (the contract's non-blocking download): the stream can take the next batch's work while
    /// this one comes down. [`TensorDownload::wait`] gives the values. The tensor may be dropped at
    /// once: its memory is reused only by work ordered after the copy.
    pub fn download(&self, t: &Tensor<D>) -> Result<TensorDownload<D>> {
        let dtype = float_dtype("download", [t])?;
        let stream = self.current_stream()?;
        let pending = self.device().download(stream.raw()?, t.view())?;
        Ok(TensorDownload {
            device: self.device().clone(),
            pending,
            dtype,
            numel: t.numel(),
        })
    }

    /// Copies a float tensor to the host as f32 (f16 and bf16 widened exactly), after the current
    /// stream's work so far: [`Runtime::download`], waited for.
    pub fn to_vec_f32(&self, t: &Tensor<D>) -> Result<Vec<f32>> {
        self.download(t)?.wait()
    }
}

/// A tensor on its way to the host ([`Runtime::download`]).
pub struct TensorDownload<D: Device> {
    device: D,
    pending: D::Download,
    dtype: DType,
    numel: usize,
}

impl<D: Device> TensorDownload<D> {
    /// Whether the copy has run (never blocks).
    pub fn is_ready(&self) -> Result<bool> {
        self.device.download_ready(&self.pending)
    }

    /// Waits for the copy and returns the values as f32 (f16 and bf16 widened exactly); reports a
    /// failure of the stream's work before the copy.
    pub fn wait(self) -> Result<Vec<f32>> {
        if self.dtype == DType::F32 {
            let mut out = vec![0f32; self.numel];
            self.device
                .finish_download(self.pending, bytes_of_mut(&mut out))?;
            return Ok(out);
        }
        let mut bits = vec![0u16; self.numel];
        self.device
            .finish_download(self.pending, bytes_of_mut(&mut bits))?;
        Ok(match self.dtype {
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
