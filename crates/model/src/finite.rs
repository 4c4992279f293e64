//! The last check on what the forward computed: every embedding handed to a caller is finite.
//!
//! A NaN or infinite weight, or an f16 overflow, used to come out as a finite but meaningless
//! vector (or as NaN the caller had to spot). The kernels propagate non-finite values (the
//! attention softmax included), so such a fault reaches the pooled output, and this check turns it
//! into [`ModelError::NonFiniteEmbedding`] naming the input. It runs on the host copy that
//! `BertModel::embed` and `embed_batch` return, so it costs one pass over `batch * dim` floats and
//! behaves the same on every backend.

use crate::error::{ModelError, Result};

/// Checks that `flat`, the row-major `[batch, dim]` embeddings of one call, holds only finite
/// values; otherwise names the first input whose embedding does not.
pub(crate) fn check_embeddings(flat: &[f32], dim: usize) -> Result<()> {
    if flat.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    let batch = flat.len() / dim.max(1);
    let (position, &value) = flat
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())
        .expect("a non-finite value was seen above");
    Err(ModelError::NonFiniteEmbedding {
        index: position / dim.max(1),
        batch,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finite_passes_and_the_first_bad_input_is_named() {
        assert!(check_embeddings(&[0.0, 1.0, -2.0, 3.5], 2).is_ok());
        assert!(check_embeddings(&[], 2).is_ok());
        for (bad, want_index) in [(f32::NAN, 1), (f32::INFINITY, 1), (f32::NEG_INFINITY, 1)] {
            let flat = [0.0, 1.0, 2.0, bad, 4.0, f32::NAN];
            match check_embeddings(&flat, 2) {
                Err(ModelError::NonFiniteEmbedding {
                    index,
                    batch,
                    value,
                }) => {
                    assert_eq!((index, batch), (want_index, 3));
                    assert_eq!(value.to_bits(), bad.to_bits());
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let message = check_embeddings(&[f32::NAN], 1).unwrap_err().to_string();
        assert!(
            message.contains("input 0") && message.contains("weights") && message.contains("f16"),
            "{message}"
        );
    }
}
