//! `braid bench`: the main job. N caller threads each embed batches, for a sweep of thread counts and
//! batch sizes, in one or both modes side by side — `direct` (each caller on its own leased stream)
//! and `engine` (the callers share a `braid_engine::Engine`, which batches across them); prints
//! seq/s, p50/p99 latency, the engine's mean batch size and padding share, allocator hit rate and peak
//! memory per point, and keeps the figures as JSON and draws them as an SVG plot on request. How one
//! point runs is `point`'s; how the plot looks is `plot`'s.
//!
//! Inputs are real sentences (`data/sentences.txt`, 7–60 tokens, tokenized once up front) or, with
//! `--seq N`, synthetic token ids of exactly N tokens — the shape the PyTorch anchor scripts use, for a
//! like-for-like comparison. Tokenization is outside the timed region in both modes, as in the anchors;
//! a timed call is one forward plus the copy of its embeddings to the host.
//!
//! This is a benchmark, not a test: it prints figures and asserts nothing about them.
//!
//! Its options are checked before the model loads ([`BenchOptions::validate`]: thread counts, batch
//! sizes and seconds within their limits, a `--plot` file named `.svg`) and the `--json` and `--plot`
//! files are opened then too ([`OutputFile`]), so a typo fails at once instead of after the whole
//! sweep.

mod plot;
mod point;

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use braid_engine::{EngineConfig, EngineDevice};
use braid_runtime::MAX_WORKER_SLOTS;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

pub(crate) use self::point::SENTENCES;
use self::point::{make_batches, run_point};
use crate::output::{note, to_stdout};

/// How a point's callers reach the device (`--mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BenchMode {
    /// Each caller runs its own batches on its own leased stream.
    Direct,
    /// The callers share an engine that batches across them.
    Engine,
}

impl std::fmt::Display for BenchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::Engine => "engine",
        })
    }
}
/// The largest batch size (as `braid embed --batch`).
pub const MAX_BATCH: usize = 4096;
/// The longest timed window per point, in seconds (one hour).
pub const MAX_SECONDS: f64 = 3600.0;

/// What `braid bench` runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Caller thread counts to sweep.
    pub threads: Vec<usize>,
    /// Batch sizes to sweep.
    pub batches: Vec<usize>,
    /// Timed seconds per point (after a warm-up batch per thread).
    pub seconds: f64,
    /// Synthetic inputs of exactly this many tokens instead of the sentence corpus.
    pub seq: Option<usize>,
    /// The modes each point runs in, side by side.
    pub modes: Vec<BenchMode>,
    /// Engine executors (default: the engine's for the backend).
    pub executors: Option<usize>,
    /// Engine padded-token budget per batch (default: the engine's for the backend).
    pub max_batch_tokens: Option<usize>,
    /// Draw the figures to this SVG file (`--plot`).
    pub plot: Option<PathBuf>,
}

