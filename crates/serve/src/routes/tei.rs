//! text-embeddings-inference's routes, with its field names and defaults:
//!
//! - `POST /embed`: `inputs` (a string, token ids, or a list of strings and token-id lists),
//!   `normalize` (default true: L2-normalise; false returns the model's output as it is, which for a
//!   model whose pipeline ends in `Normalize`, as all-MiniLM-L6-v2's does, is already unit length),
//!   `truncate` (default: `--auto-truncate`), `truncation_direction` (`right`, the default, or `left`;
//!   TEI's `Right`/`Left` spelling too), `prompt_name` (refused: braid's models have no prompts).
//!   Response: a list of embeddings.
//! - `POST /tokenize`: `inputs` (a string or a list of strings), `add_special_tokens` (default true).
//!   Response: per input, its tokens `{id, text, special, start, stop}` (byte offsets).
//! - `GET /info`: the model, dtype, device, limits and version.
//! - `GET /health`: 200 once the model is loaded and a warm-up forward passed on every device, while
//!   at least one device the engine drives is healthy; 503 before that, once shutdown began, and when
//!   every device has failed. Once loaded, the body is JSON: `status` (`ok` or `unhealthy`) and
//!   `devices`, each `{device, backend, healthy, failure, batches, sequences, inflight_tokens,
//!   requeued_sequences}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use braid_model::TruncationSide;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{body_json, embedded};
use crate::errors::{ApiError, Kind, TeiError};
use crate::input::{parse_inputs, Input};
use crate::observe::Tokens;
use crate::state::AppState;

#[derive(Deserialize)]
struct EmbedRequest {
    #[serde(default)]
    inputs: Value,
    #[serde(default = "yes")]
    normalize: bool,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
    #[serde(default)]
    prompt_name: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Default, Deserialize)]
enum Direction {
    #[serde(alias = "left")]
    Left,
    #[default]
    #[serde(alias = "right")]
    Right,
}

impl From<Direction> for TruncationSide {
    fn from(direction: Direction) -> Self {
        match direction {
            Direction::Left => Self::Left,
            Direction::Right => Self::Right,
        }
    }
}

