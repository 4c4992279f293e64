//! Every way a model directory can be wrong gives the matching `ModelError`, and its message names
//! the file and says what is allowed or how to fix it. Directories are built in the test from the
//! tiny model in `common`, so these tests do not need the real model.

mod common;

use braid_model::{BertWeights, ModelDir, ModelError};
use common::*;
use safetensors::Dtype;

/// A tiny model directory with `edit` applied, opened and fully loaded; returns the error.
fn load_error(name: &str, edit: impl FnOnce(&TempDir)) -> (TempDir, ModelError) {
    let dir = TempDir::new(name);
    write_tiny_model(&dir);
    edit(&dir);
    let result = ModelDir::open(dir.path()).and_then(|m| {
        let spec = m.load_spec()?;
        m.load_weights(&spec.config)
    });
    match result {
        Ok(_) => panic!("{name}: the model loaded, but an error was expected"),
        Err(e) => (dir, e),
    }
}

fn assert_mentions(err: &ModelError, parts: &[&str]) {
    let msg = err.to_string();
    for part in parts {
        assert!(
            msg.contains(part),
            "message {msg:?} should mention {part:?}"
        );
    }
}

#[test]
fn tiny_model_loads_before_any_edit() {
    let dir = TempDir::new("baseline");
    write_tiny_model(&dir);
    let m = ModelDir::open(dir.path()).unwrap();
    let spec = m.load_spec().unwrap();
    m.load_weights(&spec.config).unwrap();
}

#[test]
fn missing_model_directory() {
    let dir = TempDir::new("absent");
    let missing = dir.join("no-such-model");
    let err = ModelDir::open(&missing).unwrap_err();
    assert!(
        matches!(&err, ModelError::ModelDirNotFound { path } if *path == missing),
        "{err:?}"
    );
    assert_mentions(
        &err,
        &[
            "no-such-model",
            "braid fetch-model",
            "--model",
            "BRAID_MODEL",
        ],
    );

    // A file is not a directory.
    let file = dir.write("file", "x");
    assert!(matches!(
        ModelDir::open(file),
        Err(ModelError::ModelDirNotFound { .. })
    ));
}

#[test]
fn missing_each_required_file() {
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "1_Pooling/config.json",
    ] {
        let (dir, err) = load_error("missing", |d| std::fs::remove_file(d.join(file)).unwrap());
        match &err {
            ModelError::MissingFile { path, .. } => assert_eq!(*path, dir.join(file), "{file}"),
            other => panic!("{file}: expected MissingFile, got {other:?}"),
        }
        assert_mentions(&err, &[file, "braid fetch-model"]);
    }
}

#[test]
fn corrupt_config_json() {
    let (_dir, err) = load_error("corrupt-config", |d| {
        d.write("config.json", "{\"vocab_size\": 30, \"hidden_size\": ");
    });
    assert!(matches!(err, ModelError::Json { .. }), "{err:?}");
    assert_mentions(&err, &["config.json", "line"]);
}

#[test]
fn hidden_size_not_divisible_by_heads() {
    let (_dir, err) = load_error("heads", |d| {
        d.write(
            "config.json",
            tiny_config_json().replace("\"num_attention_heads\": 2", "\"num_attention_heads\": 3"),
        );
    });
    assert!(
        matches!(
            err,
            ModelError::UnsupportedConfig {
                field: "hidden_size",
                ..
            }
        ),
        "{err:?}"
    );
    assert_mentions(
        &err,
        &["config.json", "hidden_size = 8", "num_attention_heads = 3"],
    );
}

#[test]
fn unsupported_activation() {
    let (_dir, err) = load_error("act", |d| {
        d.write(
            "config.json",
            tiny_config_json().replace("\"gelu\"", "\"silu\""),
        );
    });
    assert!(
        matches!(
            err,
            ModelError::UnsupportedConfig {
                field: "hidden_act",
                ..
            }
        ),
        "{err:?}"
    );
    assert_mentions(
        &err,
        &[
            "config.json",
            "silu",
            "gelu_new",
            "gelu_pytorch_tanh",
            "relu",
        ],
    );
}

