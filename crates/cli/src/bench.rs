//! `braid bench`: the main job. N caller threads each embed batches on their own leased stream, for a
//! sweep of thread counts and batch sizes; prints seq/s, p50/p99 latency, allocator hit rate and peak
//! memory per point, and keeps the figures as JSON on request.
//!
//! Inputs are real sentences (`data/sentences.txt`, 7–60 tokens, tokenized once up front) or, with
//! `--seq N`, synthetic token ids of exactly N tokens — the shape the PyTorch anchor scripts use, for a
//! like-for-like comparison. Tokenization is outside the timed region in both modes, as in the anchors;
//! a timed call is one forward plus the copy of its embeddings to the host.
//!
//! This is a benchmark, not a test: it prints figures and asserts nothing about them.
//!
//! Its options are checked before the model loads ([`BenchOptions::validate`]: thread counts, batch
//! sizes and seconds within their limits) and the `--json` file is opened then too ([`JsonFile`]), so a
//! typo fails at once instead of after the whole sweep.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use braid_model::load::Embedder;
use braid_model::{pad_batch, Encoding, PaddedBatch};
use braid_runtime::MAX_WORKER_SLOTS;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::output::{note, to_stdout};

/// The built-in corpus: one real sentence per line.
const SENTENCES: &str = include_str!("../data/sentences.txt");
/// Distinct batches each point cycles through (fewer for large batches, see `HELD_SEQUENCES`).
const DISTINCT_BATCHES: usize = 64;
/// The most input sequences held for one batch size: bounds the host memory of large batches.
const HELD_SEQUENCES: usize = 16_384;
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
}

impl BenchOptions {
    /// Refuses, before anything runs, thread counts outside 1..=64 (the stream pool's worker slots),
    /// batch sizes outside 1..=4096 and a timed window that is not a number of seconds in (0, 3600].
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
            self.seconds > 0.0 && self.seconds <= MAX_SECONDS,
            "--seconds {}: the timed window per point must be more than 0 and at most {MAX_SECONDS} \
             seconds (one hour)",
            self.seconds
        );
        Ok(())
    }

    /// The most caller threads of any point.
    pub fn most_threads(&self) -> usize {
        self.threads.iter().copied().max().unwrap_or(1)
    }
}

/// The `--json` file, opened before the run so that a bad path fails at once. An existing file keeps
/// its contents until the figures replace them; a file this run created is removed again if the run
/// fails.
pub struct JsonFile {
    path: PathBuf,
    file: File,
    /// Set while the file is one this run created and has not yet written: removed on drop.
    remove_on_drop: bool,
}

impl JsonFile {
    /// Opens (or creates) `path` for writing, without truncating it yet.
    pub fn open(path: &Path) -> Result<Self> {
        let context = || format!("cannot create the --json file {}", path.display());
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
        result.with_context(|| format!("cannot write the figures to {}", path.display()))
    }
}

impl Drop for JsonFile {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One (threads, batch) point's figures.
#[derive(Clone, Debug, Serialize)]
pub struct BenchPoint {
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

/// Runs the sweep on `model`, prints the table to `out` (stdout) and the figures to `json`; returns
/// the points.
pub fn run(
    model: &Arc<dyn Embedder>,
    model_name: &str,
    options: &BenchOptions,
    json: Option<JsonFile>,
    out: &mut dyn Write,
) -> Result<Vec<BenchPoint>> {
    options.validate()?;
    let inputs = match options.seq {
        Some(seq) => format!("synthetic ids, {seq} tokens each"),
        None => "sentence corpus (data/sentences.txt)".to_string(),
    };
    let device = model.device_description();
    let dtype = model.dtype();
    note!(
        "braid bench: {model_name} ({dtype}) on {device}; inputs: {inputs}; {} s per point",
        options.seconds
    );

    let total = options.threads.len() * options.batches.len();
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let progress =
        ProgressBar::new((total as f64 * options.seconds * 1000.0) as u64).with_style(style);
    let mut points = Vec::with_capacity(total);
    for &batch in &options.batches {
        let batches = Arc::new(make_batches(&**model, batch, options.seq)?);
        for &threads in &options.threads {
            progress.set_message(format!("{threads} threads x batch {batch}"));
            let start = progress.position();
            let point = run_point(model, &batches, threads, options.seconds, |elapsed| {
                progress.set_position(start + elapsed.as_millis() as u64)
            })?;
            progress.set_position(start + (options.seconds * 1000.0) as u64);
            points.push(point);
        }
    }
    progress.finish_and_clear();
    to_stdout(print_table(out, &points))?;
    if let Some(json) = json {
        let report = Report {
            tool: concat!("braid ", env!("CARGO_PKG_VERSION")),
            device,
            model: model_name.to_string(),
            dtype: dtype.to_string(),
            inputs,
            cores: cores(),
            points: &points,
        };
        let text = serde_json::to_string_pretty(&report)?;
        let path = json.path.clone();
        json.write(&text)?;
        note!("braid bench: figures written to {}", path.display());
    }
    Ok(points)
}

/// Up to `DISTINCT_BATCHES` padded batches of `batch` inputs (at most `HELD_SEQUENCES` inputs in
/// all, at least one batch): consecutive sentences of the corpus (wrapping), or synthetic ids of
/// exactly `seq` tokens.
fn make_batches(
    model: &dyn Embedder,
    batch: usize,
    seq: Option<usize>,
) -> Result<Vec<PaddedBatch>> {
    let spec = model.spec();
    let distinct = (HELD_SEQUENCES / batch).clamp(1, DISTINCT_BATCHES);
    let encodings: Vec<Encoding> = match seq {
        Some(seq) => {
            ensure!(
                (2..=spec.max_seq_length).contains(&seq),
                "--seq must be between 2 and the model's max_seq_length {}",
                spec.max_seq_length
            );
            (0..distinct * batch)
                .map(|i| synthetic(i as u64, seq, spec.config.vocab_size))
                .collect()
        }
        None => {
            let sentences: Vec<&str> = SENTENCES.lines().filter(|l| !l.trim().is_empty()).collect();
            spec.tokenizer.encode_batch(&sentences)?
        }
    };
    ensure!(!encodings.is_empty(), "the bench corpus has no sentences");
    Ok((0..distinct)
        .map(|b| {
            let rows: Vec<Encoding> = (0..batch)
                .map(|i| encodings[(b * batch + i) % encodings.len()].clone())
                .collect();
            pad_batch(&rows, spec.config.pad_token_id)
        })
        .collect())
}

/// `[CLS] x … x [SEP]` with ids drawn from 1000..30000 (as the anchors' random ids), deterministic in `seed`.
fn synthetic(seed: u64, len: usize, vocab: usize) -> Encoding {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut ids: Vec<u32> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (1000 + state % 29_000).min(vocab.saturating_sub(1) as u64) as u32
        })
        .collect();
    ids[0] = 101;
    ids[len - 1] = 102;
    Encoding {
        type_ids: vec![0; len],
        ids,
    }
}

