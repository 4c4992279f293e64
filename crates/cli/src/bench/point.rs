//! One point of `braid bench`: its inputs (real sentences or synthetic ids, tokenized and padded up
//! front, outside the timed region) and its run — `threads` fresh caller threads, one warm-up call each,
//! then calls until the window has passed — in direct mode (each caller's batch on its own leased
//! stream) or engine mode (each caller hands its batch's sequences to one shared engine, which forms
//! its own batches across callers). With several devices, direct mode's callers are spread over them
//! in turn (caller t on device t mod n), and engine mode's engine drives them all.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use braid_engine::{Engine, EngineDevice};
use braid_model::load::Embedder;
use braid_model::{Encoding, TokenBatch};

use super::{BenchMode, BenchOptions, BenchPoint};

/// The built-in corpus: one real sentence per line.
pub(crate) const SENTENCES: &str = include_str!("../../data/sentences.txt");
/// Distinct batches each point cycles through (fewer for large batches, see `HELD_SEQUENCES`).
const DISTINCT_BATCHES: usize = 64;
/// The most input sequences held for one batch size: bounds the host memory of large batches.
const HELD_SEQUENCES: usize = 16_384;

/// One caller batch: its sequences (what an engine takes) and the same prepared in the layout the
/// device prefers (what a direct forward takes: padding or packing is not part of the timed call).
pub(super) struct CallerBatch {
    encodings: Vec<Encoding>,
    prepared: TokenBatch,
}

/// Up to `DISTINCT_BATCHES` batches of `batch` inputs (at most `HELD_SEQUENCES` inputs in
/// all, at least one batch): consecutive sentences of the corpus (wrapping), or synthetic ids of
/// exactly `seq` tokens.
pub(super) fn make_batches(
    model: &dyn Embedder,
    batch: usize,
    seq: Option<usize>,
) -> Result<Vec<CallerBatch>> {
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
            CallerBatch {
                prepared: model.prepare(&rows),
                encodings: rows,
            }
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

/// One point: `threads` fresh caller threads, one warm-up call each, then calls until the window has
/// passed. In engine mode the point has an engine of its own, dropped (its executors' streams
/// returned) when the point ends.
pub(super) fn run_point(
    devices: &[EngineDevice],
    options: &BenchOptions,
    mode: BenchMode,
    batches: &Arc<Vec<CallerBatch>>,
    threads: usize,
    on_tick: impl Fn(Duration),
) -> Result<BenchPoint> {
    let seconds = options.seconds;
    let window = Duration::try_from_secs_f64(seconds)
        .map_err(|e| anyhow!("--seconds {seconds} is not a usable duration: {e}"))?;
    let backend = devices.first().context("no device")?.model.backend();
    let engine = match mode {
        BenchMode::Engine => Some(Arc::new(
            Engine::with_devices(devices.to_vec(), options.engine_config(backend))
                .context("starting the engine")?,
        )),
        BenchMode::Direct => None,
    };
    let models: Vec<&Arc<dyn Embedder>> = devices.iter().map(|d| &d.model).collect();
    let before = hits_and_misses(&models);
    for model in &models {
        model.reset_peak_stats();
    }
    let ready = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let model = models[t % models.len()].clone();
            let (batches, ready) = (batches.clone(), ready.clone());
            let engine = engine.clone();
            std::thread::Builder::new()
                .name(format!("bench-caller-{t}"))
                .spawn(move || -> Result<(usize, usize, Vec<Duration>)> {
                    let mut next = t * 7;
                    let mut call = || -> Result<&[Encoding]> {
                        let batch = &batches[next % batches.len()];
                        next += 1;
                        match &engine {
                            Some(engine) => {
                                engine.embed_encodings(batch.encodings.clone())?;
                            }
                            None => {
                                model.embed_prepared(&batch.prepared)?;
                            }
                        }
                        Ok(&batch.encodings)
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
                        sequences += batch.len();
                        tokens += batch.iter().map(Encoding::len).sum::<usize>();
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
    // Direct mode: caller t ran on device t mod n.
    let mut direct_sequences = vec![0u64; devices.len()];
    for (caller, handle) in handles.into_iter().enumerate() {
        let (s, t, l) = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a bench caller thread panicked"))??;
        direct_sequences[caller % devices.len()] += s as u64;
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
    let after = hits_and_misses(&models);
    let (hits, misses) = (after.0 - before.0, after.1 - before.1);
    let device_sequences = match &engine {
        Some(engine) => engine
            .devices()
            .into_iter()
            .map(|d| (d.name, d.sequences))
            .collect(),
        None => devices
            .iter()
            .zip(direct_sequences)
            .map(|(d, s)| (d.name.clone(), s))
            .collect(),
    };
    let (mean_batch, padding_share) = match engine.map(|e| e.stats()) {
        Some(stats) => (stats.mean_batch_size(), stats.padding_share()),
        None => {
            let first = &batches[0];
            let real: usize = first.encodings.iter().map(Encoding::len).sum();
            let computed = first.prepared.computed_tokens();
            (
                first.prepared.sequences() as f64,
                1.0 - real as f64 / computed.max(1) as f64,
            )
        }
    };
    Ok(BenchPoint {
        mode,
        threads,
        batch: batches[0].prepared.sequences(),
        sequences,
        seconds: elapsed,
        seq_per_s: sequences as f64 / elapsed,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        mean_tokens: tokens as f64 / sequences.max(1) as f64,
        hit_rate: hits as f64 / (hits + misses).max(1) as f64,
        peak_reserved_bytes: models
            .iter()
            .map(|m| m.allocator_stats().peak_reserved_bytes)
            .sum(),
        leaked_slots: models.iter().map(|m| m.leased_slots()).sum(),
        mean_batch,
        padding_share,
        device_sequences,
    })
}

/// The allocators' cache hits and misses, summed over the devices.
fn hits_and_misses(models: &[&Arc<dyn Embedder>]) -> (u64, u64) {
    models.iter().fold((0, 0), |(hits, misses), model| {
        let s = model.allocator_stats();
        (
            hits + s.small.hits + s.large.hits,
            misses + s.small.misses + s.large.misses,
        )
    })
}
