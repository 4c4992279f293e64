//! Per-request token limits, as an HTTP server applies them: [`Tokenizer::encode_within`] encodes one
//! input within a token limit at most `max_seq_length`, says whether the input was longer, and
//! truncates on the side asked for; [`Tokenizer::tokens`] lists the tokens the model would see with
//! their text and offsets (text-embeddings-inference's `/tokenize`).
//!
//! Promises:
//!
//! - Truncation keeps the special tokens at both ends (`[CLS]` … `[SEP]`) and drops content tokens
//!   from the side asked for, so a truncated encoding is exactly `max_tokens` long, as the model's own
//!   right-side truncation at `max_seq_length` is.
//! - Right-side work is bounded as the module above bounds it (a prefix is tokenized first). Left-side
//!   truncation needs the input's end, so it tokenizes the whole input: at most [`MAX_INPUT_BYTES`],
//!   refused before any work above that.
//!
//! [`MAX_INPUT_BYTES`]: super::MAX_INPUT_BYTES

use super::{check_length, convert, truncated, Detail, Encoding, Tokenizer};
use crate::error::Result;

/// Which end of an over-long input truncation drops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TruncationSide {
    /// Keep the end of the input.
    Left,
    /// Keep the start of the input (what sentence-transformers does).
    #[default]
    Right,
}

/// An input encoded within a token limit ([`Tokenizer::encode_within`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounded {
    /// The encoding, at most the limit long (truncated when `over_limit`).
    pub encoding: Encoding,
    /// Whether the whole input has more tokens than the limit (and so was truncated).
    pub over_limit: bool,
}

/// One token of an input, as `/tokenize` reports it ([`Tokenizer::tokens`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// The token id.
    pub id: u32,
    /// The input text it covers (a special token's own text, such as `[CLS]`).
    pub text: String,
    /// Whether the tokenizer added it (`[CLS]`, `[SEP]`).
    pub special: bool,
    /// Where it starts in the input, in bytes (`None` for a special token).
    pub start: Option<usize>,
    /// Where it ends in the input, in bytes, exclusive (`None` for a special token).
    pub stop: Option<usize>,
}

impl Tokenizer {
    /// Encodes `text` within `max_tokens` tokens (special tokens included; at most
    /// `max_seq_length`, which a larger value is clamped to), truncating on `side` and saying whether
    /// the input was longer. An input over [`super::MAX_INPUT_BYTES`] is refused, as [`Tokenizer::encode`]
    /// refuses it.
    pub fn encode_within(
        &self,
        text: &str,
        max_tokens: usize,
        side: TruncationSide,
    ) -> Result<Bounded> {
        check_length(0, text)?;
        let limit = max_tokens.min(self.max_seq_length);
        let (raw, longer_than_model) = match side {
            // The model's own truncation keeps the first max_seq_length tokens: enough for any limit.
            TruncationSide::Right => {
                let (raw, _) =
                    self.encode_raw_from(text, 0, self.first_prefix_bytes(), Detail::Fast)?;
                let over = truncated(&raw);
                (raw, over)
            }
            TruncationSide::Left => (
                self.encode_raw(&self.untruncated, text, Detail::Fast)?,
                false,
            ),
        };
        let over_limit = longer_than_model || raw.len() > limit;
        let specials = raw.get_special_tokens_mask().to_vec();
        let mut encoding = convert(raw);
        if encoding.len() > limit {
            let keep = kept_positions(&specials, limit, side);
            encoding = Encoding {
                ids: keep.clone().map(|i| encoding.ids[i]).collect(),
                type_ids: keep.map(|i| encoding.type_ids[i]).collect(),
            };
        }
        Ok(Bounded {
            encoding,
            over_limit,
        })
    }

