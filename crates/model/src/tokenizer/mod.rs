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
//!
//! # Bounded work
//!
//! Tokenizing a whole input costs time and memory in proportion to its length (a 20 MB line took
//! 1.55 GB), although only its first `max_seq_length` tokens are kept. So:
//!
//! - An input longer than [`MAX_INPUT_BYTES`] (1 MiB) is refused with
//!   [`ModelError::InputTooLong`] before any of it is tokenized.
//! - Otherwise a prefix is tokenized first: `max_seq_length * 16` bytes, cut just before a
//!   whitespace character (so it ends on a word boundary). If that prefix already gives more tokens
//!   than the truncation keeps, the result is the whole input's: BERT's normalizer works character
//!   by character and its pre-tokenizer splits words at whitespace, so the prefix's tokens are
//!   exactly the first tokens of the whole input, and truncation keeps only those. Otherwise the
//!   prefix is doubled until it does, or is the whole input. English averages 4-5 bytes a token, so one
//!   pass of ~4 KiB nearly always suffices for a 256-token model.
//! - The prefix is used only where that argument holds: a `BertNormalizer` (or none), the
//!   `BertPreTokenizer`, no added token containing whitespace, and a cut only at whitespace the
//!   normalizer keeps as whitespace (ASCII tab, line feed, carriage return, and Unicode spaces that
//!   are not control characters: the normalizer deletes control characters, joining the words
//!   around them). Any other tokenizer tokenizes the whole input, at most [`MAX_INPUT_BYTES`].
//!
//! A server's per-request limits (a token limit below `max_seq_length`, truncation on the left, an
//! error instead of truncation, the tokens with their offsets) are `bounded`'s: [`Tokenizer::encode_within`]
//! and [`Tokenizer::tokens`].

mod bounded;

pub use self::bounded::{Bounded, Token, TruncationSide};

use std::fmt;
use std::path::Path;

use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{ModelError, Result};

/// The longest input braid tokenizes, in bytes of UTF-8: 1 MiB (1,048,576 bytes), inclusive. A
/// longer input is refused with [`ModelError::InputTooLong`] before any tokenization. Truncation
/// keeps only the first `max_seq_length` tokens (256 for all-MiniLM-L6-v2, about 1 KiB of English),
/// so the limit only refuses inputs that are almost entirely thrown away; it bounds the time and
/// memory one input can cost. `braid embed` reads lines up to the same length.
pub const MAX_INPUT_BYTES: usize = 1 << 20;

