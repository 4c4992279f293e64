//! The executors: K threads, each with its own leased stream, that take batches from the queue, run
//! them, and deliver each result to its request.
//!
//! An executor takes a batch as soon as it is free (no timer unless `max_wait` asks for one); while
//! all are busy, the queue grows into the next batch. A batch that fails is split in two and each half
//! retried, down to single sequences, so an out-of-memory batch runs in smaller pieces and a bad input
//! fails only its own request; nothing is lost or delivered twice (each sequence is in exactly one
//! piece). Shutdown: executors finish what was accepted, then exit.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_model::load::Embedder;
use braid_model::Encoding;

use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::queue::Queue;
use crate::request::{Request, Sequence};

/// How long an idle executor sleeps before it looks again on its own (a safety net: submitters wake it).
const IDLE_SLEEP: Duration = Duration::from_millis(100);
/// How long an idle executor spins for new work before it sleeps: a thread wake-up costs tens of
/// microseconds, and a caller's next request often follows its last result at once.
const IDLE_SPIN: Duration = Duration::from_micros(200);

/// What the engine's threads share.
pub(crate) struct Shared {
    pub(crate) model: Arc<dyn Embedder>,
    pub(crate) config: EngineConfig,
    pub(crate) queue: Queue,
    /// Set by shutdown (SeqCst, with `submitting`: see `Engine::submit`).
    pub(crate) closing: AtomicBool,
    /// Callers between their `closing` check and their push.
    pub(crate) submitting: AtomicUsize,
    /// Blocking callers waiting for a result now (Relaxed: it only decides whether to spin).
    pub(crate) waiting: AtomicUsize,
    /// While fewer callers than this wait, they spin before sleeping (half the cores on a GPU backend,
    /// none on the CPU backend).
    pub(crate) spin_waiters: usize,
    pub(crate) stats: Counters,
}

/// Totals since the engine started (Relaxed: statistics).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) batches: AtomicU64,
    pub(crate) sequences: AtomicU64,
    pub(crate) tokens: AtomicU64,
    pub(crate) padded_tokens: AtomicU64,
    pub(crate) failed_batches: AtomicU64,
    pub(crate) split_batches: AtomicU64,
}

/// What an executor does next.
enum Next {
    Run(Vec<Sequence>),
    /// `max_wait`: let the batch fill for this long first.
    Wait(Duration),
    Idle,
}

impl Shared {
    /// An executor's life: lease a stream (reported on `ready`), then batches until shutdown.
    pub(crate) fn run_executor(
        self: Arc<Self>,
        ready: std::sync::mpsc::Sender<Result<(), EngineError>>,
    ) {
        let model = self.model.clone();
        let stream = match model.use_worker_stream() {
            Ok(stream) => stream,
            Err(error) => {
                let _ = ready.send(Err(error.into()));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        tracing::debug!(stream = stream.index(), "engine executor started");
        loop {
            match self.next() {
                Next::Run(batch) => self.run(batch),
                Next::Wait(pause) => self.queue.sleep(pause, || self.closing()),
                Next::Idle if self.finished() => break,
                Next::Idle => {
                    if !self.queue.spin_for_work(IDLE_SPIN) {
                        self.queue.sleep(IDLE_SLEEP, || self.closing());
                    }
                }
            }
        }
        drop(stream);
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Shutting down, nobody mid-submit, nothing queued.
    fn finished(&self) -> bool {
        self.closing()
            && self.submitting.load(Ordering::SeqCst) == 0
            && self.queue.inbox_is_empty()
            && self.queue.pending.lock().len() == 0
    }

    fn next(&self) -> Next {
        let config = &self.config;
        let mut pending = self.queue.pending.lock();
        self.queue.drain_inbox(&mut pending);
        let dropped = pending.drop_cancelled();
        if dropped > 0 {
            self.queue.taken(dropped);
        }
        let Some(oldest) = pending.oldest_accepted() else {
            return Next::Idle;
        };
        if !config.max_wait.is_zero()
            && !self.closing()
            && pending.padded_tokens() < config.max_batch_tokens
            && pending.len() < config.max_batch_size
        {
            let waited = oldest.elapsed();
            if waited < config.max_wait {
                return Next::Wait(config.max_wait - waited);
            }
        }
        let batch = pending.take_batch(config.max_batch_tokens, config.max_batch_size);
        drop(pending);
        self.queue.taken(batch.iter().map(Sequence::tokens).sum());
        Next::Run(batch)
    }

    fn run(&self, batch: Vec<Sequence>) {
        let tokens: usize = batch.iter().map(Sequence::tokens).sum();
        let longest = batch.iter().map(Sequence::tokens).max().unwrap_or(0);
        let padded = longest * batch.len();
        if let Some(oldest) = batch.iter().map(|s| s.request.accepted).min() {
            metrics::histogram!("braid_engine_queue_wait_seconds")
                .record(oldest.elapsed().as_secs_f64());
        }
        metrics::histogram!("braid_engine_batch_size").record(batch.len() as f64);
        metrics::histogram!("braid_engine_batch_tokens").record(padded as f64);
        metrics::histogram!("braid_engine_padding_share")
            .record(1.0 - tokens as f64 / padded.max(1) as f64);
        let stats = &self.stats;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .sequences
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        stats
            .padded_tokens
            .fetch_add(padded as u64, Ordering::Relaxed);
        let (encodings, targets): (Vec<Encoding>, Vec<(Arc<Request>, usize)>) = batch
            .into_iter()
            .map(|s| (s.encoding, (s.request, s.index)))
            .unzip();
        self.run_pieces(encodings, targets);
    }

    /// Runs a batch; on failure splits it and retries the halves, down to single sequences.
    fn run_pieces(&self, encodings: Vec<Encoding>, targets: Vec<(Arc<Request>, usize)>) {
        let start = Instant::now();
        match self.model.embed_encodings(&encodings) {
            Ok(embeddings) => {
                metrics::histogram!("braid_engine_forward_seconds")
                    .record(start.elapsed().as_secs_f64());
                for ((request, index), embedding) in targets.iter().zip(embeddings) {
                    request.deliver(*index, embedding);
                }
            }
            Err(error) if encodings.len() > 1 => {
                let error = EngineError::from(error);
                tracing::debug!(sequences = encodings.len(), %error, "batch failed; retrying it in halves");
                metrics::counter!("braid_engine_split_batches_total", "kind" => error.kind())
                    .increment(1);
                self.stats.split_batches.fetch_add(1, Ordering::Relaxed);
                let (mut encodings, mut targets) = (encodings, targets);
                let mid = encodings.len() / 2;
                let (later_encodings, later_targets) =
                    (encodings.split_off(mid), targets.split_off(mid));
                self.run_pieces(encodings, targets);
                self.run_pieces(later_encodings, later_targets);
            }
            Err(error) => {
                let error = EngineError::from(error);
                metrics::counter!("braid_engine_errors_total", "kind" => error.kind()).increment(1);
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                for (request, _) in targets {
                    request.fail(error.clone());
                }
            }
        }
    }
}