#[test]
fn unsupported_model_type() {
    let (_dir, err) = load_error("type", |d| {
        d.write(
            "config.json",
            tiny_config_json().replace("\"bert\"", "\"distilbert\""),
        );
    });
    assert!(
        matches!(
            err,
            ModelError::UnsupportedConfig {
                field: "model_type",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn corrupt_modules_and_pooling_json() {
    let (_dir, err) = load_error("modules", |d| {
        d.write("modules.json", "{\"not\": \"a list\"}");
    });
    assert!(matches!(err, ModelError::Json { .. }), "{err:?}");
    assert_mentions(&err, &["modules.json"]);

    let (_dir, err) = load_error("pool-mode", |d| {
        d.write(
            "1_Pooling/config.json",
            r#"{"pooling_mode_mean_sqrt_len_tokens": true}"#,
        );
    });
    assert!(
        matches!(err, ModelError::UnsupportedConfig { .. }),
        "{err:?}"
    );
    assert_mentions(&err, &["1_Pooling", "mean_sqrt_len_tokens"]);
}

#[test]
fn corrupt_tokenizer_json() {
    let (_dir, err) = load_error("tokenizer", |d| {
        d.write("tokenizer.json", "{\"model\": 17}");
    });
    assert!(matches!(err, ModelError::Tokenizer { .. }), "{err:?}");
    assert_mentions(&err, &["tokenizer.json"]);
}

#[test]
fn truncated_or_corrupt_safetensors() {
    let good = safetensors_bytes(&tiny_tensors(), "", Dtype::F32);
    let cases: [(&str, Vec<u8>); 4] = [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("header-only", good[..good.len() - 4].to_vec()),
        ("garbage", b"this is not a safetensors file at all".to_vec()),
        ("empty", Vec::new()),
    ];
    for (name, bytes) in cases {
        let (_dir, err) = load_error(name, |d| {
            d.write("model.safetensors", &bytes);
        });
        assert!(
            matches!(err, ModelError::Safetensors { .. }),
            "{name}: {err:?}"
        );
        assert_mentions(&err, &["model.safetensors", "truncated or corrupt"]);
    }
}

#[test]
fn tensor_with_the_wrong_shape() {
    let mut tensors = tiny_tensors();
    let name = "encoder.layer.1.intermediate.dense.weight";
    tensors.insert(
        name.to_owned(),
        (
            vec![TINY_INTERMEDIATE + 1, TINY_HIDDEN],
            vec![0.5; (TINY_INTERMEDIATE + 1) * TINY_HIDDEN],
        ),
    );
    let (_dir, err) = load_error("shape", |d| {
        d.write(
            "model.safetensors",
            safetensors_bytes(&tensors, "bert.", Dtype::F32),
        );
    });
    match &err {
        ModelError::TensorShape {
            name: n,
            expected,
            found,
            ..
        } => {
            assert_eq!(n, &format!("bert.{name}"));
            assert_eq!(expected, &[TINY_INTERMEDIATE, TINY_HIDDEN]);
            assert_eq!(found, &[TINY_INTERMEDIATE + 1, TINY_HIDDEN]);
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }
    assert_mentions(&err, &["model.safetensors", name, "[16, 8]", "[17, 8]"]);
}

#[test]
fn missing_tensor() {
    let mut tensors = tiny_tensors();
    tensors.remove("encoder.layer.0.attention.self.value.bias");
    let (_dir, err) = load_error("missing-tensor", |d| {
        d.write(
            "model.safetensors",
            safetensors_bytes(&tensors, "", Dtype::F32),
        );
    });
    assert!(
        matches!(&err, ModelError::MissingTensor { name, .. }
            if name == "encoder.layer.0.attention.self.value.bias"),
        "{err:?}"
    );

    // No word embeddings at all: not a BERT checkpoint.
    let mut tensors = tiny_tensors();
    tensors.remove("embeddings.word_embeddings.weight");
    let (_dir, err) = load_error("no-anchor", |d| {
        d.write(
            "model.safetensors",
            safetensors_bytes(&tensors, "", Dtype::F32),
        );
    });
    assert!(
        matches!(&err, ModelError::MissingTensor { name, .. }
            if name == "embeddings.word_embeddings.weight"),
        "{err:?}"
    );
}

#[test]
fn more_layers_than_the_config() {
    let (_dir, err) = load_error("layers", |d| {
        d.write(
            "config.json",
            tiny_config_json().replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
        );
    });
    assert!(
        matches!(err, ModelError::ExtraLayer { layers: 1, .. }),
        "{err:?}"
    );
    assert_mentions(&err, &["encoder.layer.1.", "num_hidden_layers = 1"]);
}

#[test]
fn unsupported_dtype() {
    let dir = TempDir::new("dtype");
    // Every tensor F32 except one stored as I32.
    let mut entries: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tiny_tensors()
        .into_iter()
        .map(|(name, (shape, values))| {
            (
                name,
                Dtype::F32,
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let entry = entries
        .iter_mut()
        .find(|e| e.0 == "embeddings.LayerNorm.bias")
        .unwrap();
    entry.1 = Dtype::I32;
    let path = dir.write("model.safetensors", serialize(&entries));
    let config =
        braid_model::BertConfig::parse(&tiny_config_json(), &dir.join("config.json")).unwrap();
    let err = BertWeights::load(&path, &config).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedDtype { name, .. }
            if name == "embeddings.LayerNorm.bias"),
        "{err:?}"
    );
    assert_mentions(&err, &["I32", "F32, F16 and BF16"]);
}

#[test]
fn max_seq_length_beyond_the_position_table() {
    let (_dir, err) = load_error("seq", |d| {
        d.write("sentence_bert_config.json", r#"{"max_seq_length": 17}"#);
    });
    assert!(
        matches!(
            err,
            ModelError::UnsupportedConfig {
                field: "max_seq_length",
                ..
            }
        ),
        "{err:?}"
    );
    assert_mentions(
        &err,
        &["sentence_bert_config.json", "max_position_embeddings = 16"],
    );
}
