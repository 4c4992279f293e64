//! braid-serve: `braid serve`, an HTTP embedding server that OpenAI and text-embeddings-inference (TEI)
//! clients use as they are. Many concurrent HTTP clients become the callers of one
//! [`braid_engine::Engine`], which batches them on the device.
//!
//! - The APIs (`routes`): OpenAI's `POST /v1/embeddings`; TEI's `POST /embed`, `POST /tokenize`,
//!   `GET /info`, `GET /health`; `GET /metrics` in Prometheus text (`metrics`). Errors in each API's
//!   own shape (`errors`).
//! - Requests (`input`): strings or token ids, checked against the limits (`config::Limits`) before
//!   anything reaches the engine; tokenized without blocking the runtime (`state`).
//! - Protection: a Bearer key compared in constant time (`auth`); a cap on requests in flight (429,
//!   never an unbounded queue), a body limit, header and request timeouts (`limits`, `server`).
//! - Life (`server`, `shutdown`): listen at once, ready after the model loads and a warm-up forward
//!   passes; on SIGINT/SIGTERM stop accepting, finish what is in flight, exit 0. One log line per
//!   request (`observe`).
//! - [`loadgen`]: an HTTP load driver (N keep-alive connections for T seconds), used by
//!   `braid serve-bench` and the load tests.
//!
//! No HTTP type appears below this crate: the engine and model know nothing of it.

mod auth;
mod config;
mod errors;
mod input;
mod limits;
pub mod loadgen;
mod metrics;
mod observe;
mod routes;
mod server;
pub mod shutdown;
mod state;

pub use self::auth::OPEN_PATHS;
pub use self::config::{Limits, ServeConfig};
pub use self::errors::{Api, ApiError, Kind};
pub use self::server::{run, LoadResult, ServeError, DRAIN_GRACE};
