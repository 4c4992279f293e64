//! `braid serve-bench`: how much of the engine's in-process throughput survives HTTP. For each
//! number of sentences per request and each caller count (N and N/2), the same model is driven two
//! ways, one after the other in the same run:
//!
//! - in process: N threads each calling `Engine::embed` (tokenizing on their own thread, as a server
//!   request does) for the window;
//! - over HTTP: a `braid serve` server started in this process on a loopback port (the same code as
//!   the command, with an engine of the same configuration), driven by `braid_serve::loadgen` with N
//!   keep-alive connections, each one request in flight at a time.
//!
//! Each point runs `--repeat` times (at least 5) and the table shows medians: seq/s, p50 and p99 per
//! request, and the ratio HTTP / in process. The client runs on a runtime of its own with a quarter of
//! the cores (at least one), so its work is counted against the same machine, as an external load
//! generator on the host would be. This is a benchmark: it prints figures and asserts nothing about
//! them; a request that fails is an error (a benchmark of failures means nothing).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use braid_engine::{Engine, EngineDevice, Mode};
use braid_serve::loadgen::{run_load, wait_ready, LoadReport, LoadSpec, Route};
use braid_serve::ServeConfig;

use crate::output::{note, to_stdout};
use crate::serve::{engine_config, parse_seconds, stream_callers};
use crate::ModelArgs;

/// `braid serve-bench`'s own flags.
#[derive(clap::Args)]
pub struct ServeBenchArgs {
    /// Concurrent callers: HTTP connections, and threads in process (also run at half this).
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Sentences per request, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    per_request: Vec<usize>,
    /// Seconds each repetition sends requests for.
    #[arg(long, default_value = "3", value_parser = parse_seconds)]
    seconds: Duration,
    /// Repetitions per point (the table shows medians), at least 5.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Which API the HTTP clients speak.
    #[arg(long, value_enum, default_value_t = Api::Tei)]
    api: Api,
    /// How requests reach the device in both runs: batched (the default; in process, direct mode
    /// needs a stream per caller thread, so at most 64 callers) or direct.
    #[arg(long, default_value = "batched", value_parser = parse_mode)]
    mode: Mode,
    /// Engine executor threads, 1 to 16 (default: 4 on a GPU, 1 on the CPU).
    #[arg(long)]
    executors: Option<usize>,
    /// Engine padded-token budget per batch (default: 32768 on a GPU, 8192 on the CPU).
    #[arg(long)]
    max_batch_tokens: Option<usize>,
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    text.parse()
        .map_err(|e: braid_engine::EngineError| e.to_string())
}

/// The API the HTTP clients speak (`--api`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Api {
    /// text-embeddings-inference's POST /embed.
    Tei,
    /// OpenAI's POST /v1/embeddings.
    Openai,
}

/// One measurement's medians.
#[derive(Clone, Copy, Debug)]
struct Figures {
    seq_per_s: f64,
    p50: Duration,
    p99: Duration,
}

fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn medians(runs: &[(f64, Duration, Duration)]) -> Figures {
    Figures {
        seq_per_s: median_of(runs.iter().map(|r| r.0).collect()),
        p50: Duration::from_secs_f64(median_of(runs.iter().map(|r| r.1.as_secs_f64()).collect())),
        p99: Duration::from_secs_f64(median_of(runs.iter().map(|r| r.2.as_secs_f64()).collect())),
    }
}