/// Bytes of text per token of `max_seq_length` in the first prefix tokenized.
const FIRST_PREFIX_BYTES_PER_TOKEN: usize = 16;

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
    /// The same tokenizer with truncation off: for truncation on the left (`bounded`), which needs
    /// the end of the input.
    untruncated: tokenizers::Tokenizer,
    max_seq_length: usize,
    lowercase: bool,
    /// Whether a prefix cut at whitespace tokenizes like the start of the whole text (module doc).
    prefix_safe: bool,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("max_seq_length", &self.max_seq_length)
            .field("lowercase", &self.lowercase)
            .field("prefix_safe", &self.prefix_safe)
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
        let prefix_safe = prefix_safe(&inner);
        let mut untruncated = inner.clone();
        untruncated
            .with_truncation(None)
            .map_err(|e| error(format!("cannot turn truncation off: {e}")))?;
        Ok(Self {
            inner,
            untruncated,
            max_seq_length,
            lowercase,
            prefix_safe,
        })
    }

    /// The longest encoding this tokenizer returns, special tokens included.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Tokenizes one input. An input longer than `max_seq_length` tokens is truncated; one longer
    /// than [`MAX_INPUT_BYTES`] is refused ([`ModelError::InputTooLong`], index 0).
    pub fn encode(&self, text: &str) -> Result<Encoding> {
        check_length(0, text)?;
        self.encode_from(text, 0, self.first_prefix_bytes())
            .map(|(encoding, _)| encoding)
    }

    /// Tokenizes several inputs (in parallel where the tokenizers crate chooses to); the result
    /// is in input order and each encoding equals what `encode` returns for that input. If any
    /// input is longer than [`MAX_INPUT_BYTES`], nothing is tokenized and the error names the
    /// first such input.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        for (index, text) in texts.iter().enumerate() {
            check_length(index, text)?;
        }
        // Every input's first prefix in one batch; the few that need more are grown one by one.
        let budget = self.first_prefix_bytes();
        let cuts: Vec<usize> = texts
            .iter()
            .map(|text| self.cut_point(text, 0, budget))
            .collect();
        let prefixes: Vec<&str> = texts.iter().zip(&cuts).map(|(t, &c)| &t[..c]).collect();
        let first = if self.lowercase {
            let lowered: Vec<String> = prefixes.iter().map(|t| t.to_lowercase()).collect();
            self.inner.encode_batch_fast(lowered, true)
        } else {
            self.inner.encode_batch_fast(prefixes, true)
        }
        .map_err(encode_error)?;
        first
            .into_iter()
            .zip(texts.iter().zip(cuts))
            .map(|(encoding, (text, cut))| {
                if cut == text.len() || truncated(&encoding) {
                    Ok(convert(encoding))
                } else {
                    self.encode_from(text, cut, budget.max(cut).saturating_mul(2))
                        .map(|(encoding, _)| encoding)
                }
            })
            .collect()
    }

    /// The size of the first prefix tokenized, in bytes.
    fn first_prefix_bytes(&self) -> usize {
        self.max_seq_length
            .saturating_mul(FIRST_PREFIX_BYTES_PER_TOKEN)
    }

    /// Tokenizes ever longer prefixes of `text`, the first ending past byte `after` and cut near
    /// `budget` bytes, each twice as long as the last, until one is truncated (so it gives the
    /// whole text's encoding) or is the whole text. Also returns the bytes tokenized in all.
    fn encode_from(&self, text: &str, after: usize, budget: usize) -> Result<(Encoding, usize)> {
        self.encode_raw_from(text, after, budget, Detail::Fast)
            .map(|(encoding, tokenized)| (convert(encoding), tokenized))
    }

    /// [`Tokenizer::encode_from`]'s loop, returning the tokenizers crate's encoding (with offsets
    /// when `detail` asks for them).
    fn encode_raw_from(
        &self,
        text: &str,
        mut after: usize,
        mut budget: usize,
        detail: Detail,
    ) -> Result<(tokenizers::Encoding, usize)> {
        let mut tokenized = 0;
        loop {
            let cut = self.cut_point(text, after, budget);
            let encoding = self.encode_raw(&self.inner, &text[..cut], detail)?;
            tokenized += cut;
            if cut == text.len() || truncated(&encoding) {
                return Ok((encoding, tokenized));
            }
            after = cut;
            budget = budget.max(cut).saturating_mul(2);
        }
    }

    /// One call of `tokenizer` on `text` (lower-cased first where the model asks for it).
    fn encode_raw(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        text: &str,
        detail: Detail,
    ) -> Result<tokenizers::Encoding> {
        let text: std::borrow::Cow<'_, str> = if self.lowercase {
            text.to_lowercase().into()
        } else {
            text.into()
        };
        match detail {
            Detail::Fast => tokenizer.encode_fast(text.as_ref(), true),
            Detail::Offsets { special_tokens } => tokenizer.encode(text.as_ref(), special_tokens),
        }
        .map_err(encode_error)
    }

    /// Where to cut `text` for a prefix of about `budget` bytes ending past byte `after` (a char
    /// boundary): just before the last word break starting in `(after, budget]`, else just before
    /// the first one past `budget`, else (or when the tokenizer is not prefix-safe) at the end.
    fn cut_point(&self, text: &str, after: usize, budget: usize) -> usize {
        if !self.prefix_safe || budget >= text.len() {
            return text.len();
        }
        let mut last = None;
        for (i, c) in text[after..].char_indices() {
            let at = after + i;
            if at == after || !is_word_break(c) {
                continue;
            }
            if at > budget {
                return last.unwrap_or(at);
            }
            last = Some(at);
        }
        last.unwrap_or(text.len())
    }
}

/// How much one tokenizer call computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detail {
    /// Ids and type ids only, special tokens added (`encode_fast`: no offsets).
    Fast,
    /// Offsets too, special tokens added or not.
    Offsets { special_tokens: bool },
}

/// Refuses an input longer than [`MAX_INPUT_BYTES`], before any of it is tokenized.
fn check_length(index: usize, text: &str) -> Result<()> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(ModelError::InputTooLong {
            index,
            bytes: text.len(),
            limit: MAX_INPUT_BYTES,
        });
    }
    Ok(())
}

/// Whitespace that BERT's normalizer keeps as whitespace and its pre-tokenizer splits words at:
/// tab, line feed, carriage return, and every Unicode space that is not a control character (the
/// normalizer deletes other control characters, such as U+0085, joining the words around them).
fn is_word_break(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c.is_whitespace() && !c.is_control())
}

/// Whether a prefix of a text cut just before an [`is_word_break`] character tokenizes into the
/// first tokens of the whole text: true for BERT's normalizer (or none) and pre-tokenizer with no
/// added token that contains such a character (module doc).
fn prefix_safe(tokenizer: &tokenizers::Tokenizer) -> bool {
    let normalizer = matches!(
        tokenizer.get_normalizer(),
        None | Some(NormalizerWrapper::BertNormalizer(_))
    );
    let pre_tokenizer = matches!(
        tokenizer.get_pre_tokenizer(),
        Some(PreTokenizerWrapper::BertPreTokenizer(_))
    );
    let added = tokenizer
        .get_added_tokens_decoder()
        .values()
        .all(|token| !token.content.chars().any(is_word_break));
    normalizer && pre_tokenizer && added
}

