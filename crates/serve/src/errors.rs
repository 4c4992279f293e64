//! Every way a request can fail, and how each API says so: one [`ApiError`] (a [`Kind`] and a message
//! saying what was wrong and what is allowed), rendered in the shape of the API the client spoke.
//!
//! - OpenAI (`/v1/...`): `{"error": {"message", "type", "param", "code"}}`, as OpenAI's API and its
//!   client libraries expect (`type` is `invalid_request_error`, `rate_limit_error` or
//!   `server_error`; `code` a stable name such as `context_length_exceeded`).
//! - text-embeddings-inference (every other path): `{"error", "error_type"}` (`validation`, `empty`,
//!   `tokenizer`, `overloaded`, `unhealthy`, `backend`, ...).
//!
//! One status per kind, the same for both APIs (TEI's choices where it has one: 413 for limits, 422
//! for a tokenizer error, 429 when overloaded, 503 when not ready), so a client can act on the status
//! alone. [`ApiError::to_response`] is the one place an error becomes a response.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use braid_engine::EngineError;
use serde_json::json;

/// Which API's error shape a response takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// OpenAI's (paths under `/v1/`).
    OpenAi,
    /// text-embeddings-inference's (every other path).
    Tei,
}

impl Api {
    /// The API a path belongs to: `/v1/...` is OpenAI's, the rest TEI's.
    pub fn for_path(path: &str) -> Self {
        if path.starts_with("/v1/") || path == "/v1" {
            Self::OpenAi
        } else {
            Self::Tei
        }
    }
}

/// What went wrong, as a client can act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The body is not JSON, or not UTF-8.
    InvalidJson,
    /// A field is missing or has the wrong type or value.
    InvalidField,
    /// An empty input list, string or token list.
    EmptyInput,
    /// More inputs than `--max-client-batch-size`.
    TooManyInputs,
    /// An input over `--max-input-tokens` (with truncation off) or over the 1 MiB input limit.
    InputTooLong,
    /// A token id outside the model's vocabulary.
    InvalidTokenId,
    /// A body over `--payload-limit`.
    PayloadTooLarge,
    /// A missing or wrong API key.
    Unauthorized,
    /// No such route.
    NotFound,
    /// The route exists; the method does not.
    MethodNotAllowed,
    /// `--max-concurrent-requests` in flight, or the engine's queue full.
    Overloaded,
    /// The request took longer than `--request-timeout`.
    Timeout,
    /// The model is still loading or warming up.
    NotReady,
    /// The server is shutting down.
    ShuttingDown,
    /// Every device the engine drives has failed (see `GET /health`).
    NoHealthyDevice,
    /// The model or engine failed (not the request's fault).
    Internal,
}