    /// The tokens of `text` the model would see (truncated on the right at `max_seq_length`), with
    /// their text and byte offsets in `text`; with `special_tokens` false, without `[CLS]`/`[SEP]`.
    /// Offsets are those of the text the tokenizer saw, which equal the input's except where a
    /// model that lower-cases its input changes a character's length; where an offset falls inside
    /// a character, the token's own text is given.
    pub fn tokens(&self, text: &str, special_tokens: bool) -> Result<Vec<Token>> {
        check_length(0, text)?;
        let (raw, _) = self.encode_raw_from(
            text,
            0,
            self.first_prefix_bytes(),
            Detail::Offsets { special_tokens },
        )?;
        let specials = raw.get_special_tokens_mask();
        Ok(raw
            .get_ids()
            .iter()
            .zip(raw.get_tokens())
            .zip(raw.get_offsets())
            .zip(specials)
            .map(|(((&id, token), &(start, stop)), &special)| {
                let special = special == 1;
                let covered = (!special).then(|| text.get(start..stop)).flatten();
                Token {
                    id,
                    text: covered.map_or_else(|| token.clone(), str::to_string),
                    special,
                    start: (!special).then_some(start),
                    stop: (!special).then_some(stop),
                }
            })
            .collect())
    }
}

/// The positions an encoding keeps when cut to `limit` tokens: its leading and trailing special
/// tokens, and as many content tokens as fit from the start (`Right`) or the end (`Left`). When the
/// specials alone exceed the limit, the first `limit` positions.
fn kept_positions(
    specials: &[u32],
    limit: usize,
    side: TruncationSide,
) -> std::iter::Chain<std::ops::Range<usize>, std::ops::Range<usize>> {
    let len = specials.len();
    let leading = specials.iter().take_while(|&&s| s == 1).count();
    let trailing = specials[leading..]
        .iter()
        .rev()
        .take_while(|&&s| s == 1)
        .count();
    let Some(content) = limit.checked_sub(leading + trailing) else {
        return (0..limit).chain(0..0);
    };
    let content_end = len - trailing;
    match side {
        TruncationSide::Right => (0..leading + content).chain(content_end..len),
        TruncationSide::Left => (0..leading).chain(content_end - content..len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_specials_and_drops_content_from_the_side_asked() {
        // [CLS] a b c d [SEP]
        let specials = [1, 0, 0, 0, 0, 1];
        let right: Vec<usize> = kept_positions(&specials, 4, TruncationSide::Right).collect();
        assert_eq!(right, [0, 1, 2, 5]);
        let left: Vec<usize> = kept_positions(&specials, 4, TruncationSide::Left).collect();
        assert_eq!(left, [0, 3, 4, 5]);
        let tiny: Vec<usize> = kept_positions(&specials, 1, TruncationSide::Left).collect();
        assert_eq!(tiny, [0]);
        // No specials (token ids given as they are).
        let plain: Vec<usize> = kept_positions(&[0, 0, 0], 2, TruncationSide::Left).collect();
        assert_eq!(plain, [1, 2]);
    }

    #[test]
    fn encode_within_says_when_an_input_is_over_the_limit() {
        let tok = crate::tokenizer::tests::tokenizer("BertPreTokenizer", 16);
        let fits = tok
            .encode_within("the cat sat", 5, TruncationSide::Right)
            .unwrap();
        assert_eq!(
            (fits.encoding.ids.as_slice(), fits.over_limit),
            (&[2, 4, 5, 6, 3][..], false)
        );
        let right = tok
            .encode_within("the cat sat", 4, TruncationSide::Right)
            .unwrap();
        assert_eq!(
            (right.encoding.ids.as_slice(), right.over_limit),
            (&[2, 4, 5, 3][..], true)
        );
        let left = tok
            .encode_within("the cat sat", 4, TruncationSide::Left)
            .unwrap();
        assert_eq!(
            (left.encoding.ids.as_slice(), left.over_limit),
            (&[2, 5, 6, 3][..], true)
        );
        assert_eq!(left.encoding.type_ids, [0; 4]);
        // Longer than the model's own limit: over whatever limit was asked for, both sides.
        let long = "the cat sat. ".repeat(100);
        for side in [TruncationSide::Left, TruncationSide::Right] {
            let bounded = tok.encode_within(&long, 100, side).unwrap();
            assert_eq!((bounded.encoding.len(), bounded.over_limit), (16, true));
        }
        let tokens = tok.tokens("The cat", true).unwrap();
        let texts: Vec<(&str, bool, Option<usize>)> = tokens
            .iter()
            .map(|t| (t.text.as_str(), t.special, t.start))
            .collect();
        assert_eq!(
            texts,
            [
                ("[CLS]", true, None),
                ("The", false, Some(0)),
                ("cat", false, Some(4)),
                ("[SEP]", true, None)
            ]
        );
        assert_eq!(tok.tokens("The cat", false).unwrap().len(), 2);
    }
}
