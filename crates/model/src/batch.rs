//! The two layouts of a batch of encodings: [`pad_batch`] makes one rectangular, row-major batch
//! ([`PaddedBatch`]); [`pack_batch`] puts every sequence's tokens one after another with no padding
//! ([`PackedBatch`]), so no linear layer computes a padded token. [`TokenBatch`] is either, as a device
//! prefers it ([`TokenBatch::new`]).
//!
//! Promise for a `PaddedBatch` of `batch` rows and `seq` columns (`seq` = the longest encoding):
//! every vector holds `batch * seq` entries, row `r` at `r * seq .. (r + 1) * seq`; a real token
//! has its id, its type id, mask 1.0 and position equal to its column; a padding slot (after the
//! row's last token) has `pad_id`, type id 0, mask 0.0 and position 0. Positions restart at 0 in
//! every row, so a padded row computes the same states for its real tokens as it would alone.

use crate::tokenizer::Encoding;

/// A padded batch of token ids and the tensors a BERT forward needs beside them.
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedBatch {
    /// Number of rows (inputs).
    pub batch: usize,
    /// Number of columns: the longest input's token count.
    pub seq: usize,
    /// Token ids, `batch * seq`, padding slots hold the pad id.
    pub ids: Vec<u32>,
    /// Token type ids, `batch * seq`, padding slots hold 0.
    pub type_ids: Vec<u32>,
    /// Attention mask, `batch * seq`: 1.0 for a real token, 0.0 for padding.
    pub mask: Vec<f32>,
    /// Position ids, `batch * seq`: `0..len` for a row's tokens, 0 for its padding.
    pub positions: Vec<u32>,
}

/// Pads `encodings` on the right to the longest one, filling with `pad_id`.
pub fn pad_batch(encodings: &[Encoding], pad_id: u32) -> PaddedBatch {
    let batch = encodings.len();
    let seq = encodings.iter().map(Encoding::len).max().unwrap_or(0);
    let total = batch * seq;
    let mut out = PaddedBatch {
        batch,
        seq,
        ids: Vec::with_capacity(total),
        type_ids: Vec::with_capacity(total),
        mask: Vec::with_capacity(total),
        positions: Vec::with_capacity(total),
    };
    for encoding in encodings {
        assert_eq!(
            encoding.ids.len(),
            encoding.type_ids.len(),
            "invariant violated: an Encoding has as many type ids as ids"
        );
        let len = encoding.len();
        let pad = seq - len;
        out.ids.extend_from_slice(&encoding.ids);
        out.ids.extend(std::iter::repeat_n(pad_id, pad));
        out.type_ids.extend_from_slice(&encoding.type_ids);
        out.type_ids.extend(std::iter::repeat_n(0, pad));
        out.mask.extend(std::iter::repeat_n(1.0, len));
        out.mask.extend(std::iter::repeat_n(0.0, pad));
        // Token counts are at most max_seq_length, far below u32::MAX.
        out.positions.extend(0..len as u32);
        out.positions.extend(std::iter::repeat_n(0, pad));
    }
    out
}

/// The row count of a packed batch is rounded up to a multiple of this, with rows that belong to no
/// sequence: the products then see few distinct shapes (a backend may plan each shape once — cuBLASLt
/// does — and a server's batches would otherwise all differ), at a cost of under 64 rows a batch.
pub const PACKED_ROW_MULTIPLE: usize = 64;

/// A packed batch: the tokens of every sequence one after another, sequence `b` at
/// `offsets[b]..offsets[b + 1]`; positions restart at 0 in every sequence. No sequence is padded; the
/// rows after the last one, up to a multiple of [`PACKED_ROW_MULTIPLE`], hold the pad token.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedBatch {
    /// `sequences + 1` token offsets, from 0.
    pub offsets: Vec<u32>,
    /// Token ids of all sequences, then the trailing rows' pad ids.
    pub ids: Vec<u32>,
    /// Token type ids.
    pub type_ids: Vec<u32>,
    /// Position ids: `0..len` for each sequence.
    pub positions: Vec<u32>,
}

impl PackedBatch {
    /// Sequences.
    pub fn sequences(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Tokens of all sequences.
    pub fn tokens(&self) -> usize {
        self.offsets.last().map_or(0, |&t| t as usize)
    }

    /// Rows the forward computes: the tokens and the trailing rows.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// The longest sequence's tokens.
    pub fn longest(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0)
    }
}

/// The rows of a packed batch of `tokens` tokens: rounded up to a multiple of [`PACKED_ROW_MULTIPLE`].
fn packed_rows(tokens: usize) -> usize {
    tokens.div_ceil(PACKED_ROW_MULTIPLE) * PACKED_ROW_MULTIPLE
}

/// Packs `encodings` one after another, rows rounded up with `pad_id` (see [`PackedBatch`]).
pub fn pack_batch(encodings: &[Encoding], pad_id: u32) -> PackedBatch {
    let tokens: usize = encodings.iter().map(Encoding::len).sum();
    let rows = packed_rows(tokens);
    let mut out = PackedBatch {
        offsets: Vec::with_capacity(encodings.len() + 1),
        ids: Vec::with_capacity(rows),
        type_ids: Vec::with_capacity(rows),
        positions: Vec::with_capacity(rows),
    };
    out.offsets.push(0);
    for encoding in encodings {
        // Token counts are at most max_seq_length, and a batch's tokens far below u32::MAX (the engine
        // bounds a batch in tokens; a caller's batch is bounded by memory long before).
        out.ids.extend_from_slice(&encoding.ids);
        out.type_ids.extend_from_slice(&encoding.type_ids);
        out.positions.extend(0..encoding.len() as u32);
        out.offsets.push(out.ids.len() as u32);
    }
    out.ids.resize(rows, pad_id);
    out.type_ids.resize(rows, 0);
    out.positions.resize(rows, 0);
    out
}