/// Runs the comparison (module doc) and prints the table.
pub fn run(model_args: ModelArgs, args: ServeBenchArgs, out: &mut dyn Write) -> Result<()> {
    ensure!(
        (1..=4096).contains(&args.connections),
        "--connections {}: between 1 and 4096",
        args.connections
    );
    ensure!(
        args.repeat >= 5,
        "--repeat {}: at least 5 (medians of 5 or more)",
        args.repeat
    );
    ensure!(
        !args.per_request.is_empty() && args.per_request.iter().all(|&n| (1..=256).contains(&n)),
        "--per-request: each between 1 and 256 sentences"
    );
    if args.mode == Mode::Direct {
        ensure!(
            args.connections <= braid_runtime::MAX_WORKER_SLOTS,
            "--mode direct: each in-process caller needs a stream of its own, at most {} callers",
            braid_runtime::MAX_WORKER_SLOTS
        );
    }
    let name = model_args.name();
    let model = model_args.load(stream_callers(args.executors))?;
    let config = engine_config(
        model.backend(),
        args.mode,
        args.executors,
        args.max_batch_tokens,
    );
    let sentences: Arc<Vec<String>> = Arc::new(
        crate::bench::SENTENCES
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-server")
        .build()?;
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads((cores / 4).max(1))
        .enable_all()
        .thread_name("bench-client")
        .build()?;
    let most_per_request = args.per_request.iter().copied().max().unwrap_or(1);
    let serve_config = ServeConfig {
        model_name: name.clone(),
        max_client_batch_size: most_per_request,
        max_concurrent_requests: args.connections.max(1) * 2,
        ..ServeConfig::default()
    };
    let listener = server_runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .context("listening on a loopback port")?;
    let addr: SocketAddr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (server_model, server_config) = (model.clone(), config.clone());
    let server = server_runtime.spawn(braid_serve::run(
        serve_config,
        listener,
        move || {
            let name = format!("{}:0", server_model.backend());
            Ok((vec![EngineDevice::new(name, server_model)], server_config))
        },
        async move {
            let _ = stopped.await;
            "the end of the bench"
        },
    ));
    client_runtime
        .block_on(wait_ready(addr, Duration::from_secs(300)))
        .map_err(anyhow::Error::msg)?;

    to_stdout(writeln!(
        out,
        "braid serve-bench: {name} on {} ({}), {} mode, HTTP API {:?}; {} × {:?} per point, medians",
        model.device_description(),
        model.dtype(),
        args.mode,
        args.api,
        args.repeat,
        args.seconds
    ))?;
    to_stdout(writeln!(
        out,
        "{:>9} {:>8} | {:>14} {:>8} {:>8} | {:>14} {:>8} {:>8} | {:>10}",
        "sent/req",
        "callers",
        "in-proc seq/s",
        "p50 ms",
        "p99 ms",
        "HTTP seq/s",
        "p50 ms",
        "p99 ms",
        "HTTP/in-p"
    ))?;
    let engine = Arc::new(Engine::new(model.clone(), config).context("starting the engine")?);
    let mut caller_counts = vec![args.connections];
    if args.connections / 2 >= 1 {
        caller_counts.push(args.connections / 2);
    }
    for &per_request in &args.per_request {
        for &callers in &caller_counts {
            note!("serve-bench: {per_request} sentence(s) per request, {callers} callers");
            let in_process: Vec<_> = (0..args.repeat)
                .map(|_| in_process_run(&engine, &sentences, callers, per_request, args.seconds))
                .collect::<Result<_>>()?;
            let spec = LoadSpec {
                addr,
                route: match args.api {
                    Api::Tei => Route::Tei,
                    Api::Openai => Route::OpenAi,
                },
                connections: callers,
                duration: args.seconds,
                sentences: sentences.clone(),
                per_request,
                api_key: None,
                expected: None,
            };
            let http: Vec<_> = (0..args.repeat)
                .map(|_| http_figures(client_runtime.block_on(run_load(&spec))))
                .collect::<Result<_>>()?;
            let (inp, web) = (medians(&in_process), medians(&http));
            to_stdout(writeln!(
                out,
                "{per_request:>9} {callers:>8} | {:>14.0} {:>8.2} {:>8.2} | {:>14.0} {:>8.2} {:>8.2} | {:>10.2}",
                inp.seq_per_s,
                inp.p50.as_secs_f64() * 1e3,
                inp.p99.as_secs_f64() * 1e3,
                web.seq_per_s,
                web.p50.as_secs_f64() * 1e3,
                web.p99.as_secs_f64() * 1e3,
                web.seq_per_s / inp.seq_per_s.max(1e-9)
            ))?;
        }
    }
    drop(engine);
    let _ = stop.send(());
    server_runtime
        .block_on(server)
        .map_err(|e| anyhow!("the server task failed: {e}"))?
        .context("the server")?;
    to_stdout(out.flush())
}

fn http_figures(report: LoadReport) -> Result<(f64, Duration, Duration)> {
    ensure!(
        report.failed == 0,
        "{} of {} HTTP requests failed, e.g. {:?}",
        report.failed,
        report.failed + report.requests,
        report.failures.first()
    );
    Ok((
        report.sequences_per_second(),
        report.percentile(50.0),
        report.percentile(99.0),
    ))
}

/// `callers` threads calling the engine with `per_request` sentences each for `window`.
fn in_process_run(
    engine: &Arc<Engine>,
    sentences: &Arc<Vec<String>>,
    callers: usize,
    per_request: usize,
    window: Duration,
) -> Result<(f64, Duration, Duration)> {
    let ready = Arc::new(Barrier::new(callers + 1));
    let threads: Vec<_> = (0..callers)
        .map(|index| {
            let (engine, sentences, ready) = (engine.clone(), sentences.clone(), ready.clone());
            std::thread::Builder::new()
                .name(format!("bench-caller-{index}"))
                .spawn(move || -> Result<(usize, Vec<Duration>)> {
                    let corpus = sentences.len();
                    let mut next = index.wrapping_mul(7919) % corpus;
                    let (mut done, mut latencies) = (0, Vec::new());
                    ready.wait();
                    let deadline = Instant::now() + window;
                    while Instant::now() < deadline {
                        let texts: Vec<&str> = (0..per_request)
                            .map(|i| sentences[(next + i) % corpus].as_str())
                            .collect();
                        next = (next + per_request) % corpus;
                        let start = Instant::now();
                        engine.embed(&texts)?;
                        latencies.push(start.elapsed());
                        done += per_request;
                    }
                    Ok((done, latencies))
                })
                .context("starting a caller thread")
        })
        .collect::<Result<_>>()?;
    ready.wait();
    let start = Instant::now();
    let (mut done, mut latencies) = (0, Vec::new());
    for thread in threads {
        let (count, mut times) = thread
            .join()
            .map_err(|_| anyhow!("a caller thread panicked"))??;
        done += count;
        latencies.append(&mut times);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let at = |p: f64| {
        latencies
            .get(((p / 100.0) * (latencies.len().max(1) - 1) as f64).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Ok((done as f64 / elapsed.as_secs_f64(), at(50.0), at(99.0)))
}