impl BenchOptions {
    /// Refuses, before anything runs, thread counts outside 1..=64 (the stream pool's worker slots),
    /// batch sizes outside 1..=4096, a timed window that is not a number of seconds in (0, 3600] and a
    /// `--plot` file whose name does not end in `.svg` (the only format it writes).
    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.threads.is_empty() && !self.batches.is_empty(),
            "--threads and --batch need at least one value each"
        );
        ensure!(
            self.threads.iter().chain(&self.batches).all(|&n| n > 0),
            "thread counts and batch sizes must be at least 1"
        );
        if let Some(&most) = self.threads.iter().max() {
            ensure!(
                most <= MAX_WORKER_SLOTS,
                "--threads {most}: each caller thread needs a stream of its own, and a stream pool \
                 has at most {MAX_WORKER_SLOTS} worker slots"
            );
        }
        if let Some(&most) = self.batches.iter().max() {
            ensure!(
                most <= MAX_BATCH,
                "--batch {most}: batch sizes must be between 1 and {MAX_BATCH}"
            );
        }
        ensure!(
            !self.modes.is_empty(),
            "--mode needs direct, engine or both"
        );
        if let Some(executors) = self.executors {
            ensure!(
                (1..=16).contains(&executors),
                "--executors {executors}: between 1 and 16 executor threads"
            );
        }
        if let Some(tokens) = self.max_batch_tokens {
            ensure!(
                (1..=1 << 22).contains(&tokens),
                "--max-batch-tokens {tokens}: between 1 and 4194304 padded tokens"
            );
        }
        ensure!(
            self.seconds > 0.0 && self.seconds <= MAX_SECONDS,
            "--seconds {}: the timed window per point must be more than 0 and at most {MAX_SECONDS} \
             seconds (one hour)",
            self.seconds
        );
        if let Some(plot) = &self.plot {
            ensure!(
                plot.extension()
                    .and_then(OsStr::to_str)
                    .is_some_and(|e| e.eq_ignore_ascii_case("svg")),
                "--plot {}: the plot is an SVG, so the file name must end in .svg",
                plot.display()
            );
        }
        Ok(())
    }

    /// Opens the `--plot` file before the run ([`OutputFile::open`]), refusing the same file as the
    /// `--json` one.
    pub fn open_plot(&self, json: Option<&OutputFile>) -> Result<Option<OutputFile>> {
        let Some(path) = &self.plot else {
            return Ok(None);
        };
        let plot = OutputFile::open(path, "--plot")?;
        if let Some(json) = json {
            if json.is_same_file(&plot) {
                bail!(
                    "--json {} and --plot {} name the same file",
                    json.path.display(),
                    plot.path.display()
                );
            }
        }
        Ok(Some(plot))
    }

    /// The stream slots the runtime needs: every caller of a direct point, or the executors of an
    /// engine point (an engine lives only while its points run).
    pub fn most_threads(&self) -> usize {
        let callers = self.threads.iter().copied().max().unwrap_or(1);
        // Before the model is loaded the backend is unknown: room for the largest default (a GPU's).
        let executors = self
            .executors
            .unwrap_or_else(|| EngineConfig::for_backend("cuda").executors);
        if self.modes.contains(&BenchMode::Direct) {
            callers.max(executors)
        } else {
            executors
        }
        .min(MAX_WORKER_SLOTS)
    }

    /// The engine configuration for `model`'s backend, with this bench's overrides.
    pub fn engine_config(&self, backend: &str) -> EngineConfig {
        crate::serve::engine_config(
            backend,
            braid_engine::Mode::Batched,
            self.executors,
            self.max_batch_tokens,
        )
    }
}

/// A file the bench writes when it is done (`--json`, `--plot`), opened before the run so that a bad
/// path fails at once. An existing file keeps its contents until the output replaces them; a file this
/// run created is removed again if the run fails.
pub struct OutputFile {
    path: PathBuf,
    /// The option that named the file, for messages.
    option: &'static str,
    file: File,
    /// Set while the file is one this run created and has not yet written: removed on drop.
    remove_on_drop: bool,
}

impl OutputFile {
    /// Opens (or creates) `path`, named by `option` (`--json`), for writing, without truncating it yet.
    pub fn open(path: &Path, option: &'static str) -> Result<Self> {
        let context = || format!("cannot create the {option} file {}", path.display());
        let (file, created) = match OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(file) => (file, true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => (
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .with_context(context)?,
                false,
            ),
            Err(e) => return Err(e).with_context(context),
        };
        Ok(Self {
            path: path.to_owned(),
            option,
            file,
            remove_on_drop: created,
        })
    }

    /// Replaces the file's contents with `text`.
    fn write(mut self, text: &str) -> Result<()> {
        let path = self.path.clone();
        let result = (|| -> std::io::Result<()> {
            if self.file.metadata()?.is_file() {
                self.file.set_len(0)?;
            }
            self.file.write_all(text.as_bytes())?;
            self.file.flush()
        })();
        self.remove_on_drop = false;
        result.with_context(|| format!("cannot write the {} file {}", self.option, path.display()))
    }