/// A batch in the layout its device prefers.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenBatch {
    /// One rectangle (see [`pad_batch`]).
    Padded(PaddedBatch),
    /// No padding (see [`pack_batch`]).
    Packed(PackedBatch),
}

impl TokenBatch {
    /// `encodings` packed when `packed` (the device prefers packed batches) and packing computes fewer
    /// rows than padding (the packed rows rounded up to [`PACKED_ROW_MULTIPLE`] against sequences ×
    /// the longest: a few short sequences, or equal lengths, pad), else padded. An empty encoding
    /// (which a packed batch cannot hold) pads.
    pub fn new(encodings: &[Encoding], pad_id: u32, packed: bool) -> Self {
        let tokens: usize = encodings.iter().map(Encoding::len).sum();
        let longest = encodings.iter().map(Encoding::len).max().unwrap_or(0);
        let fewer_rows = packed_rows(tokens) < encodings.len() * longest;
        if packed && fewer_rows && encodings.iter().all(|e| !e.is_empty()) {
            Self::Packed(pack_batch(encodings, pad_id))
        } else {
            Self::Padded(pad_batch(encodings, pad_id))
        }
    }

    /// Sequences.
    pub fn sequences(&self) -> usize {
        match self {
            Self::Padded(b) => b.batch,
            Self::Packed(b) => b.sequences(),
        }
    }

    /// Token rows the forward computes: real and padded (padded), or real and the trailing rows
    /// (packed).
    pub fn computed_tokens(&self) -> usize {
        match self {
            Self::Padded(b) => b.batch * b.seq,
            Self::Packed(b) => b.rows(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(ids: &[u32], type_ids: &[u32]) -> Encoding {
        Encoding {
            ids: ids.to_vec(),
            type_ids: type_ids.to_vec(),
        }
    }

    #[test]
    fn pads_to_the_longest_row() {
        let b = pad_batch(
            &[
                enc(&[101, 7, 102], &[0, 0, 0]),
                enc(&[101, 102], &[0, 1]),
                enc(&[101, 5, 6, 7, 102], &[0; 5]),
            ],
            0,
        );
        assert_eq!((b.batch, b.seq), (3, 5));
        #[rustfmt::skip]
        let expect_ids = [
            101, 7, 102, 0, 0,
            101, 102, 0, 0, 0,
            101, 5, 6, 7, 102,
        ];
        assert_eq!(b.ids, expect_ids);
        assert_eq!(b.type_ids, [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            b.mask,
            [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
        );
        assert_eq!(b.positions, [0, 1, 2, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn uses_the_given_pad_id() {
        let b = pad_batch(&[enc(&[1], &[0]), enc(&[1, 2, 3], &[0, 0, 0])], 9);
        assert_eq!(b.ids, [1, 9, 9, 1, 2, 3]);
    }

    #[test]
    fn one_row_needs_no_padding() {
        let b = pad_batch(&[enc(&[101, 102], &[0, 0])], 0);
        assert_eq!((b.batch, b.seq), (1, 2));
        assert_eq!(b.mask, [1.0, 1.0]);
        assert_eq!(b.positions, [0, 1]);
    }

    #[test]
    fn packs_without_padding_and_restarts_positions() {
        let rows = [
            enc(&[101, 7, 102], &[0, 0, 0]),
            enc(&[101, 102], &[0, 1]),
            enc(&[101, 5, 6, 7, 102], &[0; 5]),
        ];
        let b = pack_batch(&rows, 9);
        assert_eq!((b.sequences(), b.tokens(), b.longest()), (3, 10, 5));
        assert_eq!(b.rows(), PACKED_ROW_MULTIPLE);
        assert_eq!(b.offsets, [0, 3, 5, 10]);
        assert_eq!(b.ids[..10], [101, 7, 102, 101, 102, 101, 5, 6, 7, 102]);
        assert_eq!(b.type_ids[..10], [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(b.positions[..10], [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]);
        assert!(b.ids[10..].iter().all(|&id| id == 9));
        assert!(b.type_ids[10..]
            .iter()
            .chain(&b.positions[10..])
            .all(|&v| v == 0));
        // 10 tokens pack into 64 rows, more than 3 x 5 padded: these pad.
        assert!(matches!(
            TokenBatch::new(&rows, 0, true),
            TokenBatch::Padded(_)
        ));
        let long = enc(&[1; 100], &[0; 100]);
        let uneven = [long.clone(), rows[0].clone(), rows[1].clone()];
        // 105 tokens in 128 rows, against 3 x 100 padded.
        assert!(matches!(
            TokenBatch::new(&uneven, 0, true),
            TokenBatch::Packed(_)
        ));
        assert!(matches!(
            TokenBatch::new(&uneven, 0, false),
            TokenBatch::Padded(_)
        ));
        let even = [long.clone(), long];
        assert!(matches!(
            TokenBatch::new(&even, 0, true),
            TokenBatch::Padded(_)
        ));
        assert_eq!(pack_batch(&[], 0).sequences(), 0);
        assert_eq!(pack_batch(&[], 0).rows(), 0);
    }

    #[test]
    fn empty_batch() {
        let b = pad_batch(&[], 0);
        assert_eq!((b.batch, b.seq), (0, 0));
        assert!(
            b.ids.is_empty()
                && b.type_ids.is_empty()
                && b.mask.is_empty()
                && b.positions.is_empty()
        );
    }
}
