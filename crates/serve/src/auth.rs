//! The API key: with `--api-key`, every route except `/health` and `/metrics` needs
//! `Authorization: Bearer <key>` (those two stay open so probes and scrapers need no secret; they
//! reveal no input or embedding).
//!
//! The comparison takes the same time whatever the key sent: both keys are hashed (SHA-256) and the
//! digests compared with `subtle`'s constant-time equality, so neither the position of the first
//! wrong byte nor the key's length shows in the response time.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::errors::{Api, ApiError, Kind};
use crate::state::AppState;
use std::sync::Arc;

/// Paths served without a key.
pub const OPEN_PATHS: &[&str] = &["/health", "/metrics"];

/// The expected key, kept as its digest.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl ApiKey {
    /// The key `key`.
    pub fn new(key: &str) -> Self {
        Self {
            digest: Sha256::digest(key.as_bytes()).into(),
        }
    }

    /// Whether `given` is the key, in time independent of `given`'s content.
    pub fn matches(&self, given: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(given).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// Refuses a request without the right Bearer key (module doc), in the shape of its API.
pub async fn require_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &state.api_key else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if OPEN_PATHS.contains(&path) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes());
    let error = match given {
        None => "missing API key: send the header `Authorization: Bearer <key>`",
        Some(value) => match value.strip_prefix(b"Bearer ") {
            Some(token) if key.matches(token) => return next.run(request).await,
            Some(_) => "invalid API key",
            None => "the Authorization header must be `Bearer <key>`",
        },
    };
    ApiError::new(Kind::Unauthorized, error).to_response(Api::for_path(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_itself_matches() {
        let key = ApiKey::new("s3cret");
        assert!(key.matches(b"s3cret"));
        for wrong in [
            &b""[..],
            b"s3cre",
            b"s3cret ",
            b"S3cret",
            b"s3cret-and-more",
        ] {
            assert!(!key.matches(wrong), "{wrong:?}");
        }
    }
}
