//! `Tokenizer`: text to token ids, as sentence-transformers would produce them.
//!
//! Wraps a Hugging Face `tokenizers::Tokenizer` loaded from `tokenizer.json` and overrides what
//! that file says about length: sentence-transformers never pads a single input and truncates at
//! the model's `max_seq_length`, whereas a shipped tokenizer.json may pad and truncate elsewhere
//! (all-MiniLM-L6-v2's pads every input to 128 and truncates at 128). So loading turns padding off
//! and sets truncation to `max_seq_length`, longest-first, on the right. The post-processor adds
//! `[CLS]` and `[SEP]` and the truncation leaves room for them, so a long input keeps both and is
//! exactly `max_seq_length` ids long.
//!
//! Promise: every `Encoding` has between 1 and `max_seq_length` ids, no padding, and as many type
//! ids as ids; its attention mask is all ones, so it is not stored. Batching into a rectangle is
//! `batch::pad_batch`'s job.

use std::fmt;
use std::path::Path;

use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{ModelError, Result};

/// The token ids of one input, unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids, `[CLS]` first and `[SEP]` last for a BERT tokenizer.
    pub ids: Vec<u32>,
    /// Token type (segment) ids, one per token; all 0 for a single sentence.
    pub type_ids: Vec<u32>,
}

impl Encoding {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no tokens (never the case for a BERT tokenizer, which adds two).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A tokenizer configured for sentence embedding: no padding, truncation at `max_seq_length`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    max_seq_length: usize,
    lowercase: bool,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("max_seq_length", &self.max_seq_length)
            .field("lowercase", &self.lowercase)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` and configures it to truncate at `max_seq_length` (special tokens
    /// included) and not to pad. With `lowercase`, input text is lower-cased before tokenizing,
    /// as sentence-transformers does when `sentence_bert_config.json` sets `do_lower_case`.
    pub fn from_file(path: &Path, max_seq_length: usize, lowercase: bool) -> Result<Self> {
        let error = |message: String| ModelError::Tokenizer {
            path: path.to_owned(),
            message,
        };
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| error(e.to_string()))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| {
                error(format!(
                    "cannot truncate at max_seq_length = {max_seq_length}: {e}"
                ))
            })?;
        Ok(Self {
            inner,
            max_seq_length,
            lowercase,
        })
    }

    /// The longest encoding this tokenizer returns, special tokens included.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Tokenizes one input. An input longer than `max_seq_length` tokens is truncated.
    pub fn encode(&self, text: &str) -> Result<Encoding> {
        let encoding = if self.lowercase {
            self.inner.encode_fast(text.to_lowercase(), true)
        } else {
            self.inner.encode_fast(text, true)
        };
        encoding.map(convert).map_err(encode_error)
    }

    /// Tokenizes several inputs (in parallel where the tokenizers crate chooses to); the result
    /// is in input order and each encoding equals what `encode` returns for that input.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        let encodings = if self.lowercase {
            let lowered: Vec<String> = texts.iter().map(|t| t.to_lowercase()).collect();
            self.inner.encode_batch_fast(lowered, true)
        } else {
            self.inner.encode_batch_fast(texts.to_vec(), true)
        };
        encodings
            .map(|all| all.into_iter().map(convert).collect())
            .map_err(encode_error)
    }
}

fn convert(encoding: tokenizers::Encoding) -> Encoding {
    Encoding {
        ids: encoding.get_ids().to_vec(),
        type_ids: encoding.get_type_ids().to_vec(),
    }
}

fn encode_error(error: tokenizers::Error) -> ModelError {
    ModelError::Encode {
        message: error.to_string(),
    }
}
