//! Back-pressure and time limits, applied around the routes:
//!
//! - [`admit`]: at most `--max-concurrent-requests` requests in flight on the embedding routes; one
//!   more is refused at once with 429 naming the limit (a permit is taken with `try_acquire`, so
//!   nothing waits without bound). Probes, `/info` and `/metrics` need no permit.
//! - [`deadline`]: a request that takes longer than `--request-timeout` (a slow body upload included)
//!   is answered 408 and its work dropped (the engine skips what has not started).
//! - The body limit (`--payload-limit`) is axum's `DefaultBodyLimit` on the body extractor
//!   (`routes::body_json` turns its refusal into a 413 in the API's shape), and the header timeout is
//!   hyper's (`server`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::errors::{Api, ApiError, Kind};
use crate::state::AppState;

/// Takes a request permit or refuses with 429 (module doc).
pub async fn admit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match state.request_permits.clone().try_acquire_owned() {
        Ok(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        Err(_) => ApiError::new(
            Kind::Overloaded,
            format!(
                "{} requests are in flight, the most this server takes \
                 (--max-concurrent-requests); retry later",
                state.config.max_concurrent_requests
            ),
        )
        .to_response(Api::for_path(request.uri().path())),
    }
}

/// Answers 408 when the request outlives `--request-timeout` (module doc).
pub async fn deadline(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let api = Api::for_path(request.uri().path());
    let limit = state.config.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            Kind::Timeout,
            format!("the request took longer than {limit:?} (--request-timeout)"),
        )
        .to_response(api),
    }
}
