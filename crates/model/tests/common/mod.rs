//! Helpers shared by the integration tests: the real model and golden fixture (failing loudly when
//! absent), temporary directories, and a tiny random BERT checkpoint written with the safetensors
//! crate.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Arc;

use braid_model::load::Embedder;
use braid_model::{default_model_dir, ModelDir};
use safetensors::{Dtype, View};
use serde::Deserialize;

/// The golden fixture, in the repository (`tests/fixtures/README.md` says how it was made). Spelled
/// from the crate's parent, so other crates' tests that include this module (`#[path]`) find it too.
pub const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../model/tests/fixtures/minilm-golden.json"
);

/// One fixture case: the text, its token ids and its float64 reference embedding.
#[derive(Deserialize)]
pub struct Case {
    pub text: String,
    pub ids: Vec<u32>,
    pub embedding: Vec<f64>,
}

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

/// The fixture's cases (from `BRAID_GOLDEN` when set: a test binary run away from the repository);
/// panics naming the path when the file is absent.
pub fn golden_cases() -> Vec<Case> {
    let path = std::env::var("BRAID_GOLDEN").unwrap_or_else(|_| GOLDEN.to_string());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden fixture {path} is missing or unreadable ({e}); \
             it ships in crates/model/tests/fixtures (or set BRAID_GOLDEN)"
        )
    });
    let golden: Golden = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("golden fixture {path} does not parse: {e}"));
    golden.cases
}

/// Cosine similarity and largest absolute difference of `got` against the reference `want`.
pub fn cosine_and_max_abs(got: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "embedding width");
    let (mut dot, mut gg, mut ww, mut max_abs) = (0f64, 0f64, 0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        let g = g as f64;
        dot += g * w;
        gg += g * g;
        ww += w * w;
        max_abs = max_abs.max((g - w).abs());
    }
    (dot / (gg.sqrt() * ww.sqrt()), max_abs)
}

/// Asserts each embedding of `got` (in case order) against its case's reference: cosine ≥ `min_cosine`
/// and largest absolute difference ≤ `max_abs`; returns the worst of each.
pub fn assert_near_golden(
    label: &str,
    got: &[Vec<f32>],
    cases: &[Case],
    min_cosine: f64,
    max_abs: f64,
) -> (f64, f64) {
    assert_eq!(got.len(), cases.len(), "{label}: one embedding per case");
    let (mut worst_cos, mut worst_abs) = (1f64, 0f64);
    for (case, embedding) in cases.iter().zip(got) {
        let (cos, abs) = cosine_and_max_abs(embedding, &case.embedding);
        assert!(
            cos >= min_cosine && abs <= max_abs,
            "{label} {:?}: cosine {cos:.8}, max abs {abs:.2e}",
            case.text
        );
        worst_cos = worst_cos.min(cos);
        worst_abs = worst_abs.max(abs);
    }
    (worst_cos, worst_abs)
}

/// `threads` threads at once, each embedding `per_thread` cases one at a time (thread t from case
/// t · `per_thread` on, wrapping); returns how many embeddings differ in any bit from `single` (each
/// case embedded alone on one thread, in case order), after checking that every thread's stream slot
/// came back.
pub fn differing_across_threads(
    model: Arc<dyn Embedder>,
    cases: Arc<Vec<Case>>,
    single: Arc<Vec<Vec<f32>>>,
    threads: usize,
    per_thread: usize,
) -> usize {
    let leased_before = model.leased_slots();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (model, cases, single) = (model.clone(), cases.clone(), single.clone());
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|k| (t * per_thread + k) % cases.len())
                    .filter(|&i| {
                        let got = model.embed(&[cases[i].text.as_str()]).unwrap().remove(0);
                        got.iter()
                            .map(|v| v.to_bits())
                            .ne(single[i].iter().map(|v| v.to_bits()))
                    })
                    .count()
            })
        })
        .collect();
    let differing = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(
        model.leased_slots(),
        leased_before,
        "every thread's slot came back"
    );
    differing
}

/// The default model directory; panics with how to fetch it when it is absent.
pub fn minilm_dir() -> ModelDir {
    let path = default_model_dir();
    ModelDir::open(&path).unwrap_or_else(|e| {
        panic!(
            "these tests need all-MiniLM-L6-v2, looked for at {}: {e}\n\
             run `cargo run --release -p braid-cli -- fetch-model` from the repository root first \
             (or set BRAID_MODEL / BRAID_MODELS_DIR)",
            path.display()
        )
    })
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // Relaxed: the counter only has to hand out distinct numbers.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "braid-model-test-{}-{name}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tiny config: 2 layers, hidden 8, 2 heads, intermediate 16, vocab 30.
pub const TINY_LAYERS: usize = 2;
pub const TINY_HIDDEN: usize = 8;
pub const TINY_INTERMEDIATE: usize = 16;
pub const TINY_VOCAB: usize = 30;
pub const TINY_POSITIONS: usize = 16;

pub fn tiny_config_json() -> String {
    format!(
        r#"{{
  "architectures": ["BertModel"],
  "model_type": "bert",
  "vocab_size": {TINY_VOCAB},
  "hidden_size": {TINY_HIDDEN},
  "num_hidden_layers": {TINY_LAYERS},
  "num_attention_heads": 2,
  "intermediate_size": {TINY_INTERMEDIATE},
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "layer_norm_eps": 1e-12,
  "max_position_embeddings": {TINY_POSITIONS},
  "type_vocab_size": 2,
  "pad_token_id": 0
}}"#
    )
}