/// Whether truncation dropped tokens from `encoding`.
fn truncated(encoding: &tokenizers::Encoding) -> bool {
    !encoding.get_overflowing().is_empty()
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A BERT WordPiece tokenizer.json over a tiny vocabulary, with the given pre-tokenizer.
    fn tokenizer_json(pre_tokenizer: &str) -> String {
        format!(
            r###"{{
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {{"id": 0, "content": "[PAD]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}},
    {{"id": 1, "content": "[UNK]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}},
    {{"id": 2, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}},
    {{"id": 3, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}
  ],
  "normalizer": {{"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                 "strip_accents": null, "lowercase": true}},
  "pre_tokenizer": {{"type": "{pre_tokenizer}"}},
  "post_processor": {{
    "type": "TemplateProcessing",
    "single": [{{"SpecialToken": {{"id": "[CLS]", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}},
               {{"SpecialToken": {{"id": "[SEP]", "type_id": 0}}}}],
    "pair": [{{"Sequence": {{"id": "A", "type_id": 0}}}}, {{"Sequence": {{"id": "B", "type_id": 1}}}}],
    "special_tokens": {{
      "[CLS]": {{"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}},
      "[SEP]": {{"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}
    }}
  }},
  "decoder": null,
  "model": {{
    "type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
    "max_input_chars_per_word": 100,
    "vocab": {{"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "the": 4, "cat": 5, "sat": 6, ".": 7}}
  }}
}}"###
        )
    }

    pub(super) fn tokenizer(pre_tokenizer: &str, max_seq_length: usize) -> Tokenizer {
        // A file per call: tests run at once on threads of one process.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "braid-model-tokenizer-{}-{call}-{pre_tokenizer}.json",
            std::process::id()
        ));
        std::fs::write(&path, tokenizer_json(pre_tokenizer)).unwrap();
        let tokenizer = Tokenizer::from_file(&path, max_seq_length, false).unwrap();
        std::fs::remove_file(&path).unwrap();
        tokenizer
    }

    #[test]
    fn a_long_input_is_tokenized_by_a_short_prefix() {
        let tok = tokenizer("BertPreTokenizer", 16);
        assert!(tok.prefix_safe);
        let text = "the cat sat. ".repeat(500_000 / 13); // 500 KB
        let (encoding, tokenized) = tok.encode_from(&text, 0, tok.first_prefix_bytes()).unwrap();
        assert_eq!(encoding.len(), 16);
        assert!(tokenized <= 256, "tokenized {tokenized} bytes");
        assert_eq!(tok.encode(&text).unwrap(), encoding);

        // Words of 200 characters are one [UNK] each: the prefix doubles until it has enough.
        let text = format!("{} ", "x".repeat(200)).repeat(2000);
        let (encoding, tokenized) = tok.encode_from(&text, 0, tok.first_prefix_bytes()).unwrap();
        assert_eq!(encoding.ids[1..15], [1; 14]);
        assert!(tokenized < 16 << 10, "tokenized {tokenized} bytes");
    }

    #[test]
    fn cuts_only_at_whitespace_the_normalizer_keeps() {
        let tok = tokenizer("BertPreTokenizer", 4);
        let text = "aaaa bbbb\u{85}cccc\u{3000}dddd\teeee";
        // The last break at or before the budget, else the first after it, else the end.
        assert_eq!(tok.cut_point(text, 0, 7), 4);
        assert_eq!(
            tok.cut_point(text, 0, 12),
            4,
            "U+0085 is deleted, not a break"
        );
        assert_eq!(tok.cut_point(text, 0, 16), 15, "U+3000 is a space");
        assert_eq!(tok.cut_point(text, 15, 16), 22, "past `after`");
        assert_eq!(tok.cut_point(text, 22, 23), text.len());
        assert_eq!(tok.cut_point("abcdefgh", 0, 3), 8);
        assert_eq!(tok.cut_point(text, 0, 1000), text.len());
    }

    #[test]
    fn another_pre_tokenizer_tokenizes_the_whole_input() {
        let tok = tokenizer("Whitespace", 16);
        assert!(!tok.prefix_safe);
        let text = "the cat sat. ".repeat(1000);
        let (encoding, tokenized) = tok.encode_from(&text, 0, tok.first_prefix_bytes()).unwrap();
        assert_eq!((encoding.len(), tokenized), (16, text.len()));
    }

    #[test]
    fn inputs_over_the_limit_are_refused_before_tokenizing() {
        let tok = tokenizer("BertPreTokenizer", 16);
        let at_limit = "a".repeat(MAX_INPUT_BYTES);
        assert!(tok.encode(&at_limit).is_ok());
        let over = "a".repeat(MAX_INPUT_BYTES + 1);
        match tok.encode_batch(&["the cat", &over]) {
            Err(ModelError::InputTooLong {
                index,
                bytes,
                limit,
            }) => assert_eq!(
                (index, bytes, limit),
                (1, MAX_INPUT_BYTES + 1, MAX_INPUT_BYTES)
            ),
            other => panic!("{other:?}"),
        }
    }
}
