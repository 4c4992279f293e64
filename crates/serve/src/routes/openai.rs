//! OpenAI's `POST /v1/embeddings`, as the official client libraries call it.
//!
//! Request: `input` (a string, a list of strings, a list of token ids or a list of such lists),
//! `model` (any name is accepted; the response names the model served), `encoding_format` (`float`,
//! the default, or `base64`: the little-endian f32 bytes, which the official Python client asks for
//! and decodes), `dimensions` (the first N values, L2-normalised again), `user` (ignored). Over-long
//! inputs follow `--auto-truncate` (this API has no per-request switch). Response:
//! `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model",
//! "usage": {"prompt_tokens", "total_tokens"}}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use base64::Engine as _;
use braid_model::TruncationSide;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{body_json, embedded};
use crate::errors::{ApiError, Kind, OpenAiError};
use crate::input::parse_inputs;
use crate::state::AppState;

const ROUTE: &str = "/v1/embeddings";

#[derive(Deserialize)]
struct EmbeddingsRequest {
    #[serde(default)]
    input: Value,
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<EncodingFormat>,
    #[serde(default)]
    dimensions: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    Float,
    Base64,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

#[derive(Serialize)]
struct EmbeddingsResponse<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: Usage,
}

/// `POST /v1/embeddings` (module doc).
pub(super) async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let request: EmbeddingsRequest = body_json(body, state.config.payload_limit)?;
    let loaded = state.loaded()?;
    let dim = loaded.model.dim();
    let dimensions = match request.dimensions {
        None => None,
        Some(d) if (1..=dim as u64).contains(&d) => Some(d as usize),
        Some(d) => {
            return Err(ApiError::new(
                Kind::InvalidField,
                format!("`dimensions` {d}: between 1 and the model's {dim}"),
            )
            .on("dimensions")
            .into())
        }
    };
    let inputs = parse_inputs(request.input, "input")?;
    metrics::histogram!("braid_serve_inputs_per_request", "route" => ROUTE)
        .record(inputs.len() as f64);
    let truncate = loaded.limits.auto_truncate;
    let prepared = state
        .prepare(ROUTE, inputs, truncate, TruncationSide::Right, "input")
        .await?;
    let tokens = prepared.tokens;
    let truncated = prepared.truncated;
    let embeddings = state.embed(ROUTE, prepared.encodings).await?;
    let base64 = request.encoding_format == Some(EncodingFormat::Base64);
    let data = embeddings
        .into_iter()
        .enumerate()
        .map(|(index, mut values)| {
            if let Some(d) = dimensions {
                shorten(&mut values, d);
            }
            let embedding = if base64 {
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Vector::Float(values)
            };
            Embedding {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let body = EmbeddingsResponse {
        object: "list",
        data,
        model: &state.config.model_name,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    Ok(embedded(Json(body), tokens, truncated))
}

/// Keeps the first `dimensions` values and scales them back to unit length (as OpenAI's shortened
/// embeddings are); an all-zero prefix stays zero.
pub(crate) fn shorten(values: &mut Vec<f32>, dimensions: usize) {
    values.truncate(dimensions);
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        values.iter_mut().for_each(|v| *v /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortened_embeddings_are_unit_length() {
        let mut values = vec![3.0, 4.0, 12.0];
        shorten(&mut values, 2);
        assert_eq!(values, [0.6, 0.8]);
        let mut zeros = vec![0.0, 0.0, 1.0];
        shorten(&mut zeros, 2);
        assert_eq!(zeros, [0.0, 0.0]);
    }
}
