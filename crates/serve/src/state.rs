//! [`AppState`]: what every handler shares — the configuration, the request permits, and, once the
//! model has loaded and a warm-up forward has passed, the [`Loaded`] model and engine.
//!
//! The model is set once ([`AppState::set_loaded`]) and never replaced; until then every route that
//! needs it answers 503 (`/health` included), so a load balancer sends nothing to a replica that is
//! still loading. Embedding never blocks a runtime worker thread: in batched mode the engine's
//! future is awaited (submitting is a lock-free push); in direct mode (the CPU default) the forward
//! runs on tokio's blocking pool, at most as many at once as the stream pool has worker slots, each on
//! a stream leased for the call. Tokenizing a short request (at most [`INLINE_TOKENIZE_BYTES`]) costs
//! less than a hand-off to another thread, so it runs in place; a longer one goes to the blocking pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use braid_engine::{Engine, EngineError, Mode};
use braid_model::load::Embedder;
use braid_model::Encoding;
use tokio::sync::Semaphore;

use crate::auth::ApiKey;
use crate::config::{Limits, ServeConfig};
use crate::errors::{ApiError, Kind};
use crate::input::{prepare, Input, Prepared};
use crate::metrics::{record_phase, Phase};
use braid_model::TruncationSide;

/// Requests with at most this many bytes of input are tokenized on the runtime's thread.
pub const INLINE_TOKENIZE_BYTES: usize = 16 << 10;

/// The model and engine, once loaded and warmed up.
pub struct Loaded {
    /// The model (for its tokenizer, facts and statistics).
    pub model: Arc<dyn Embedder>,
    /// The engine every request goes through.
    pub engine: Arc<Engine>,
    /// The per-request limits for this model.
    pub limits: Limits,
    /// Direct mode: one permit per forward running on the blocking pool (the stream pool's slots).
    direct_forwards: Arc<Semaphore>,
}

impl Loaded {
    /// Wraps an engine; `limits` from [`ServeConfig::limits`].
    pub fn new(engine: Engine, limits: Limits) -> Self {
        let model = engine.model().clone();
        // Batched mode's executors hold their own slots; direct mode's forwards lease the rest (every
        // device has as many slots, and as many executors, as the first).
        let slots = model
            .worker_slots()
            .saturating_sub(model.leased_slots())
            .max(1);
        Self {
            model,
            engine: Arc::new(engine),
            limits,
            direct_forwards: Arc::new(Semaphore::new(slots)),
        }
    }
}

/// What every handler shares (module doc).
pub struct AppState {
    /// The configuration.
    pub config: ServeConfig,
    /// The API key's digest, when one is needed.
    pub api_key: Option<ApiKey>,
    /// One permit per request in flight on the embedding routes (`--max-concurrent-requests`).
    pub request_permits: Arc<Semaphore>,
    loaded: OnceLock<Loaded>,
    shutting_down: AtomicBool,
    /// When the server started (for `/info`).
    pub started: Instant,
}

impl AppState {
    /// A server's state before its model is loaded.
    pub fn new(config: ServeConfig) -> Self {
        Self {
            api_key: config.api_key.as_deref().map(ApiKey::new),
            request_permits: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            config,
            loaded: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    /// Makes the model available: from now on the server is ready. Set once; a second call is a bug.
    pub fn set_loaded(&self, loaded: Loaded) {
        if self.loaded.set(loaded).is_err() {
            tracing::error!("the model was set twice; the first is kept (this is a bug)");
        }
    }

    /// The model, or a 503 while it loads or once shutdown began.
    pub fn loaded(&self) -> Result<&Loaded, ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                Kind::ShuttingDown,
                "the server is shutting down and takes no new requests",
            ));
        }
        self.loaded.get().ok_or_else(|| {
            ApiError::new(
                Kind::NotReady,
                "the model is still loading; retry when GET /health answers 200",
            )
        })
    }

    /// The loaded model whether or not shutdown began (for `/metrics` and the final drain).
    pub fn loaded_even_if_closing(&self) -> Option<&Loaded> {
        self.loaded.get()
    }

    /// The model for a request already admitted: shutdown does not stop it (it is in flight).
    fn model(&self) -> Result<&Loaded, ApiError> {
        self.loaded.get().ok_or_else(|| {
            ApiError::new(
                Kind::NotReady,
                "the model is still loading (this is a bug: a request \
                                           reached the engine before the model was set)",
            )
        })
    }

    /// Marks the server as shutting down: `/health` answers 503 and new requests are refused.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Checks and encodes a request's inputs (module doc: in place when short, else on the blocking
    /// pool), recording the tokenization time for `route`.
    pub async fn prepare(
        &self,
        route: &'static str,
        inputs: Vec<Input>,
        truncate: bool,
        side: TruncationSide,
        param: &'static str,
    ) -> Result<Prepared, ApiError> {
        let loaded = self.model()?;
        let start = Instant::now();
        let weight: usize = inputs.iter().map(Input::weight).sum();
        let prepared = if weight <= INLINE_TOKENIZE_BYTES {
            prepare(
                inputs,
                &loaded.model.spec().tokenizer,
                &loaded.limits,
                truncate,
                side,
                param,
            )?
        } else {
            let model = loaded.model.clone();
            let limits = loaded.limits;
            tokio::task::spawn_blocking(move || {
                prepare(
                    inputs,
                    &model.spec().tokenizer,
                    &limits,
                    truncate,
                    side,
                    param,
                )
            })
            .await
            .map_err(|e| ApiError::new(Kind::Internal, format!("tokenizing failed: {e}")))??
        };
        if prepared.truncated > 0 {
            metrics::counter!("braid_serve_truncated_inputs_total", "route" => route)
                .increment(prepared.truncated as u64);
        }
        record_phase(route, Phase::Tokenize, start.elapsed());
        Ok(prepared)
    }

    /// The embeddings of `encodings`, in order, through the engine (module doc), recording the time
    /// waited (queue and forward) for `route`.
    pub async fn embed(
        &self,
        route: &'static str,
        encodings: Vec<Encoding>,
    ) -> Result<Vec<Vec<f32>>, ApiError> {
        let loaded = self.model()?;
        let start = Instant::now();
        let result = match loaded.engine.mode() {
            Mode::Batched => loaded.engine.embed_encodings_async(encodings).await,
            _ => self.embed_direct(loaded, encodings).await,
        };
        record_phase(route, Phase::Embed, start.elapsed());
        result.map_err(|error| ApiError::from_engine(&error))
    }

    /// Direct mode: the forward on the blocking pool, on a stream leased for the call (by the engine
    /// on the device it picks, when there are several).
    async fn embed_direct(
        &self,
        loaded: &Loaded,
        encodings: Vec<Encoding>,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        // The permit moves into the task: a request that times out drops its future, but the forward
        // already running keeps its stream (and permit) until it ends.
        let permit = loaded
            .direct_forwards
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| EngineError::ShutDown)?;
        let (model, engine) = (loaded.model.clone(), loaded.engine.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _stream = if engine.device_count() == 1 {
                Some(model.use_worker_stream()?)
            } else {
                None
            };
            engine.embed_encodings(encodings)
        })
        .await
        .map_err(|e| EngineError::Internal {
            detail: format!("a direct-mode forward task failed: {e}"),
        })?
    }
}
