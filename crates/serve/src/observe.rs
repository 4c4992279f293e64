//! One log line and the request metrics per request: an id (the client's `x-request-id` when it sent
//! one, else a counter), method, route, status, tokens (the handler says how many, through a
//! [`Tokens`] response extension) and duration, at `info` on the `braid_serve::request` target;
//! `braid_serve_requests_total{route,status}` and `braid_serve_request_duration_seconds{route}`. The id
//! goes back in the response's `x-request-id`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// The header carrying a request's id.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Tokens a request embedded or tokenized (a response extension set by handlers).
#[derive(Clone, Copy, Debug)]
pub struct Tokens(pub usize);

/// Logs and counts one request (module doc).
pub async fn observe(request: Request, next: Next) -> Response {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let start = Instant::now();
    let id = match request.headers().get(&REQUEST_ID) {
        Some(value) if value.len() <= 128 => value.clone(),
        _ => HeaderValue::from(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
    };
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| route_label(path.as_str()));
    let mut response = next.run(request).await;
    let elapsed = start.elapsed();
    let status = response.status().as_u16();
    let tokens = response.extensions().get::<Tokens>().map_or(0, |t| t.0);
    tracing::info!(
        target: "braid_serve::request",
        id = %String::from_utf8_lossy(id.as_bytes()),
        %method,
        route,
        status,
        tokens,
        duration_ms = elapsed.as_secs_f64() * 1e3,
    );
    metrics::counter!("braid_serve_requests_total", "route" => route, "status" => status.to_string())
        .increment(1);
    metrics::histogram!("braid_serve_request_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
    response.headers_mut().insert(REQUEST_ID.clone(), id);
    response
}

/// The route as a `'static` label (the routes are fixed; anything else is `other`).
fn route_label(path: &str) -> &'static str {
    crate::routes::ROUTES
        .iter()
        .find(|route| **route == path)
        .copied()
        .unwrap_or("other")
}