/// `POST /embed` (module doc).
pub(super) async fn embed(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, TeiError> {
    const ROUTE: &str = "/embed";
    let request: EmbedRequest = body_json(body, state.config.payload_limit)?;
    refuse_prompt(request.prompt_name.as_deref())?;
    let loaded = state.loaded()?;
    let inputs = parse_inputs(request.inputs, "inputs")?;
    metrics::histogram!("braid_serve_inputs_per_request", "route" => ROUTE)
        .record(inputs.len() as f64);
    let truncate = request.truncate.unwrap_or(loaded.limits.auto_truncate);
    let prepared = state
        .prepare(
            ROUTE,
            inputs,
            truncate,
            request.truncation_direction.into(),
            "inputs",
        )
        .await?;
    let (tokens, truncated) = (prepared.tokens, prepared.truncated);
    let mut embeddings = state.embed(ROUTE, prepared.encodings).await?;
    if request.normalize {
        let dim = loaded.model.dim();
        embeddings
            .iter_mut()
            .for_each(|values| super::openai::shorten(values, dim));
    }
    Ok(embedded(Json(embeddings), tokens, truncated))
}

fn refuse_prompt(prompt_name: Option<&str>) -> Result<(), ApiError> {
    match prompt_name {
        None => Ok(()),
        Some(name) => Err(ApiError::new(
            Kind::InvalidField,
            format!(
                "`prompt_name` {name:?}: this model has no prompts (leave the field out, or put \
                 the prompt in the text)"
            ),
        )
        .on("prompt_name")),
    }
}

#[derive(Deserialize)]
struct TokenizeRequest {
    #[serde(default)]
    inputs: Value,
    #[serde(default = "yes")]
    add_special_tokens: bool,
    #[serde(default)]
    prompt_name: Option<String>,
}

#[derive(Serialize)]
struct SimpleToken {
    id: u32,
    text: String,
    special: bool,
    start: Option<usize>,
    stop: Option<usize>,
}

/// `POST /tokenize` (module doc).
pub(super) async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, TeiError> {
    let request: TokenizeRequest = body_json(body, state.config.payload_limit)?;
    refuse_prompt(request.prompt_name.as_deref())?;
    let loaded = state.loaded()?;
    let texts = parse_inputs(request.inputs, "inputs")?
        .into_iter()
        .map(|input| match input {
            Input::Text(text) => Ok(text),
            Input::Ids(_) => Err(ApiError::new(
                Kind::InvalidField,
                "`inputs` of /tokenize must be a string or a list of strings (token ids are \
                 already tokenized)",
            )
            .on("inputs")),
        })
        .collect::<Result<Vec<String>, ApiError>>()?;
    loaded.limits.check_count(texts.len(), "inputs")?;
    let model = loaded.model.clone();
    let special = request.add_special_tokens;
    let tokens = tokio::task::spawn_blocking(move || {
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                model
                    .spec()
                    .tokenizer
                    .tokens(text, special)
                    .map_err(|error| {
                        ApiError::new(Kind::InputTooLong, format!("`inputs[{index}]`: {error}"))
                            .on("inputs")
                    })
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await
    .map_err(|e| ApiError::new(Kind::Internal, format!("tokenizing failed: {e}")))??;
    let count = tokens.iter().map(Vec::len).sum();
    let body: Vec<Vec<SimpleToken>> = tokens
        .into_iter()
        .map(|tokens| {
            tokens
                .into_iter()
                .map(|t| SimpleToken {
                    id: t.id,
                    text: t.text,
                    special: t.special,
                    start: t.start,
                    stop: t.stop,
                })
                .collect()
        })
        .collect();
    let mut response = Json(body).into_response();
    response.extensions_mut().insert(Tokens(count));
    Ok(response)
}

/// `GET /info` (module doc).
pub(super) async fn info(State(state): State<Arc<AppState>>) -> Result<Response, TeiError> {
    let loaded = state.loaded()?;
    let model = &loaded.model;
    let engine = loaded.engine.config();
    let config = &state.config;
    Ok(Json(json!({
        "model_id": config.model_name,
        "model_sha": null,
        "model_dtype": model.dtype().to_string(),
        "model_type": {"embedding": {"pooling": format!("{:?}", model.spec().pooling.mode).to_lowercase()}},
        "dimension": model.dim(),
        "device": model.device_description(),
        "devices": loaded.engine.devices().into_iter().map(|d| d.name).collect::<Vec<_>>(),
        "backend": model.backend(),
        "engine_mode": loaded.engine.mode().to_string(),
        "max_concurrent_requests": config.max_concurrent_requests,
        "max_input_length": loaded.limits.max_input_tokens,
        "max_batch_tokens": engine.max_batch_tokens,
        "max_batch_requests": engine.max_batch_size,
        "max_client_batch_size": config.max_client_batch_size,
        "auto_truncate": config.auto_truncate,
        "payload_limit": config.payload_limit,
        "tokenization_workers": null,
        "version": env!("CARGO_PKG_VERSION"),
        "sha": null,
        "docker_label": null,
        "uptime_seconds": state.started.elapsed().as_secs(),
    }))
    .into_response())
}

/// `GET /health` (module doc).
pub(super) async fn health(State(state): State<Arc<AppState>>) -> Result<Response, TeiError> {
    let loaded = state.loaded()?;
    let devices = loaded.engine.devices();
    let healthy = devices.iter().any(|d| d.healthy);
    let devices: Vec<Value> = devices
        .iter()
        .map(|d| {
            json!({
                "device": d.name,
                "backend": d.backend,
                "healthy": d.healthy,
                "failure": d.failure,
                "batches": d.batches,
                "sequences": d.sequences,
                "inflight_tokens": d.inflight_tokens,
                "requeued_sequences": d.requeued_sequences,
            })
        })
        .collect();
    let (status, word) = if healthy {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    };
    Ok((status, Json(json!({ "status": word, "devices": devices }))).into_response())
}
