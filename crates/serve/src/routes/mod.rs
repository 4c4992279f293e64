//! The HTTP surface: [`router`] puts the routes of both APIs behind the shared layers, and this file
//! holds what they share (the JSON body reader [`body_json`], the 404 and 405 answers, `/metrics`).
//!
//! | route | API | needs a key | needs a request permit |
//! |---|---|---|---|
//! | `POST /v1/embeddings` | OpenAI (`openai`) | yes | yes |
//! | `POST /embed`, `POST /tokenize` | TEI (`tei`) | yes | yes |
//! | `GET /info` | TEI | yes | no |
//! | `GET /health`, `GET /metrics` | TEI / Prometheus | no | no |
//!
//! Layers, outermost first: `observe` (log line, request metrics), `auth` (the key), `limits::deadline`
//! (request timeout), the body limit, and on the embedding routes `limits::admit` (concurrency).

mod openai;
mod tei;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;

use crate::errors::{Api, ApiError, Kind};
use crate::observe::Tokens;
use crate::state::AppState;
use crate::{auth, limits, observe};

/// Every route (also the label set of the request metrics).
pub const ROUTES: &[&str] = &[
    "/v1/embeddings",
    "/embed",
    "/tokenize",
    "/info",
    "/health",
    "/metrics",
];

/// The application: both APIs' routes behind the shared layers (module doc).
pub fn router(state: Arc<AppState>) -> Router {
    let embedding = Router::new()
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/embed", post(tei::embed))
        .route("/tokenize", post(tei::tokenize))
        .route_layer(from_fn_with_state(state.clone(), limits::admit));
    let probes = Router::new()
        .route("/info", get(tei::info))
        .route("/health", get(tei::health))
        .route("/metrics", get(metrics_text));
    embedding
        .merge(probes)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.payload_limit))
        .layer(from_fn_with_state(state.clone(), limits::deadline))
        .layer(from_fn_with_state(state.clone(), auth::require_key))
        .layer(from_fn(observe::observe))
        .with_state(state)
}

/// A JSON request body as `T`: a body over `--payload-limit` is a 413, one that is not UTF-8 or not
/// JSON a 400, a wrong field a 422, each naming what was wrong.
pub(crate) fn body_json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    payload_limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                Kind::PayloadTooLarge,
                format!(
                    "the request body is larger than the limit of {payload_limit} bytes \
                     (--payload-limit)"
                ),
            )
        } else {
            ApiError::new(
                Kind::InvalidJson,
                format!("cannot read the request body: {}", rejection.body_text()),
            )
        }
    })?;
    if let Err(error) = std::str::from_utf8(&bytes) {
        return Err(ApiError::new(
            Kind::InvalidJson,
            format!(
                "the request body is not UTF-8 (invalid byte at offset {}); send JSON in UTF-8",
                error.valid_up_to()
            ),
        ));
    }
    serde_json::from_slice(&bytes).map_err(|error| ApiError::from_json(&error))
}

/// An embedding response: its token count for the request log, and `x-truncated-inputs` when inputs
/// were truncated (`--auto-truncate` or TEI's `truncate`), so a client can tell.
pub(crate) fn embedded(body: impl IntoResponse, tokens: usize, truncated: usize) -> Response {
    let mut response = body.into_response();
    response.extensions_mut().insert(Tokens(tokens));
    if truncated > 0 {
        response
            .headers_mut()
            .insert("x-truncated-inputs", truncated.into());
    }
    response
}

async fn not_found(uri: Uri) -> Response {
    ApiError::new(
        Kind::NotFound,
        format!(
            "no route {}; the routes are POST /v1/embeddings, POST /embed, POST /tokenize, \
             GET /info, GET /health and GET /metrics",
            uri.path()
        ),
    )
    .to_response(Api::for_path(uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let allowed = match uri.path() {
        "/v1/embeddings" | "/embed" | "/tokenize" => "POST",
        _ => "GET",
    };
    let mut response = ApiError::new(
        Kind::MethodNotAllowed,
        format!("{} does not take {method}; use {allowed}", uri.path()),
    )
    .to_response(Api::for_path(uri.path()));
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allowed));
    response
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&state),
    )
        .into_response()
}
