//! A model whose weights hold NaN or infinity gives a clear error naming the input, not a finite,
//! wrong embedding: tiny random checkpoints (tests/common) with one poisoned tensor, run on the
//! CPU backend through `BertModel::embed`.
//!
//! NaN query weights are the case that used to pass silently: every attention score of the layer
//! is NaN, the softmax's max skipped NaN and took the rows for fully masked (zeros), and the
//! LayerNorm after attention turned the zeros back into a finite embedding.

mod common;

use std::sync::Arc;

use braid_model::{BertModel, ModelDir, ModelError};
use braid_runtime::cpu::CpuDevice;
use braid_runtime::{DType, Runtime, RuntimeConfig};
use common::*;
use safetensors::Dtype;

/// Embeds `texts` with the tiny model whose tensor `name` has `value` at `positions`.
fn embed_poisoned(
    name: &str,
    positions: &[usize],
    value: f32,
    texts: &[&str],
) -> braid_model::Result<Vec<Vec<f32>>> {
    let dir = TempDir::new("non-finite");
    write_tiny_model(&dir);
    let mut tensors = tiny_tensors();
    let (_, values) = tensors.get_mut(name).expect("a tiny tensor");
    for &i in positions {
        values[i] = value;
    }
    dir.write(
        "model.safetensors",
        safetensors_bytes(&tensors, "", Dtype::F32),
    );
    let runtime = Arc::new(Runtime::new(CpuDevice::new(), RuntimeConfig::default()).unwrap());
    let model = BertModel::load(runtime, &ModelDir::open(dir.path()).unwrap(), DType::F32)?;
    model.embed(texts)
}

fn assert_non_finite(result: braid_model::Result<Vec<Vec<f32>>>, want_index: usize, what: &str) {
    match result {
        Err(ModelError::NonFiniteEmbedding {
            index,
            batch,
            value,
        }) => {
            assert_eq!(index, want_index, "{what}");
            assert_eq!(batch, 3, "{what}");
            assert!(!value.is_finite(), "{what}: {value}");
        }
        other => panic!("{what}: expected NonFiniteEmbedding, got {other:?}"),
    }
}

const TEXTS: [&str; 3] = ["hello world", "the cat sat", "a mat"];

#[test]
fn the_clean_tiny_model_embeds() {
    let all = embed_poisoned("pooler.dense.bias", &[], 0.0, &TEXTS).unwrap();
    assert!(all.iter().flatten().all(|v| v.is_finite()));
}

#[test]
fn nan_query_weights_are_an_error_not_a_finite_embedding() {
    let everywhere: Vec<usize> = (0..TINY_HIDDEN * TINY_HIDDEN).collect();
    assert_non_finite(
        embed_poisoned(
            "encoder.layer.1.attention.self.query.weight",
            &everywhere,
            f32::NAN,
            &TEXTS,
        ),
        0,
        "NaN query weights",
    );
}

#[test]
fn infinite_weights_are_an_error() {
    assert_non_finite(
        embed_poisoned(
            "encoder.layer.0.output.dense.weight",
            &[3],
            f32::INFINITY,
            &TEXTS,
        ),
        0,
        "an infinite FFN weight",
    );
    assert_non_finite(
        embed_poisoned(
            "encoder.layer.0.attention.self.key.bias",
            &[0],
            f32::NEG_INFINITY,
            &TEXTS,
        ),
        0,
        "a -inf key bias",
    );
}

#[test]
fn the_error_names_the_input_whose_token_is_poisoned() {
    // Row 8 of the word embeddings is "cat": only the second input holds it.
    let row: Vec<usize> = (8 * TINY_HIDDEN..9 * TINY_HIDDEN).collect();
    let result = embed_poisoned("embeddings.word_embeddings.weight", &row, f32::NAN, &TEXTS);
    let message = match &result {
        Err(e) => e.to_string(),
        Ok(_) => String::new(),
    };
    assert_non_finite(result, 1, "a NaN word embedding");
    assert!(
        message.contains("input 1") && message.contains("weights") && message.contains("f16"),
        "{message}"
    );
}
