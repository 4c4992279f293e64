//! Any BertModel-family checkpoint loads, whatever its size, name prefix or float storage: a tiny
//! random BERT (2 layers, hidden 8, 2 heads, intermediate 16, vocab 30) written in the test.

mod common;

use braid_model::{pad_batch, BertConfig, BertWeights, ModelDir, Pooling, PoolingConfig};
use common::*;
use safetensors::Dtype;

fn tiny_config() -> BertConfig {
    BertConfig::parse(&tiny_config_json(), std::path::Path::new("config.json")).unwrap()
}

/// Loads `tensors` written with `prefix` and `dtype`, and checks every value against `round`
/// applied to what was written.
fn load_and_check(name: &str, prefix: &str, dtype: Dtype, round: fn(f32) -> f32) {
    let dir = TempDir::new(name);
    let tensors = tiny_tensors();
    let path = dir.write(
        "model.safetensors",
        safetensors_bytes(&tensors, prefix, dtype),
    );
    let w = BertWeights::load(&path, &tiny_config()).unwrap();
    let expect = |name: &str| -> Vec<f32> { tensors[name].1.iter().map(|v| round(*v)).collect() };

    assert_eq!(w.embeddings.word.shape, [TINY_VOCAB, TINY_HIDDEN]);
    assert_eq!(
        w.embeddings.word.data,
        expect("embeddings.word_embeddings.weight")
    );
    assert_eq!(
        w.embeddings.position.data,
        expect("embeddings.position_embeddings.weight")
    );
    assert_eq!(
        w.embeddings.token_type.data,
        expect("embeddings.token_type_embeddings.weight")
    );
    assert_eq!(
        w.embeddings.ln_gamma.data,
        expect("embeddings.LayerNorm.weight")
    );
    assert_eq!(
        w.embeddings.ln_beta.data,
        expect("embeddings.LayerNorm.bias")
    );
    assert_eq!(w.layers.len(), TINY_LAYERS);
    for (i, layer) in w.layers.iter().enumerate() {
        let l = format!("encoder.layer.{i}");
        let qkv: Vec<f32> = ["query", "key", "value"]
            .iter()
            .flat_map(|p| expect(&format!("{l}.attention.self.{p}.weight")))
            .collect();
        let qkv_bias: Vec<f32> = ["query", "key", "value"]
            .iter()
            .flat_map(|p| expect(&format!("{l}.attention.self.{p}.bias")))
            .collect();
        assert_eq!(layer.qkv_weight.shape, [3 * TINY_HIDDEN, TINY_HIDDEN]);
        assert_eq!(layer.qkv_weight.data, qkv);
        assert_eq!(layer.qkv_bias.data, qkv_bias);
        assert_eq!(
            layer.attn_out_weight.data,
            expect(&format!("{l}.attention.output.dense.weight"))
        );
        assert_eq!(
            layer.attn_out_bias.data,
            expect(&format!("{l}.attention.output.dense.bias"))
        );
        assert_eq!(
            layer.attn_ln_gamma.data,
            expect(&format!("{l}.attention.output.LayerNorm.weight"))
        );
        assert_eq!(
            layer.attn_ln_beta.data,
            expect(&format!("{l}.attention.output.LayerNorm.bias"))
        );
        assert_eq!(layer.ffn_in_weight.shape, [TINY_INTERMEDIATE, TINY_HIDDEN]);
        assert_eq!(
            layer.ffn_in_weight.data,
            expect(&format!("{l}.intermediate.dense.weight"))
        );
        assert_eq!(
            layer.ffn_in_bias.data,
            expect(&format!("{l}.intermediate.dense.bias"))
        );
        assert_eq!(layer.ffn_out_weight.shape, [TINY_HIDDEN, TINY_INTERMEDIATE]);
        assert_eq!(
            layer.ffn_out_weight.data,
            expect(&format!("{l}.output.dense.weight"))
        );
        assert_eq!(
            layer.ffn_out_bias.data,
            expect(&format!("{l}.output.dense.bias"))
        );
        assert_eq!(
            layer.ffn_ln_gamma.data,
            expect(&format!("{l}.output.LayerNorm.weight"))
        );
        assert_eq!(
            layer.ffn_ln_beta.data,
            expect(&format!("{l}.output.LayerNorm.bias"))
        );
    }
}

#[test]
fn f32_without_prefix() {
    load_and_check("f32", "", Dtype::F32, |v| v);
}

#[test]
fn f32_with_bert_prefix() {
    load_and_check("f32-bert", "bert.", Dtype::F32, |v| v);
}

#[test]
fn f16_with_bert_prefix() {
    load_and_check("f16-bert", "bert.", Dtype::F16, |v| {
        half::f16::from_f32(v).to_f32()
    });
}

#[test]
fn f16_without_prefix() {
    load_and_check("f16", "", Dtype::F16, |v| half::f16::from_f32(v).to_f32());
}

