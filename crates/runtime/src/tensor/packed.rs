//! Packed batches at the tensor layer: [`PackedSequences`] (where each sequence's tokens lie, on the
//! host and on the device) and the two ops that look across tokens in packed form,
//! [`Runtime::attention_packed`] and [`Runtime::mean_pool_packed`] (the `ops` module doc says why only
//! these two). Every other op runs on a packed `[tokens, ..]` matrix as on any other.

use super::{expect_f32_mask, float_dtype, rows_cols, shape_error, Tensor};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{Attention, AttentionShape, MeanPool, Ops, Packing};
use crate::runtime::Runtime;

/// The sequence boundaries of a packed batch: sequence `b` is rows `offsets[b]..offsets[b + 1]` of a
/// matrix of [`PackedSequences::rows`] rows; rows past the last sequence belong to none (a caller may
/// round the row count up so that products see few distinct shapes) and are never read into another
/// row's result. Made by [`Runtime::packed_sequences`], which checks the offsets once.
pub struct PackedSequences<D: Device> {
    host: Vec<u32>,
    device: Tensor<D>,
    longest: usize,
    rows: usize,
}

impl<D: Device> PackedSequences<D> {
    /// Sequences.
    pub fn sequences(&self) -> usize {
        self.host.len() - 1
    }

    /// Tokens of all sequences.
    pub fn tokens(&self) -> usize {
        *self
            .host
            .last()
            .expect("offsets hold at least one entry (checked)") as usize
    }

    /// Rows of the packed matrices: the tokens, and any rows after the last sequence.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The longest sequence's tokens.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// The offsets, `sequences + 1` of them.
    pub fn offsets(&self) -> &[u32] {
        &self.host
    }

    fn packing(&self) -> Packing<'_, D> {
        Packing {
            offsets: self.device.view(),
            host: &self.host,
        }
    }
}

impl<D: Ops> Runtime<D> {
    /// The boundaries of a packed batch of `rows` rows, uploaded on the current stream: `offsets`
    /// starts at 0, never decreases, ends at most at `rows` and has one entry more than there are
    /// sequences.
    pub fn packed_sequences(&self, offsets: &[u32], rows: usize) -> Result<PackedSequences<D>> {
        let valid = offsets.first() == Some(&0)
            && offsets.windows(2).all(|w| w[0] <= w[1])
            && offsets.last().is_some_and(|&end| end as usize <= rows);
        if !valid {
            return Err(shape_error(
                "packed_sequences",
                format!(
                    "offsets must start at 0, never decrease, end at most at the {rows} rows and have \
                     one entry more than there are sequences; got {} entries starting {:?}",
                    offsets.len(),
                    &offsets[..offsets.len().min(4)]
                ),
            ));
        }
        let longest = offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0);
        Ok(PackedSequences {
            device: self.from_u32(offsets, &[offsets.len()])?,
            host: offsets.to_vec(),
            longest,
            rows,
        })
    }

    /// [`Runtime::attention`] over a packed batch: `qkv [rows, 3 * hidden]`, `mask [rows]` (f32),
    /// context `[tokens, hidden]`; each sequence attends only to its own tokens. See
    /// [`Ops::attention_packed`].
    pub fn attention_packed(
        &self,
        qkv: &Tensor<D>,
        mask: &Tensor<D>,
        sequences: &PackedSequences<D>,
        heads: usize,
    ) -> Result<Tensor<D>> {
        let dtype = float_dtype("attention", [qkv])?;
        expect_f32_mask("attention", mask)?;
        let tokens = sequences.rows();
        let (rows, width) = rows_cols(&qkv.shape);
        if rows != tokens || mask.shape != [tokens] || heads == 0 || width % (3 * heads) != 0 {
            return Err(shape_error(
                "attention",
                format!(
                    "a packed batch of {tokens} rows needs qkv [{tokens}, 3 * hidden] with hidden a \
                     multiple of {heads} heads and mask [{tokens}], got {:?} and {:?}",
                    qkv.shape, mask.shape
                ),
            ));
        }
        let (batch, longest) = (sequences.sequences(), sequences.longest());
        let shape = AttentionShape::new(batch, longest, heads, width / (3 * heads));
        let (out, scratch) = self.attention_outputs(&shape, 1, tokens, dtype)?;
        self.encode(|d, s| {
            d.attention_packed(
                s,
                &Attention {
                    dtype,
                    shape,
                    qkv: qkv.view(),
                    mask: mask.view(),
                    out: out.view(),
                    scratch: scratch.as_ref().map(Tensor::view),
                },
                &sequences.packing(),
            )
        })?;
        Ok(out)
    }

    /// [`Runtime::mean_pool`] over a packed batch: `x [tokens, dim]`, `mask [tokens]` (f32), into
    /// `[sequences, dim]`. See [`Ops::mean_pool_packed`].
    pub fn mean_pool_packed(
        &self,
        x: &Tensor<D>,
        mask: &Tensor<D>,
        sequences: &PackedSequences<D>,
    ) -> Result<Tensor<D>> {
        let dtype = float_dtype("mean_pool", [x])?;
        expect_f32_mask("mean_pool", mask)?;
        let tokens = sequences.rows();
        let (rows, dim) = rows_cols(&x.shape);
        if rows != tokens || x.shape.len() != 2 || mask.shape != [tokens] {
            return Err(shape_error(
                "mean_pool",
                format!(
                    "a packed batch of {tokens} rows needs x [{tokens}, dim] and mask [{tokens}], \
                     got {:?} and {:?}",
                    x.shape, mask.shape
                ),
            ));
        }
        let batch = sequences.sequences();
        let out = self.empty(&[batch, dim], dtype)?;
        self.encode(|d, s| {
            d.mean_pool_packed(
                s,
                &MeanPool {
                    dtype,
                    x: x.view(),
                    mask: mask.view(),
                    batch,
                    seq: sequences.longest(),
                    dim,
                    out: out.view(),
                },
                &sequences.packing(),
            )
        })?;
        Ok(out)
    }
}
