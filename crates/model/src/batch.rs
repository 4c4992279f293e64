//! `pad_batch`: several unpadded encodings become one rectangular, row-major batch.
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