impl Kind {
    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidJson | Self::EmptyInput => StatusCode::BAD_REQUEST,
            Self::InvalidField | Self::InvalidTokenId => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyInputs | Self::InputTooLong | Self::PayloadTooLarge => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::NotReady | Self::ShuttingDown | Self::NoHealthyDevice => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`.
    fn openai_type(self) -> &'static str {
        match self {
            Self::Overloaded => "rate_limit_error",
            Self::Timeout
            | Self::NotReady
            | Self::ShuttingDown
            | Self::NoHealthyDevice
            | Self::Internal => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// OpenAI's `error.code`: a stable name for the kind.
    fn code(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidField => "invalid_value",
            Self::EmptyInput => "empty_input",
            Self::TooManyInputs => "too_many_inputs",
            Self::InputTooLong => "context_length_exceeded",
            Self::InvalidTokenId => "invalid_token_id",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unauthorized => "invalid_api_key",
            Self::NotFound => "unknown_url",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Overloaded => "rate_limit_exceeded",
            Self::Timeout => "timeout",
            Self::NotReady => "model_not_ready",
            Self::ShuttingDown => "shutting_down",
            Self::NoHealthyDevice => "no_healthy_device",
            Self::Internal => "internal_error",
        }
    }

    /// TEI's `error_type`.
    fn tei_type(self) -> &'static str {
        match self {
            Self::EmptyInput => "empty",
            Self::InvalidTokenId => "tokenizer",
            Self::Overloaded => "overloaded",
            Self::NotReady | Self::ShuttingDown | Self::NoHealthyDevice => "unhealthy",
            Self::Internal => "backend",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Timeout => "timeout",
            _ => "validation",
        }
    }
}

/// A failed request: what kind, what was wrong and what is allowed, and the field it concerns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The kind (decides the status).
    pub kind: Kind,
    /// A sentence for the person reading it.
    pub message: String,
    /// The request field it concerns (OpenAI's `param`), when there is one.
    pub param: Option<&'static str>,
}

impl ApiError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
        }
    }

    /// The same error, about request field `param`.
    pub fn on(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    /// The response in `api`'s shape.
    pub fn to_response(&self, api: Api) -> Response {
        let body = match api {
            Api::OpenAi => json!({
                "error": {
                    "message": self.message,
                    "type": self.kind.openai_type(),
                    "param": self.param,
                    "code": self.kind.code(),
                }
            }),
            Api::Tei => json!({ "error": self.message, "error_type": self.kind.tei_type() }),
        };
        let mut response = (self.kind.status(), axum::Json(body)).into_response();
        if self.kind == Kind::Unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(self.kind);
        response
    }

    /// The error for a JSON body serde refused: a syntax error (or bad UTF-8) is
    /// [`Kind::InvalidJson`], a wrong field [`Kind::InvalidField`].
    pub fn from_json(error: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data => Self::new(
                Kind::InvalidField,
                format!("the request body has a wrong field: {error}"),
            ),
            _ => Self::new(
                Kind::InvalidJson,
                format!("the request body is not valid JSON: {error}"),
            ),
        }
    }

    /// The error for an engine failure.
    pub fn from_engine(error: &EngineError) -> Self {
        let kind = match error {
            EngineError::Overloaded { .. } => Kind::Overloaded,
            EngineError::ShutDown => Kind::ShuttingDown,
            EngineError::NoHealthyDevice { .. } => Kind::NoHealthyDevice,
            _ if error.kind() == "input_too_long" => Kind::InputTooLong,
            _ => Kind::Internal,
        };
        Self::new(kind, error.to_string())
    }
}

/// An [`ApiError`] in OpenAI's shape (what `/v1/...` handlers return).
pub struct OpenAiError(pub ApiError);

/// An [`ApiError`] in TEI's shape (what the other handlers return).
pub struct TeiError(pub ApiError);

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        self.0.to_response(Api::OpenAi)
    }
}

impl IntoResponse for TeiError {
    fn into_response(self) -> Response {
        self.0.to_response(Api::Tei)
    }
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl From<ApiError> for TeiError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn each_api_gets_its_own_shape() {
        let error = ApiError::new(Kind::TooManyInputs, "3 inputs; at most 2").on("input");
        let openai = error.to_response(Api::for_path("/v1/embeddings"));
        assert_eq!(openai.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = body_of(openai).await;
        assert_eq!(body["error"]["message"], "3 inputs; at most 2");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "input");
        assert_eq!(body["error"]["code"], "too_many_inputs");

        let tei = error.to_response(Api::for_path("/embed"));
        let body = body_of(tei).await;
        assert_eq!(body["error"], "3 inputs; at most 2");
        assert_eq!(body["error_type"], "validation");
    }

    #[test]
    fn json_errors_split_into_syntax_and_fields() {
        let syntax = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        assert_eq!(ApiError::from_json(&syntax).kind, Kind::InvalidJson);
        let field = serde_json::from_str::<Vec<u32>>("[\"x\"]").unwrap_err();
        assert_eq!(ApiError::from_json(&field).kind, Kind::InvalidField);
    }
}