    /// Whether `other` names this very file (the same canonical path; both are open, so both exist).
    fn is_same_file(&self, other: &OutputFile) -> bool {
        match (
            std::fs::canonicalize(&self.path),
            std::fs::canonicalize(&other.path),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.path == other.path,
        }
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One (mode, threads, batch) point's figures.
#[derive(Clone, Debug, Serialize)]
pub struct BenchPoint {
    pub mode: BenchMode,
    pub threads: usize,
    pub batch: usize,
    /// Sequences embedded in the timed window.
    pub sequences: usize,
    pub seconds: f64,
    pub seq_per_s: f64,
    /// Per-call latency percentiles (one call = one batch).
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Mean tokens per sequence (padding excluded).
    pub mean_tokens: f64,
    /// Allocator requests served from cache during the point.
    pub hit_rate: f64,
    /// Peak raw device memory held during the point.
    pub peak_reserved_bytes: u64,
    /// Stream slots still leased after the point's threads exited (must be 0).
    pub leaked_slots: usize,
    /// Mean sequences per forward (the callers' batch in direct mode, the engine's batches else).
    pub mean_batch: f64,
    /// Share of the computed tokens that were padding.
    pub padding_share: f64,
    /// Sequences each device ran in the point (its name and count; one entry with one device).
    pub device_sequences: Vec<(String, u64)>,
}

#[derive(Serialize)]
struct Report<'a> {
    tool: &'static str,
    device: String,
    model: String,
    dtype: String,
    inputs: String,
    cores: usize,
    points: &'a [BenchPoint],
}

/// The default sweep: 1, 2, 4, … up to the core count, and the core count itself (at most the stream
/// pool's worker slots).
pub fn default_thread_sweep() -> Vec<usize> {
    let cores = cores().min(MAX_WORKER_SLOTS);
    let mut sweep: Vec<usize> = std::iter::successors(Some(1usize), |n| Some(n * 2))
        .take_while(|&n| n < cores)
        .collect();
    sweep.push(cores);
    sweep
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs the sweep on `devices` (the model loaded on each; usually one), prints the table to `out`
/// (stdout), the figures to `json` and draws them to `plot` (both opened before the run, see
/// [`OutputFile`]); returns the points.
pub fn run(
    devices: &[EngineDevice],
    model_name: &str,
    options: &BenchOptions,
    json: Option<OutputFile>,
    plot: Option<OutputFile>,
    out: &mut dyn Write,
) -> Result<Vec<BenchPoint>> {
    options.validate()?;
    let inputs = match options.seq {
        Some(seq) => format!("synthetic ids, {seq} tokens each"),
        None => "sentence corpus (data/sentences.txt)".to_string(),
    };
    let model = &devices
        .first()
        .context("braid bench needs at least one device")?
        .model;
    let device = match devices {
        [one] => one.model.device_description(),
        several => format!(
            "{} devices ({}): {}",
            several.len(),
            several
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            model.device_description()
        ),
    };
    let dtype = model.dtype();
    note!(
        "braid bench: {model_name} ({dtype}) on {device}; inputs: {inputs}; {} s per point",
        options.seconds
    );

    let total = options.threads.len() * options.batches.len() * options.modes.len();
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let progress =
        ProgressBar::new((total as f64 * options.seconds * 1000.0) as u64).with_style(style);
    let mut points = Vec::with_capacity(total);
    for &batch in &options.batches {
        let batches = Arc::new(make_batches(&**model, batch, options.seq)?);
        for &threads in &options.threads {
            for &mode in &options.modes {
                progress.set_message(format!("{mode}: {threads} threads x batch {batch}"));
                let start = progress.position();
                let point = run_point(devices, options, mode, &batches, threads, |elapsed| {
                    progress.set_position(start + elapsed.as_millis() as u64)
                })?;
                progress.set_position(start + (options.seconds * 1000.0) as u64);
                points.push(point);
            }
        }
    }
    progress.finish_and_clear();
    to_stdout(print_table(out, &points))?;
    if let Some(json) = json {
        let report = Report {
            tool: concat!("braid ", env!("CARGO_PKG_VERSION")),
            device: device.clone(),
            model: model_name.to_string(),
            dtype: dtype.to_string(),
            inputs: inputs.clone(),
            cores: cores(),
            points: &points,
        };
        let text = serde_json::to_string_pretty(&report)?;
        let path = json.path.clone();
        json.write(&text)?;
        note!("braid bench: figures written to {}", path.display());
    }
    if let Some(plot) = plot {
        let title = plot::PlotTitle {
            model: model_name,
            dtype: &dtype.to_string(),
            device: &device,
            inputs: &inputs,
            seconds: options.seconds,
            cores: cores(),
        };
        let svg = plot::render(&points, &title)?;
        let path = plot.path.clone();
        plot.write(&svg)?;
        note!("braid bench: plot drawn to {}", path.display());
    }
    Ok(points)
}

fn print_table(out: &mut dyn Write, points: &[BenchPoint]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>6}  {:>7}  {:>5}  {:>10}  {:>9}  {:>9}  {:>6}  {:>10}  {:>7}  {:>8}  {:>10}",
        "mode",
        "threads",
        "batch",
        "seq/s",
        "p50 ms",
        "p99 ms",
        "tokens",
        "mean batch",
        "padding",
        "hit rate",
        "peak MiB"
    )?;
    for p in points {
        writeln!(
            out,
            "{:>6}  {:>7}  {:>5}  {:>10.1}  {:>9.2}  {:>9.2}  {:>6.1}  {:>10.1}  {:>6.1}%  {:>7.1}%  {:>10.1}",
            p.mode.to_string(),
            p.threads,
            p.batch,
            p.seq_per_s,
            p.p50_ms,
            p.p99_ms,
            p.mean_tokens,
            p.mean_batch,
            p.padding_share * 100.0,
            p.hit_rate * 100.0,
            p.peak_reserved_bytes as f64 / (1 << 20) as f64
        )?;
    }
    out.flush()
}
