//! all-MiniLM-L6-v2 as shipped: token ids against the golden fixture, the parsed spec, and the
//! weights against the raw safetensors file. Fails (with how to fetch) when the model is absent.

mod common;

use braid_model::{Activation, Pooling, PoolingConfig};
use common::{golden_cases, minilm_dir};

#[test]
fn token_ids_match_the_golden_fixture() {
    let cases = golden_cases();
    assert_eq!(cases.len(), 34, "the fixture holds 34 cases");
    let spec = minilm_dir().load_spec().unwrap();
    for case in &cases {
        let encoding = spec.tokenizer.encode(&case.text).unwrap();
        assert_eq!(encoding.ids, case.ids, "ids for {:?}", case.text);
        assert_eq!(
            encoding.type_ids,
            vec![0; case.ids.len()],
            "type ids for {:?}",
            case.text
        );
    }
}

#[test]
fn batch_token_ids_match_the_golden_fixture() {
    let cases = golden_cases();
    let spec = minilm_dir().load_spec().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let encodings = spec.tokenizer.encode_batch(&texts).unwrap();
    assert_eq!(encodings.len(), cases.len());
    for (encoding, case) in encodings.iter().zip(&cases) {
        assert_eq!(encoding.ids, case.ids, "batch ids for {:?}", case.text);
    }
}

#[test]
fn long_input_is_truncated_to_max_seq_length_keeping_cls_and_sep() {
    let cases = golden_cases();
    let spec = minilm_dir().load_spec().unwrap();
    let longest = cases.iter().max_by_key(|c| c.ids.len()).unwrap();
    assert_eq!(
        longest.ids.len(),
        256,
        "the fixture has a case at the truncation limit"
    );
    let ids = spec.tokenizer.encode(&longest.text).unwrap().ids;
    assert_eq!(ids.len(), 256);
    assert_eq!((ids[0], ids[255]), (101, 102), "[CLS] first, [SEP] last");

    // Far longer than 128 (the shipped tokenizer.json's limit) and than 256.
    let text = "word ".repeat(1000);
    let ids = spec.tokenizer.encode(&text).unwrap().ids;
    assert_eq!(ids.len(), 256);
    assert_eq!((ids[0], ids[255]), (101, 102));
    // No padding: a short input stays short (the shipped file pads to 128).
    assert_eq!(spec.tokenizer.encode("a").unwrap().ids, [101, 1037, 102]);
}

#[test]
fn spec_is_parsed() {
    let spec = minilm_dir().load_spec().unwrap();
    let c = &spec.config;
    assert_eq!(c.num_hidden_layers, 6);
    assert_eq!(c.hidden_size, 384);
    assert_eq!(c.num_attention_heads, 12);
    assert_eq!(c.head_dim(), 32);
    assert_eq!(c.intermediate_size, 1536);
    assert_eq!(c.vocab_size, 30522);
    assert_eq!(c.max_position_embeddings, 512);
    assert_eq!(c.type_vocab_size, 2);
    assert_eq!(c.hidden_act, Activation::Gelu);
    assert_eq!(c.layer_norm_eps, 1e-12);
    assert_eq!(c.pad_token_id, 0);
    assert_eq!(c.model_type, "bert");
    assert_eq!(
        spec.pooling,
        PoolingConfig {
            mode: Pooling::Mean,
            normalize: true
        }
    );
    assert_eq!(spec.max_seq_length, 256);
    assert_eq!(spec.tokenizer.max_seq_length(), 256);
}

#[test]
fn weights_have_the_config_shapes() {
    let dir = minilm_dir();
    let config = dir.load_config().unwrap();
    let w = dir.load_weights(&config).unwrap();
    assert_eq!(w.embeddings.word.shape, [30522, 384]);
    assert_eq!(w.embeddings.position.shape, [512, 384]);
    assert_eq!(w.embeddings.token_type.shape, [2, 384]);
    assert_eq!(w.embeddings.ln_gamma.shape, [384]);
    assert_eq!(w.embeddings.ln_beta.shape, [384]);
    assert_eq!(w.layers.len(), 6);
    for layer in &w.layers {
        assert_eq!(layer.qkv_weight.shape, [3 * 384, 384]);
        assert_eq!(layer.qkv_bias.shape, [3 * 384]);
        assert_eq!(layer.attn_out_weight.shape, [384, 384]);
        assert_eq!(layer.attn_out_bias.shape, [384]);
        assert_eq!(layer.attn_ln_gamma.shape, [384]);
        assert_eq!(layer.attn_ln_beta.shape, [384]);
        assert_eq!(layer.ffn_in_weight.shape, [1536, 384]);
        assert_eq!(layer.ffn_in_bias.shape, [1536]);
        assert_eq!(layer.ffn_out_weight.shape, [384, 1536]);
        assert_eq!(layer.ffn_out_bias.shape, [384]);
        assert_eq!(layer.ffn_ln_gamma.shape, [384]);
        assert_eq!(layer.ffn_ln_beta.shape, [384]);
        assert_eq!(layer.qkv_weight.numel(), layer.qkv_weight.data.len());
    }
}

/// Reads an F32 tensor straight from the file with the safetensors crate.
fn raw(tensors: &safetensors::SafeTensors<'_>, name: &str) -> Vec<f32> {
    let view = tensors.tensor(name).unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn qkv_is_query_key_value_in_that_order_and_values_are_untouched() {
    let dir = minilm_dir();
    let config = dir.load_config().unwrap();
    let w = dir.load_weights(&config).unwrap();
    let bytes = std::fs::read(dir.weights_path()).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let h = config.hidden_size;
    for (i, layer) in w
        .layers
        .iter()
        .enumerate()
        .filter(|(i, _)| [0, 5].contains(i))
    {
        for (k, part) in ["query", "key", "value"].into_iter().enumerate() {
            let base = format!("encoder.layer.{i}.attention.self.{part}");
            let weight = raw(&file, &format!("{base}.weight"));
            let bias = raw(&file, &format!("{base}.bias"));
            assert_eq!(
                &layer.qkv_weight.data[k * h * h..(k + 1) * h * h],
                weight,
                "{base}.weight"
            );
            assert_eq!(
                &layer.qkv_bias.data[k * h..(k + 1) * h],
                bias,
                "{base}.bias"
            );
        }
        let base = format!("encoder.layer.{i}");
        assert_eq!(
            layer.ffn_in_weight.data,
            raw(&file, &format!("{base}.intermediate.dense.weight"))
        );
        assert_eq!(
            layer.ffn_ln_beta.data,
            raw(&file, &format!("{base}.output.LayerNorm.bias"))
        );
    }
    assert_eq!(
        w.embeddings.word.data,
        raw(&file, "embeddings.word_embeddings.weight")
    );
    assert_eq!(
        w.embeddings.ln_gamma.data,
        raw(&file, "embeddings.LayerNorm.weight")
    );
}
