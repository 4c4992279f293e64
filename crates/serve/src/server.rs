//! The server's life ([`run`]): listen at once, load the model on every device and warm each up
//! while `/health` answers 503, then serve until SIGINT or SIGTERM; then stop accepting, finish the requests in flight (at most
//! `--request-timeout` plus [`DRAIN_GRACE`]), stop the engine (it finishes what it accepted) and return
//! `Ok`, so the process exits 0.
//!
//! The accept loop is hyper-util's pieces rather than `axum::serve`, for two things `axum::serve` does
//! not offer: hyper's header read timeout (a client that sends its headers slowly, or stops, loses its
//! connection after `--header-timeout`) and a graceful drain that waits for in-flight requests on every
//! connection (`GracefulShutdown`). Each connection is HTTP/1.1 with keep-alive, `TCP_NODELAY` set.

use std::error::Error;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use braid_engine::{Engine, EngineConfig, EngineDevice, EngineError};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ServeConfig;
use crate::state::{AppState, Loaded};

/// How long past `--request-timeout` the drain waits for the last requests before giving up on them.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The sentence the warm-up forward embeds.
const WARM_UP_TEXT: &str = "braid warm-up: one forward before the server reports ready.";

/// What the model loader returns: the devices with the model loaded on each (one or more; the engine
/// drives them all) and the engine configuration to run them with.
pub type LoadResult = Result<(Vec<EngineDevice>, EngineConfig), Box<dyn Error + Send + Sync>>;

/// Why a server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    /// The loader failed.
    #[error("loading the model failed: {0}")]
    Load(Box<dyn Error + Send + Sync>),
    /// The engine would not start.
    #[error("starting the engine failed: {0}")]
    Engine(#[from] EngineError),
    /// The warm-up forward failed, so the server never became ready.
    #[error("the warm-up forward failed: {0}")]
    WarmUp(String),
}

/// Serves on `listener` until `shutdown` resolves (module doc). `load` runs on the blocking pool.
pub async fn run<L, S>(
    config: ServeConfig,
    listener: TcpListener,
    load: L,
    shutdown: S,
) -> Result<(), ServeError>
where
    L: FnOnce() -> LoadResult + Send + 'static,
    S: Future<Output = &'static str> + Send + 'static,
{
    config.validate().map_err(ServeError::Config)?;
    crate::metrics::install();
    let state = Arc::new(AppState::new(config));
    let app = crate::routes::router(state.clone());
    let (stop, stopped) = watch::channel(false);
    let stop = Arc::new(stop);
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        let name = shutdown.await;
        tracing::info!("{name}: stopping (no new connections; requests in flight finish)");
        let _ = signal_stop.send(true);
    });
    let drain_limit = state.config.request_timeout + DRAIN_GRACE;
    let accepting = tokio::spawn(accept_loop(
        listener,
        app,
        state.config.header_timeout,
        stopped.clone(),
        drain_limit,
    ));

    let mut stopping = stopped.clone();
    let outcome = tokio::select! {
        loaded = load_and_warm_up(&state, load) => loaded,
        () = stop_requested(&mut stopping) => Ok(()),
    };
    if outcome.is_ok() && !*stopped.borrow() {
        tracing::info!("ready: the model is loaded and a warm-up forward passed");
        stop_requested(&mut stopping).await;
    }
    state.begin_shutdown();
    let _ = stop.send(true);
    if let Err(error) = accepting.await {
        tracing::error!(%error, "the accept loop failed (this is a bug)");
    }
    if let Some(loaded) = state.loaded_even_if_closing() {
        let engine = loaded.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    }
    tracing::info!("stopped");
    outcome
}

/// Loads the model (on the blocking pool) on every device, starts the engine over them, runs one
/// forward on each device, and makes the model available.
async fn load_and_warm_up<L>(state: &AppState, load: L) -> Result<(), ServeError>
where
    L: FnOnce() -> LoadResult + Send + 'static,
{
    let (devices, engine_config) = tokio::task::spawn_blocking(load)
        .await
        .map_err(|e| ServeError::Load(e.to_string().into()))?
        .map_err(ServeError::Load)?;
    let Some(first) = devices.first() else {
        return Err(ServeError::Load("the loader returned no device".into()));
    };
    let limits = state
        .config
        .limits(first.model.as_ref())
        .map_err(ServeError::Config)?;
    let warm_up = first.model.spec().tokenizer.encode(WARM_UP_TEXT);
    let encoding = warm_up.map_err(|e| ServeError::WarmUp(e.to_string()))?;
    let engine = tokio::task::spawn_blocking(move || -> Result<Engine, ServeError> {
        // Every device runs one forward, on a stream leased for the call, before the server is ready.
        for device in &devices {
            let forward = device.model.use_worker_stream().and_then(|_stream| {
                device
                    .model
                    .embed_encodings(std::slice::from_ref(&encoding))
            });
            forward.map_err(|e| ServeError::WarmUp(format!("{}: {e}", device.name)))?;
        }
        Ok(Engine::with_devices(devices, engine_config)?)
    })
    .await
    .map_err(|e| ServeError::WarmUp(e.to_string()))??;
    state.set_loaded(Loaded::new(engine, limits));
    Ok(())
}

/// Resolves once `stopped` is true (or its sender is gone).
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Accepts connections until `stopped` turns true, then drains them (module doc).
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    mut stopped: watch::Receiver<bool>,
    drain_limit: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "cannot set TCP_NODELAY");
                    }
                    let service = TowerToHyperService::new(app.clone());
                    let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%error, "a connection ended with an error");
                        }
                    });
                }
                // Out of file descriptors and the like: wait a little rather than spin.
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = stop_requested(&mut stopped) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(drain_limit, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests were still in flight {drain_limit:?} after the stop; they are dropped"
        );
    }
}