#[test]
fn bf16_without_prefix() {
    load_and_check("bf16", "", Dtype::BF16, |v| {
        half::bf16::from_f32(v).to_f32()
    });
}

#[test]
fn old_gamma_beta_layer_norm_names() {
    let dir = TempDir::new("gamma-beta");
    let tensors: Tensors = tiny_tensors()
        .into_iter()
        .map(|(name, t)| {
            let name = name
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            (name, t)
        })
        .collect();
    let path = dir.write(
        "model.safetensors",
        safetensors_bytes(&tensors, "bert.", Dtype::F32),
    );
    let w = BertWeights::load(&path, &tiny_config()).unwrap();
    assert_eq!(
        w.embeddings.ln_gamma.data,
        tensors["embeddings.LayerNorm.gamma"].1
    );
    assert_eq!(
        w.layers[1].ffn_ln_beta.data,
        tensors["encoder.layer.1.output.LayerNorm.beta"].1
    );
}

#[test]
fn full_tiny_model_directory() {
    let dir = TempDir::new("full");
    write_tiny_model(&dir);
    let model = ModelDir::open(dir.path()).unwrap();
    let spec = model.load_spec().unwrap();
    assert_eq!(spec.config.num_hidden_layers, TINY_LAYERS);
    assert_eq!(
        spec.pooling,
        PoolingConfig {
            mode: Pooling::Cls,
            normalize: true
        }
    );
    assert_eq!(spec.max_seq_length, 6);
    let weights = model.load_weights(&spec.config).unwrap();
    assert_eq!(weights.layers.len(), TINY_LAYERS);

    // The file pads to 12 and truncates at 4; braid does neither and truncates at 6 instead.
    let short = spec.tokenizer.encode("Hello world").unwrap();
    assert_eq!(short.ids, [CLS, 4, 5, SEP]);
    let long = spec.tokenizer.encode("the cat sat on the mat.").unwrap();
    assert_eq!(long.ids, [CLS, 6, 8, 9, 10, SEP]);
    assert_eq!(long.type_ids, [0; 6]);
    assert_eq!(
        spec.tokenizer.encode("cats").unwrap().ids,
        [CLS, 8, 13, SEP]
    );

    let batch = spec
        .tokenizer
        .encode_batch(&["Hello world", "the cat sat on the mat."])
        .unwrap();
    assert_eq!(batch, [short, long]);
    let padded = pad_batch(&batch, spec.config.pad_token_id);
    assert_eq!((padded.batch, padded.seq), (2, 6));
    assert_eq!(&padded.ids[..6], [CLS, 4, 5, SEP, 0, 0]);
    assert_eq!(&padded.mask[..6], [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    assert_eq!(padded.positions, [0, 1, 2, 3, 0, 0, 0, 1, 2, 3, 4, 5]);
}

#[test]
fn plain_bert_directory_gets_mean_pooling_without_normalize() {
    let dir = TempDir::new("plain");
    write_tiny_model(&dir);
    for extra in [
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
    ] {
        std::fs::remove_file(dir.join(extra)).unwrap();
    }
    let spec = ModelDir::open(dir.path()).unwrap().load_spec().unwrap();
    assert_eq!(
        spec.pooling,
        PoolingConfig {
            mode: Pooling::Mean,
            normalize: false
        }
    );
    // min(512, max_position_embeddings = 16).
    assert_eq!(spec.max_seq_length, TINY_POSITIONS);
}

#[test]
fn transformer_module_in_a_subdirectory() {
    let dir = TempDir::new("subdir");
    write_tiny_model(&dir);
    std::fs::create_dir(dir.join("0_Transformer")).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "sentence_bert_config.json",
    ] {
        std::fs::rename(dir.join(f), dir.join(&format!("0_Transformer/{f}"))).unwrap();
    }
    dir.write(
        "modules.json",
        modules_json(false).replace(r#""path": """#, r#""path": "0_Transformer""#),
    );
    let model = ModelDir::open(dir.path()).unwrap();
    let spec = model.load_spec().unwrap();
    assert_eq!(
        spec.pooling,
        PoolingConfig {
            mode: Pooling::Cls,
            normalize: false
        }
    );
    assert_eq!(spec.max_seq_length, 6);
    model.load_weights(&spec.config).unwrap();
}

#[test]
fn do_lower_case_lowercases_before_tokenizing() {
    // The tiny tokenizer lower-cases anyway; this checks the flag is read and harmless.
    let dir = TempDir::new("lower");
    write_tiny_model(&dir);
    dir.write(
        "sentence_bert_config.json",
        r#"{"max_seq_length": 8, "do_lower_case": true}"#,
    );
    let spec = ModelDir::open(dir.path()).unwrap().load_spec().unwrap();
    assert_eq!(
        spec.tokenizer.encode("HELLO World").unwrap().ids,
        [CLS, 4, 5, SEP]
    );
    assert_eq!(
        spec.tokenizer.encode_batch(&["HELLO"]).unwrap()[0].ids,
        [CLS, 4, SEP]
    );
}
