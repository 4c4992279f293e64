//! `braid serve`: the HTTP embedding server (the `braid-serve` crate) on the command line. This file
//! owns the flags — each also an environment variable, for containers — and turns them into a
//! `braid_serve::ServeConfig` and an engine configuration; the model loads through the same seam as
//! every other command (`ModelArgs`), after the server is already listening (so `/health` answers
//! 503 until it is ready).
//!
//! Exit: 0 after SIGINT or SIGTERM once requests in flight have finished; 1 (with a `braid: error:`
//! line) when the address cannot be bound, the model cannot load or a setting is out of range.

use std::time::Duration;

use anyhow::{Context, Result};
use braid_engine::{EngineConfig, Mode};
use braid_serve::ServeConfig;

use crate::devices::DeviceList;
use crate::ModelArgs;

/// `braid serve`'s own flags.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// The address to listen on (`0.0.0.0` for every interface, as in a container).
    #[arg(long, env = "BRAID_HOST", default_value = "127.0.0.1")]
    host: String,
    /// The port to listen on (0: any free port; the log says which).
    #[arg(long, env = "BRAID_PORT", default_value_t = 3000)]
    port: u16,
    /// A key every route except /health and /metrics requires, as `Authorization: Bearer <key>`.
    #[arg(long, env = "BRAID_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The model name responses and /info report (default: the model directory's name).
    #[arg(long, env = "BRAID_SERVED_MODEL_NAME")]
    served_model_name: Option<String>,
    /// The engine's padded-token budget per batch (default: 32768 on a GPU, 8192 on the CPU).
    #[arg(long, env = "BRAID_MAX_BATCH_TOKENS")]
    max_batch_tokens: Option<usize>,
    /// The most inputs in one request (more: 413).
    #[arg(long, env = "BRAID_MAX_CLIENT_BATCH_SIZE", default_value_t = 32)]
    max_client_batch_size: usize,
    /// The most tokens of one input, special tokens included (default: the model's max_seq_length).
    #[arg(long, env = "BRAID_MAX_INPUT_TOKENS")]
    max_input_tokens: Option<usize>,
    /// Truncate over-long inputs instead of refusing them with 413 (a TEI request's `truncate`
    /// overrides it); truncated responses carry `x-truncated-inputs`.
    #[arg(long, env = "BRAID_AUTO_TRUNCATE")]
    auto_truncate: bool,
    /// The most requests in flight; one more is refused with 429 at once (never queued).
    #[arg(long, env = "BRAID_MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    max_concurrent_requests: usize,
    /// The largest request body, in bytes (more: 413).
    #[arg(long, env = "BRAID_PAYLOAD_LIMIT", default_value_t = 2_000_000)]
    payload_limit: usize,
    /// Seconds a client may take to send a request's headers before its connection is closed.
    #[arg(long, env = "BRAID_HEADER_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    header_timeout: Duration,
    /// Seconds a request may take, body upload and embedding included, before a 408.
    #[arg(long, env = "BRAID_REQUEST_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    request_timeout: Duration,
    /// How requests reach the device: `auto` (batched on a GPU, direct on the CPU), `batched` or
    /// `direct`.
    #[arg(long, env = "BRAID_ENGINE_MODE", default_value = "auto", value_parser = parse_mode)]
    mode: Mode,
    /// Engine executor threads per device, 1 to 16 (default: 4 on a GPU, 1 on the CPU).
    #[arg(long, env = "BRAID_EXECUTORS")]
    executors: Option<usize>,
    /// The devices the engine drives: `all` or numbers such as `0,1` (GPU ordinals with --device
    /// cuda; with --device cpu, that many CPU runtimes, for testing). Default: every visible CUDA
    /// GPU when --device is auto, else the one --device names.
    #[arg(long, env = "BRAID_DEVICES", value_name = "LIST", value_parser = crate::parse_devices)]
    devices: Option<DeviceList>,
}

/// Seconds as a decimal (`0.5`, `30`), more than 0 and at most an hour.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err(format!("{text}: more than 0 and at most 3600 seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    text.parse()
        .map_err(|e: braid_engine::EngineError| e.to_string())
}

/// The engine configuration for `backend` with the flags' overrides.
pub fn engine_config(
    backend: &str,
    mode: Mode,
    executors: Option<usize>,
    max_batch_tokens: Option<usize>,
) -> EngineConfig {
    let defaults = EngineConfig::for_backend(backend);
    let max_batch_tokens = max_batch_tokens.unwrap_or(defaults.max_batch_tokens);
    EngineConfig {
        mode,
        executors: executors.unwrap_or(defaults.executors),
        max_batch_tokens,
        max_queued_tokens: defaults.max_queued_tokens.max(max_batch_tokens),
        ..defaults
    }
}

/// Threads that may embed at once: a stream slot each (direct mode's forwards, the executors).
pub fn stream_callers(executors: Option<usize>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores
        .max(executors.unwrap_or(4))
        .min(braid_runtime::MAX_WORKER_SLOTS)
}

/// Runs the server until SIGINT or SIGTERM (module doc).
pub fn run(model: ModelArgs, args: ServeArgs) -> Result<()> {
    let config = ServeConfig {
        model_name: args
            .served_model_name
            .clone()
            .unwrap_or_else(|| model.name()),
        api_key: args.api_key.clone(),
        max_client_batch_size: args.max_client_batch_size,
        max_input_tokens: args.max_input_tokens,
        auto_truncate: args.auto_truncate,
        max_concurrent_requests: args.max_concurrent_requests,
        payload_limit: args.payload_limit,
        header_timeout: args.header_timeout,
        request_timeout: args.request_timeout,
    };
    config.validate().map_err(anyhow::Error::msg)?;
    if let Some(executors) = args.executors {
        anyhow::ensure!(
            (1..=16).contains(&executors),
            "--executors {executors}: between 1 and 16 executor threads"
        );
    }
    // A bad --devices fails before the server listens (the loader plans the same again).
    crate::devices::plan(model.device, args.devices.as_ref(), true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("braid-serve")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let address = listener.local_addr().context("reading the bound address")?;
        tracing::info!("listening on http://{address}");
        let (mode, executors, tokens) = (args.mode, args.executors, args.max_batch_tokens);
        let devices = args.devices.clone();
        let load = move || -> braid_serve::LoadResult {
            let devices = model
                .load_devices(devices.as_ref(), true, stream_callers(executors))
                .map_err(|e| format!("{e:#}"))?;
            let backend = devices.first().map_or("cpu", |d| d.model.backend());
            let config = engine_config(backend, mode, executors, tokens);
            tracing::info!(
                devices = %devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(","),
                "the model is loaded on every device"
            );
            Ok((devices, config))
        };
        braid_serve::run(config, listener, load, braid_serve::shutdown::signal())
            .await
            .map_err(anyhow::Error::from)
    })
}
