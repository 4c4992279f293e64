//! Tokenizing costs work in proportion to max_seq_length, not to the input: a prefix of a long
//! input is tokenized (cut at whitespace, doubled until it gives more tokens than the truncation
//! keeps), and inputs over `MAX_INPUT_BYTES` are refused before any tokenization.
//!
//! The prefix path is checked against the `tokenizers` crate tokenizing the whole input with the
//! same settings, on all-MiniLM-L6-v2's tokenizer.json, for generated inputs mixing long words,
//! punctuation runs, non-ASCII text (accents, Greek capitals whose final sigma depends on what
//! follows, CJK without spaces, emoji, combining marks after a space), special-token literals and
//! every kind of whitespace (including U+0085 and vertical tab, which the normalizer deletes rather
//! than treats as a word break), at several sequence limits, with and without lower-casing.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_model::{BertModel, ModelDir, ModelError, Tokenizer, MAX_INPUT_BYTES};
use braid_runtime::cpu::CpuDevice;
use braid_runtime::{DType, Runtime, RuntimeConfig};
use common::*;
use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

const FRAGMENTS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! (Testing) [brackets] {braces} — em-dash; semi:colon \"quotes\" 'apostrophes'",
    "antidisestablishmentarianismantidisestablishmentarianismantidisestablishmentarianismantidisestablishmentarianism",
    "supercalifragilisticexpialidocious",
    "Ünïcödé façade café naïve résumé Ångström",
    "ΟΔΟΣ ΣΑΣ ΣΟΦΟΣ ΑΣ",
    "ΣΑΣ",
    "中文字符测试没有空格的长句子中文字符测试没有空格的长句子",
    "日本語のテキストとカタカナ",
    "한국어 문장입니다",
    "emoji 😀🚀👍🏽 ok",
    "e\u{301}",
    "\u{301}x",
    "a.b,c;d!e?f:g/h\\i|j-k_l+m=n*o&p^q%r$s#t@u~v`w<x>y",
    "https://example.com/some/path?query=1&other=two#frag",
    "1234567890 3.14159 1,000,000",
    "[CLS] [SEP] [MASK] [UNK]",
    "x\u{0}y\u{fffd}z\u{200b}w",
    "don't won't can't y'all",
];

const SEPARATORS: &[&str] = &[
    " ", " ", " ", "", "\n", "\t", "  ", "\r\n", "\u{a0}", "\u{3000}", "\u{2009}", "\u{85}",
    "\u{b}", "\u{c}", " \u{301}",
];

/// Deterministic xorshift64.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn generated_text(rng: &mut Rng, min_len: usize) -> String {
    let mut text = String::new();
    // Sometimes one long word with no whitespace at all, or leading whitespace.
    if rng.below(8) == 0 {
        text.push_str(&"abc.".repeat(min_len / 4 + 1));
        return text;
    }
    if rng.below(4) == 0 {
        text.push_str("  \n");
    }
    while text.len() < min_len {
        let fragment = FRAGMENTS[rng.below(FRAGMENTS.len())];
        if rng.below(10) == 0 {
            text.push_str(&fragment.repeat(1 + rng.below(20))); // a long word
        } else {
            text.push_str(fragment);
        }
        text.push_str(SEPARATORS[rng.below(SEPARATORS.len())]);
    }
    text
}

fn tokenizer_path() -> std::path::PathBuf {
    minilm_dir().path().join("tokenizer.json")
}

/// The whole input tokenized by the `tokenizers` crate with braid's settings: (ids, type ids).
struct Reference(tokenizers::Tokenizer);

impl Reference {
    fn new(max_length: usize) -> Self {
        let mut inner = tokenizers::Tokenizer::from_file(tokenizer_path()).unwrap();
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .unwrap();
        Self(inner)
    }

    fn encode(&self, text: &str, lowercase: bool) -> (Vec<u32>, Vec<u32>) {
        let encoding = if lowercase {
            self.0.encode_fast(text.to_lowercase(), true)
        } else {
            self.0.encode_fast(text, true)
        }
        .unwrap();
        (
            encoding.get_ids().to_vec(),
            encoding.get_type_ids().to_vec(),
        )
    }
}

#[test]
fn prefix_tokenization_equals_tokenizing_the_whole_input() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let lengths = [50, 300, 1_000, 3_000, 9_000, 30_000, 100_000];
    let texts: Vec<String> = (0..70)
        .map(|i| {
            let min_len = lengths[i % lengths.len()] + rng.below(500);
            generated_text(&mut rng, min_len)
        })
        .collect();
    let mut compared = 0;
    for max_seq_length in [4usize, 16, 128, 256, 512] {
        let reference = Reference::new(max_seq_length);
        for lowercase in [false, true] {
            let tokenizer =
                Tokenizer::from_file(&tokenizer_path(), max_seq_length, lowercase).unwrap();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let batch = tokenizer.encode_batch(&refs).unwrap();
            for (text, from_batch) in texts.iter().zip(&batch) {
                let (ids, type_ids) = reference.encode(text, lowercase);
                let got = tokenizer.encode(text).unwrap();
                let what = format!(
                    "max_seq_length {max_seq_length}, lowercase {lowercase}, {} bytes: {:?}",
                    text.len(),
                    &text[..text.char_indices().nth(60).map_or(text.len(), |(i, _)| i)]
                );
                assert_eq!(got.ids, ids, "{what}");
                assert_eq!(got.type_ids, type_ids, "{what}");
                assert_eq!(&got, from_batch, "encode_batch, {what}");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 5 * 2 * 70);
}

#[test]
fn a_500_kb_input_is_truncated_like_the_whole_input() {
    let text = "A man is eating food, and the (rather long) sentence goes on; über alles. "
        .repeat(500_000 / 74);
    assert!(text.len() > 490_000 && text.len() <= MAX_INPUT_BYTES);
    let tokenizer = Tokenizer::from_file(&tokenizer_path(), 256, false).unwrap();
    let got = tokenizer.encode(&text).unwrap();
    assert_eq!(got.len(), 256);
    assert_eq!(got.ids, Reference::new(256).encode(&text, false).0);
}

#[test]
fn a_20_mb_input_is_refused_quickly_without_tokenizing() {
    let huge = "the cat sat on the mat. ".repeat(20_000_000 / 24);
    let dir = TempDir::new("huge-input");
    write_tiny_model(&dir);
    let runtime = Arc::new(Runtime::new(CpuDevice::new(), RuntimeConfig::default()).unwrap());
    let model = BertModel::load(runtime, &ModelDir::open(dir.path()).unwrap(), DType::F32).unwrap();
    let start = Instant::now();
    let result = model.embed(&["the cat", &huge]);
    let elapsed = start.elapsed();
    match result {
        Err(
            ref err @ ModelError::InputTooLong {
                index,
                bytes,
                limit,
            },
        ) => {
            assert_eq!((index, bytes, limit), (1, huge.len(), MAX_INPUT_BYTES));
            let message = err.to_string();
            assert!(
                message.contains("input 1") && message.contains("1048576"),
                "{message}"
            );
        }
        other => panic!("expected InputTooLong, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}
