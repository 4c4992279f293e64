//! `BertConfig`: the encoder's hyper-parameters, read from a Hugging Face `config.json`.
//!
//! Promise: a `BertConfig` that exists is one braid's BERT forward can run. Parsing checks the
//! values the forward depends on (activation, head split, positive sizes, absolute position
//! embeddings, model type) and refuses anything else with a message naming the field and what is
//! allowed. Fields the forward does not use (dropout, initializer range, architectures, ...) are
//! ignored, so any `BertModel`-family checkpoint loads whatever else its config carries.
//!
//! Defaults follow transformers' `BertConfig` for the fields it defaults and that old configs
//! sometimes omit (`hidden_act`, `layer_norm_eps`, `max_position_embeddings`, `type_vocab_size`,
//! `pad_token_id`, `position_embedding_type`); a missing `model_type` (configs written before
//! transformers recorded it) is read as `bert`. The five fields that fix tensor shapes are
//! required.

use std::path::Path;

use serde::Deserialize;

use crate::error::{read_text, ModelError, Result};

/// Model types whose checkpoints have BERT's layout and semantics: word + absolute position +
/// token type embeddings, post-LayerNorm encoder layers, tensor names as in `BertModel`.
const BERT_FAMILY: &[&str] = &["bert"];

/// The feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// GELU with the exact erf form (`gelu`).
    Gelu,
    /// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// ReLU (`relu`).
    Relu,
}

impl Activation {
    /// The `hidden_act` values braid accepts, as written in config.json.
    pub const ACCEPTED: &'static [&'static str] =
        &["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"];

    /// Parses a config.json `hidden_act` value.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }
}

/// A validated BERT encoder configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Rows of the word embedding table.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; divides `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    pub hidden_act: Activation,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f64,
    /// Rows of the position embedding table: the longest sequence the model can take.
    pub max_position_embeddings: usize,
    /// Rows of the token type embedding table.
    pub type_vocab_size: usize,
    /// Token id used for padding.
    pub pad_token_id: u32,
    /// `model_type` from config.json (one of the BERT family).
    pub model_type: String,
}

/// config.json as written, before validation.
#[derive(Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    #[serde(default = "default_layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_max_position_embeddings")]
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    type_vocab_size: usize,
    // `null` is read as the default too.
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default = "default_model_type")]
    model_type: String,
    #[serde(default = "default_position_embedding_type")]
    position_embedding_type: String,
}