/// Tensor name (without prefix) → (shape, values), in BertModel's layout, with random values.
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

pub fn tiny_tensors() -> Tensors {
    let (h, ff) = (TINY_HIDDEN, TINY_INTERMEDIATE);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            vec![TINY_VOCAB, h],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![TINY_POSITIONS, h],
        ),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
        ("pooler.dense.weight".into(), vec![h, h]),
        ("pooler.dense.bias".into(), vec![h]),
    ];
    for i in 0..TINY_LAYERS {
        let l = format!("encoder.layer.{i}");
        for part in ["query", "key", "value"] {
            shapes.push((format!("{l}.attention.self.{part}.weight"), vec![h, h]));
            shapes.push((format!("{l}.attention.self.{part}.bias"), vec![h]));
        }
        shapes.extend([
            (format!("{l}.attention.output.dense.weight"), vec![h, h]),
            (format!("{l}.attention.output.dense.bias"), vec![h]),
            (format!("{l}.attention.output.LayerNorm.weight"), vec![h]),
            (format!("{l}.attention.output.LayerNorm.bias"), vec![h]),
            (format!("{l}.intermediate.dense.weight"), vec![ff, h]),
            (format!("{l}.intermediate.dense.bias"), vec![ff]),
            (format!("{l}.output.dense.weight"), vec![h, ff]),
            (format!("{l}.output.dense.bias"), vec![h]),
            (format!("{l}.output.LayerNorm.weight"), vec![h]),
            (format!("{l}.output.LayerNorm.bias"), vec![h]),
        ]);
    }
    // A small linear congruential generator: deterministic, distinct values, no dependency.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let values = (0..shape.iter().product::<usize>())
                .map(|_| next())
                .collect();
            (name, (shape, values))
        })
        .collect()
}

/// Serialises `tensors` as safetensors with every name prefixed by `prefix` and every float
/// stored as `dtype` (F32, F16 or BF16), plus the I64 `embeddings.position_ids` buffer that real
/// checkpoints carry.
pub fn safetensors_bytes(tensors: &Tensors, prefix: &str, dtype: Dtype) -> Vec<u8> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let bytes = match dtype {
                Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Dtype::F16 => values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                Dtype::BF16 => values
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                other => panic!("tests write F32, F16 or BF16, not {other}"),
            };
            (format!("{prefix}{name}"), dtype, shape.clone(), bytes)
        })
        .collect();
    let position_ids: Vec<u8> = (0..TINY_POSITIONS as i64)
        .flat_map(i64::to_le_bytes)
        .collect();
    owned.push((
        format!("{prefix}embeddings.position_ids"),
        Dtype::I64,
        vec![1, TINY_POSITIONS],
        position_ids,
    ));
    serialize(&owned)
}

/// Serialises raw (name, dtype, shape, bytes) entries.
pub fn serialize(entries: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = entries
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).unwrap();
            assert_eq!(view.data_len(), bytes.len());
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// A minimal BERT WordPiece tokenizer.json (lower-casing, [CLS] … [SEP] template).
pub const TINY_TOKENIZER: &str = r###"{
  "version": "1.0",
  "truncation": {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0},
  "padding": {"strategy": {"Fixed": 12}, "direction": "Right", "pad_to_multiple_of": null,
              "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
  "added_tokens": [
    {"id": 0, "content": "[PAD]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "[UNK]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 2, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 3, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                 "strip_accents": null, "lowercase": true},
  "pre_tokenizer": {"type": "BertPreTokenizer"},
  "post_processor": {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
               {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
             {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
    "special_tokens": {
      "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
      "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
    }
  },
  "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
  "model": {
    "type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
    "max_input_chars_per_word": 100,
    "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4, "world": 5,
              "the": 6, "a": 7, "cat": 8, "sat": 9, "on": 10, "mat": 11, ".": 12, "##s": 13}
  }
}"###;

pub const CLS: u32 = 2;
pub const SEP: u32 = 3;

/// A sentence-transformers module list: Transformer, Pooling and (if `normalize`) Normalize.
pub fn modules_json(normalize: bool) -> String {
    let normalize = if normalize {
        r#", {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}"#
    } else {
        ""
    };
    format!(
        r#"[{{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}},
           {{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}}{normalize}]"#
    )
}

/// Writes a complete tiny model directory (F32, no prefix): config, weights, tokenizer, modules
/// with CLS pooling and Normalize, and sentence_bert_config with max_seq_length 6.
pub fn write_tiny_model(dir: &TempDir) {
    dir.write("config.json", tiny_config_json());
    dir.write(
        "model.safetensors",
        safetensors_bytes(&tiny_tensors(), "", Dtype::F32),
    );
    dir.write("tokenizer.json", TINY_TOKENIZER);
    dir.write("modules.json", modules_json(true));
    dir.write(
        "1_Pooling/config.json",
        format!(r#"{{"word_embedding_dimension": {TINY_HIDDEN}, "pooling_mode_cls_token": true}}"#),
    );
    dir.write(
        "sentence_bert_config.json",
        r#"{"max_seq_length": 6, "do_lower_case": false}"#,
    );
}