/// One point: `threads` fresh threads (each leases its own stream), one warm-up call each, then calls
/// until `seconds` have passed.
fn run_point(
    model: &Arc<dyn Embedder>,
    batches: &Arc<Vec<PaddedBatch>>,
    threads: usize,
    seconds: f64,
    on_tick: impl Fn(Duration),
) -> Result<BenchPoint> {
    let window = Duration::try_from_secs_f64(seconds)
        .map_err(|e| anyhow!("--seconds {seconds} is not a usable duration: {e}"))?;
    let before = model.allocator_stats();
    model.reset_peak_stats();
    let ready = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (model, batches, ready) = (model.clone(), batches.clone(), ready.clone());
            std::thread::Builder::new()
                .name(format!("bench-caller-{t}"))
                .spawn(move || -> Result<(usize, usize, Vec<Duration>)> {
                    let mut next = t * 7;
                    let mut call = || {
                        let batch = &batches[next % batches.len()];
                        next += 1;
                        model.embed_batch(batch).map(|_| batch)
                    };
                    let warm_up = call();
                    ready.wait();
                    warm_up?;
                    let start = Instant::now();
                    let (mut sequences, mut tokens, mut latencies) = (0, 0, Vec::new());
                    while start.elapsed() < window {
                        let t0 = Instant::now();
                        let batch = call()?;
                        latencies.push(t0.elapsed());
                        sequences += batch.batch;
                        tokens += batch.mask.iter().filter(|&&m| m != 0.0).count();
                    }
                    Ok((sequences, tokens, latencies))
                })
                .context("cannot start a bench caller thread")
        })
        .collect::<Result<_>>()?;
    ready.wait();
    let start = Instant::now();
    while handles.iter().any(|h| !h.is_finished()) {
        on_tick(start.elapsed().min(window));
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (mut sequences, mut tokens, mut latencies) = (0, 0, Vec::new());
    for handle in handles {
        let (s, t, l) = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a bench caller thread panicked"))??;
        sequences += s;
        tokens += t;
        latencies.extend(l);
    }
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    let after = model.allocator_stats();
    let hits = (after.small.hits + after.large.hits) - (before.small.hits + before.large.hits);
    let misses =
        (after.small.misses + after.large.misses) - (before.small.misses + before.large.misses);
    Ok(BenchPoint {
        threads,
        batch: batches[0].batch,
        sequences,
        seconds: elapsed,
        seq_per_s: sequences as f64 / elapsed,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        mean_tokens: tokens as f64 / sequences.max(1) as f64,
        hit_rate: hits as f64 / (hits + misses).max(1) as f64,
        peak_reserved_bytes: after.peak_reserved_bytes,
        leaked_slots: model.leased_slots(),
    })
}

fn print_table(out: &mut dyn Write, points: &[BenchPoint]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>7}  {:>5}  {:>10}  {:>9}  {:>9}  {:>6}  {:>8}  {:>10}",
        "threads", "batch", "seq/s", "p50 ms", "p99 ms", "tokens", "hit rate", "peak MiB"
    )?;
    for p in points {
        writeln!(
            out,
            "{:>7}  {:>5}  {:>10.1}  {:>9.2}  {:>9.2}  {:>6.1}  {:>7.1}%  {:>10.1}",
            p.threads,
            p.batch,
            p.seq_per_s,
            p.p50_ms,
            p.p99_ms,
            p.mean_tokens,
            p.hit_rate * 100.0,
            p.peak_reserved_bytes as f64 / (1 << 20) as f64
        )?;
    }
    out.flush()
}