fn default_hidden_act() -> String {
    "gelu".to_owned()
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_max_position_embeddings() -> usize {
    512
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_model_type() -> String {
    "bert".to_owned()
}
fn default_position_embedding_type() -> String {
    "absolute".to_owned()
}

impl BertConfig {
    /// Reads and validates a config.json file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse(&read_text(path)?, path)
    }

    /// Parses and validates config.json text; `path` is used in error messages only.
    pub fn parse(json: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|source| ModelError::Json {
            path: path.to_owned(),
            what: "a BERT config.json",
            source,
        })?;
        let unsupported =
            |field: &'static str, value: String, allowed: String| ModelError::UnsupportedConfig {
                path: path.to_owned(),
                field,
                value,
                allowed,
            };

        if !BERT_FAMILY.contains(&raw.model_type.as_str()) {
            return Err(unsupported(
                "model_type",
                format!("{:?}", raw.model_type),
                format!("braid loads BERT-family encoders: one of {BERT_FAMILY:?}"),
            ));
        }
        let hidden_act = Activation::from_name(&raw.hidden_act).ok_or_else(|| {
            unsupported(
                "hidden_act",
                format!("{:?}", raw.hidden_act),
                format!("one of {:?}", Activation::ACCEPTED),
            )
        })?;
        if raw.position_embedding_type != "absolute" {
            return Err(unsupported(
                "position_embedding_type",
                format!("{:?}", raw.position_embedding_type),
                "only \"absolute\" position embeddings are supported".to_owned(),
            ));
        }
        for (field, value) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
            ("intermediate_size", raw.intermediate_size),
            ("max_position_embeddings", raw.max_position_embeddings),
            ("type_vocab_size", raw.type_vocab_size),
        ] {
            if value == 0 {
                return Err(unsupported(
                    field,
                    "0".to_owned(),
                    "it must be at least 1".to_owned(),
                ));
            }
        }
        if raw.hidden_size % raw.num_attention_heads != 0 {
            return Err(unsupported(
                "hidden_size",
                raw.hidden_size.to_string(),
                format!(
                    "it must be divisible by num_attention_heads = {}",
                    raw.num_attention_heads
                ),
            ));
        }
        if !(raw.layer_norm_eps.is_finite() && raw.layer_norm_eps > 0.0) {
            return Err(unsupported(
                "layer_norm_eps",
                raw.layer_norm_eps.to_string(),
                "it must be a positive finite number".to_owned(),
            ));
        }
        let pad_token_id = raw.pad_token_id.unwrap_or(0);
        if pad_token_id as usize >= raw.vocab_size {
            return Err(unsupported(
                "pad_token_id",
                pad_token_id.to_string(),
                format!("it must be below vocab_size = {}", raw.vocab_size),
            ));
        }

        Ok(Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            hidden_act,
            layer_norm_eps: raw.layer_norm_eps,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            pad_token_id,
            model_type: raw.model_type,
        })
    }

    /// Width of one attention head: `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 16}"#;

    fn parse(json: &str) -> Result<BertConfig> {
        BertConfig::parse(json, Path::new("config.json"))
    }

    /// `MINIMAL` with one field added or replaced.
    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    fn unsupported_field(json: &str) -> &'static str {
        match parse(json) {
            Err(ModelError::UnsupportedConfig { field, .. }) => field,
            other => panic!("expected UnsupportedConfig, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_optional_fields() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.hidden_act, Activation::Gelu);
        assert_eq!(c.layer_norm_eps, 1e-12);
        assert_eq!(c.max_position_embeddings, 512);
        assert_eq!(c.type_vocab_size, 2);
        assert_eq!(c.pad_token_id, 0);
        assert_eq!(c.model_type, "bert");
        assert_eq!(c.head_dim(), 4);
    }

    #[test]
    fn unknown_fields_and_null_pad_are_accepted() {
        let json = with("architectures", r#"["BertForMaskedLM"]"#);
        let json = json.replace(
            '}',
            r#", "pad_token_id": null, "gradient_checkpointing": false}"#,
        );
        assert_eq!(parse(&json).unwrap().pad_token_id, 0);
    }

    #[test]
    fn activations() {
        for (name, act) in [
            ("gelu", Activation::Gelu),
            ("gelu_new", Activation::GeluTanh),
            ("gelu_pytorch_tanh", Activation::GeluTanh),
            ("relu", Activation::Relu),
        ] {
            let c = parse(&with("hidden_act", &format!("{name:?}"))).unwrap();
            assert_eq!(c.hidden_act, act, "{name}");
        }
        assert_eq!(
            unsupported_field(&with("hidden_act", r#""swish""#)),
            "hidden_act"
        );
    }

    #[test]
    fn rejects_what_the_forward_cannot_run() {
        assert_eq!(unsupported_field(&with("hidden_size", "9")), "hidden_size");
        assert_eq!(
            unsupported_field(&with("num_attention_heads", "0")),
            "num_attention_heads"
        );
        assert_eq!(
            unsupported_field(&with("model_type", r#""roberta""#)),
            "model_type"
        );
        assert_eq!(
            unsupported_field(&with("position_embedding_type", r#""relative_key""#)),
            "position_embedding_type"
        );
        assert_eq!(
            unsupported_field(&with("layer_norm_eps", "-1.0")),
            "layer_norm_eps"
        );
        assert_eq!(
            unsupported_field(&with("pad_token_id", "30")),
            "pad_token_id"
        );
    }

    #[test]
    fn missing_shape_field_is_a_json_error_naming_it() {
        let err = parse(r#"{"vocab_size": 30}"#).unwrap_err();
        assert!(matches!(err, ModelError::Json { .. }), "{err:?}");
        assert!(err.to_string().contains("hidden_size"), "{err}");
    }
}
