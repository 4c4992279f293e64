//! The executors: `config.executors` threads per device, each with its own leased stream on its
//! device, that take batches from the engine's one queue, run them, and deliver each result to its
//! request; where a batch goes when there are several devices, and what happens when one fails.
//!
//! # Taking work
//!
//! An executor takes a batch as soon as it is free (no timer unless `max_wait` asks for one); while
//! all are busy, the queue grows into the next batch.
//!
//! # Placement: the device with the least queued work
//!
//! A pull design. A device's queued work is the padded tokens of the batches running on it
//! ([`Device::load`]). An executor that has formed a batch of `p` padded tokens takes it unless
//! another healthy device has an idle executor and a load `l` with `l + p <= ` this device's load:
//! then it leaves the batch in the queue for that device, sets the device's `handoff` flag and wakes
//! the sleeping executors. The flag is part of every sleeping executor's stop condition, which the
//! doorbell checks under its lock after the sleeper registered, and the wake takes that lock: the
//! pattern the doorbell's loom model checks for a stop (`a_stop_wakes_a_sleeping_executor`), so the
//! hand-off is not lost. Idle counts change under the pending lock, where placement reads them: an
//! executor counted idle looks at the queue again before it can sleep for long or exit (exit needs an
//! empty queue). The device handed to would pass the batch on only to a device with a load lower still
//! (`l' + p <= l`), never back, so a batch settles. With one device there is no placement.
//!
//! # Failures
//!
//! A failed forward is classified ([`Fault`]):
//!
//! - **input** (a bad token id, ...): the batch is split in two and each half retried, down to single
//!   sequences, so only the request with the bad input fails;
//! - **out of memory**: split likewise; a single sequence still out of memory retires the device when
//!   another device is healthy (its memory is effectively gone), and fails only its request on the
//!   last healthy device (a lone device is never retired for memory, which comes back);
//! - **device** (a failed stream, a driver error): the device is retired at once.
//!
//! A retired device takes no more work: its executors exit, and each hands the sequences of its batch
//! that were not delivered back to the queue ([`Queue::requeue`]) for the other devices. Each sequence
//! is in exactly one piece of one batch, and a piece is either delivered or handed back whole, so
//! nothing is lost or delivered twice. Once no device is healthy, every queued request fails with
//! [`EngineError::NoHealthyDevice`] and new submits are refused with it (`Engine::submit` checks the
//! healthy count inside its `submitting` window).
//!
//! # Ending
//!
//! An executor exits at shutdown, and an executor of a retired device gives up the queue when no
//! device is left, only when the engine is quiet: nobody mid-submit, no executor holding a batch (a
//! held batch may still come back to the queue, see Failures), nothing queued. `holding` is raised
//! under the pending lock as a batch leaves the queue and lowered after the batch is delivered,
//! failed or handed back; the quiet check reads it under that lock, so no batch is ever outside both
//! the queue and `holding`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_model::Encoding;
use parking_lot::Mutex;

use crate::config::EngineConfig;
use crate::device::Device;
use crate::error::{EngineError, Fault};
use crate::queue::{Pending, Queue};
use crate::request::{Request, Sequence};

/// How long an idle executor sleeps before it looks again on its own (a safety net: submitters wake it).
const IDLE_SLEEP: Duration = Duration::from_millis(100);
/// How long an executor that just ran a batch spins for new work before it sleeps: a thread wake-up
/// costs tens of microseconds, and a caller's next request often follows its last result at once.
const IDLE_SPIN: Duration = Duration::from_micros(200);

/// What the engine's threads share.
pub(crate) struct Shared {
    /// The devices, in the order given (at least one).
    pub(crate) devices: Vec<Device>,
    pub(crate) config: EngineConfig,
    pub(crate) queue: Queue,
    /// Set by shutdown (SeqCst, with `submitting`: see `Engine::submit`).
    pub(crate) closing: AtomicBool,
    /// Callers between their `closing` / healthy check and their push.
    pub(crate) submitting: AtomicUsize,
    /// Blocking callers waiting for a result now (Relaxed: it only decides whether to spin).
    pub(crate) waiting: AtomicUsize,
    /// While fewer callers than this wait, they spin before sleeping (half the cores on a GPU backend,
    /// none on the CPU backend).
    pub(crate) spin_waiters: usize,
    pub(crate) stats: Counters,
    /// Devices not retired (SeqCst; lowered under `health` only).
    pub(crate) healthy_devices: AtomicUsize,
    /// Taken to retire a device, so its flag and `healthy_devices` change together.
    pub(crate) health: Mutex<()>,
    /// Batches executors hold (module doc, "Ending"; SeqCst, raised under the pending lock).
    pub(crate) holding: AtomicUsize,
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
    Run {
        batch: Vec<Sequence>,
        padded: usize,
    },
    /// `max_wait`: let the batch fill for this long first.
    Wait(Duration),
    Idle,
}

/// A batch or a piece of one: the encodings (what the forward borrows) and where each result goes.
struct Piece {
    encodings: Vec<Encoding>,
    targets: Vec<Target>,
}

/// Where one sequence's result goes, and its submission order (kept if it is handed back).
struct Target {
    request: Arc<Request>,
    index: usize,
    order: u64,
}

impl Piece {
    fn new(batch: Vec<Sequence>) -> Self {
        let (encodings, targets) = batch
            .into_iter()
            .map(|s| {
                let target = Target {
                    request: s.request,
                    index: s.index,
                    order: s.order,
                };
                (s.encoding, target)
            })
            .unzip();
        Self { encodings, targets }
    }

    fn len(&self) -> usize {
        self.encodings.len()
    }

    /// Splits off the sequences from `at` on.
    fn split_off(&mut self, at: usize) -> Self {
        Self {
            encodings: self.encodings.split_off(at),
            targets: self.targets.split_off(at),
        }
    }

    fn into_sequences(self) -> impl Iterator<Item = Sequence> {
        self.encodings
            .into_iter()
            .zip(self.targets)
            .map(|(encoding, t)| Sequence {
                encoding,
                request: t.request,
                index: t.index,
                order: t.order,
            })
    }
}

impl Shared {
    /// An executor's life on device `device`: lease a stream there (reported on `ready`), then
    /// batches until shutdown or until the device is retired.
    pub(crate) fn run_executor(
        self: Arc<Self>,
        device: usize,
        ready: std::sync::mpsc::Sender<Result<(), EngineError>>,
    ) {
        let dev = &self.devices[device];
        let model = dev.model.clone();
        let stream = match model.use_worker_stream() {
            Ok(stream) => stream,
            Err(error) => {
                let _ = ready.send(Err(error.into()));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        tracing::debug!(device = %dev.name, stream = stream.index(), "engine executor started");
        let (mut idle, mut ran) = (false, false);
        while dev.is_healthy() {
            let healthy = self.healthy_devices.load(Ordering::SeqCst);
            // Look again at once on a hand-off to this device, any device retired, or shutdown with
            // no batch held (then this executor may exit; while batches are held it sleeps, and the
            // executor that ends the last one wakes it).
            let look = || {
                dev.handoff.load(Ordering::SeqCst)
                    || self.healthy_devices.load(Ordering::SeqCst) != healthy
                    || (self.closing() && self.holding.load(Ordering::SeqCst) == 0)
            };
            match self.next(dev, &mut idle) {
                Next::Run { batch, padded } => {
                    self.run(dev, batch, padded);
                    ran = true;
                    if self.closing() {
                        // Executors waiting for the last batch to end may now exit (`run` lowered
                        // `holding` before this read of `closing`; shutdown wakes everyone after
                        // setting it, so one of the two wakes a sleeper that saw a batch held).
                        self.queue.wake_all();
                    }
                }
                Next::Wait(pause) => {
                    ran = false;
                    self.queue.sleep(pause, look);
                }
                Next::Idle if self.finished() => break,
                Next::Idle => {
                    let spun = ran && self.queue.spin_for_work(IDLE_SPIN, look);
                    ran = false;
                    if !spun {
                        self.queue.sleep(IDLE_SLEEP, look);
                    }
                }
            }
        }
        if idle {
            self.queue.pending.lock().idle[device] -= 1;
        }
        drop(stream);
        if self.healthy_devices.load(Ordering::SeqCst) == 0 {
            self.fail_queued();
        }
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Shutting down and quiet.
    fn finished(&self) -> bool {
        self.closing() && self.quiet(&self.queue.pending.lock())
    }

    /// Nobody mid-submit, no batch held, nothing queued (module doc, "Ending"). `pending` is the
    /// locked pending set: `holding` is read under its lock.
    fn quiet(&self, pending: &Pending) -> bool {
        self.submitting.load(Ordering::SeqCst) == 0
            && self.holding.load(Ordering::SeqCst) == 0
            && self.queue.inbox_is_empty()
            && pending.len() == 0
    }

    fn next(&self, dev: &Device, idle: &mut bool) -> Next {
        let config = &self.config;
        let mut pending = self.queue.pending.lock();
        if std::mem::take(idle) {
            pending.idle[dev.index] -= 1;
        }
        dev.handoff.store(false, Ordering::SeqCst);
        self.queue.drain_inbox(&mut pending);
        let dropped = pending.drop_cancelled();
        if dropped > 0 {
            self.queue.taken(dropped);
        }
        let Some(oldest) = pending.oldest_accepted() else {
            pending.idle[dev.index] += 1;
            *idle = true;
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
        let longest = batch.iter().map(Sequence::tokens).max().unwrap_or(0);
        let padded = longest * batch.len();
        if let Some(target) = self.less_loaded(dev, padded, &pending.idle) {
            pending.put_back(batch);
            pending.idle[dev.index] += 1;
            *idle = true;
            drop(pending);
            self.devices[target].handoff.store(true, Ordering::SeqCst);
            self.queue.wake_all();
            return Next::Idle;
        }
        self.holding.fetch_add(1, Ordering::SeqCst);
        dev.started(batch.len(), padded);
        drop(pending);
        self.queue.taken(batch.iter().map(Sequence::tokens).sum());
        Next::Run { batch, padded }
    }

    /// The healthy device with an idle executor and the least load, if taking `padded` more tokens
    /// would leave it no more loaded than `dev` is now (module doc, "Placement").
    fn less_loaded(&self, dev: &Device, padded: usize, idle: &[usize]) -> Option<usize> {
        if self.devices.len() == 1 {
            return None;
        }
        let mine = dev.load.load(Ordering::SeqCst);
        // An empty batch still counts: a hand-off must make the target busier, or two devices
        // of equal load would pass it back and forth.
        let padded = padded.max(1);
        self.devices
            .iter()
            .filter(|d| d.index != dev.index && idle[d.index] > 0 && d.is_healthy())
            .map(|d| (d.load.load(Ordering::SeqCst), d.index))
            .min()
            .filter(|&(load, _)| load + padded <= mine)
            .map(|(_, index)| index)
    }

    fn run(&self, dev: &Device, batch: Vec<Sequence>, padded: usize) {
        let tokens: usize = batch.iter().map(Sequence::tokens).sum();
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
        self.run_pieces(dev, Piece::new(batch));
        dev.ended(padded);
        self.holding.fetch_sub(1, Ordering::SeqCst);
    }

    /// Runs a batch; on failure splits it and retries the halves, down to single sequences, or hands
    /// it back when the device fails (module doc, "Failures").
    fn run_pieces(&self, dev: &Device, batch: Piece) {
        // Pieces still to run, the next on top: a split runs its first half before its second.
        let mut work = vec![batch];
        while let Some(mut piece) = work.pop() {
            if !dev.is_healthy() {
                work.push(piece);
                return self.hand_back(dev, work);
            }
            let start = Instant::now();
            let error = match dev.model.embed_encodings(&piece.encodings) {
                Ok(embeddings) => {
                    metrics::histogram!("braid_engine_forward_seconds")
                        .record(start.elapsed().as_secs_f64());
                    for (target, embedding) in piece.targets.iter().zip(embeddings) {
                        target.request.deliver(target.index, embedding);
                    }
                    continue;
                }
                Err(error) => error,
            };
            let fault = Fault::of(&error);
            let error = EngineError::from(error);
            if fault == Fault::Device {
                self.retire(dev, error.to_string(), false);
                work.push(piece);
                return self.hand_back(dev, work);
            }
            if piece.len() > 1 {
                tracing::debug!(sequences = piece.len(), %error, "batch failed; retrying it in halves");
                metrics::counter!("braid_engine_split_batches_total", "kind" => error.kind())
                    .increment(1);
                self.stats.split_batches.fetch_add(1, Ordering::Relaxed);
                let later = piece.split_off(piece.len() / 2);
                work.push(later);
                work.push(piece);
                continue;
            }
            let reason = || format!("out of memory on a single sequence after splitting: {error}");
            if fault == Fault::OutOfMemory && self.retire(dev, reason(), true) {
                work.push(piece);
                return self.hand_back(dev, work);
            }
            metrics::counter!("braid_engine_errors_total", "kind" => error.kind()).increment(1);
            self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            for target in piece.targets {
                target.request.fail(error.clone());
            }
        }
    }

    /// Retires `dev` for `reason` — unless `keep_last` and it is the last healthy device; whether
    /// it is retired now (by this call or before).
    pub(crate) fn retire(&self, dev: &Device, reason: String, keep_last: bool) -> bool {
        let health = self.health.lock();
        if !dev.is_healthy() {
            return true;
        }
        if keep_last && self.healthy_devices.load(Ordering::SeqCst) <= 1 {
            return false;
        }
        dev.retire(reason);
        self.healthy_devices.fetch_sub(1, Ordering::SeqCst);
        drop(health);
        // Its sleeping executors exit; the others' placement forgets it.
        self.queue.wake_all();
        true
    }

    /// Hands the pieces a retired device did not run back to the queue, for the other devices.
    fn hand_back(&self, dev: &Device, pieces: Vec<Piece>) {
        let sequences: Vec<Sequence> = pieces.into_iter().flat_map(Piece::into_sequences).collect();
        if sequences.is_empty() {
            return;
        }
        tracing::warn!(device = %dev.name, sequences = sequences.len(), "handing a failed device's batch back to the queue");
        dev.requeued(sequences.len());
        self.queue.requeue(sequences);
    }

    /// No device is left: fails every queued request, until the engine is quiet (module doc).
    fn fail_queued(&self) {
        loop {
            let mut pending = self.queue.pending.lock();
            self.queue.drain_inbox(&mut pending);
            let sequences = pending.take_all();
            let quiet = self.quiet(&pending);
            drop(pending);
            if !sequences.is_empty() {
                self.queue
                    .taken(sequences.iter().map(Sequence::tokens).sum());
                let error = self.no_healthy_device();
                metrics::counter!("braid_engine_errors_total", "kind" => error.kind()).increment(1);
                for sequence in sequences {
                    sequence.request.fail(error.clone());
                }
            }
            if quiet {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// The error for a request when no device is healthy: each device and why it failed.
    pub(crate) fn no_healthy_device(&self) -> EngineError {
        let detail = self
            .devices
            .iter()
            .map(|d| format!("{}: {}", d.name, d.failure()))
            .collect::<Vec<_>>()
            .join("; ");
        EngineError::NoHealthyDevice { detail }
    }

    /// The healthy device with the least load (direct mode's placement), if any.
    pub(crate) fn least_loaded(&self) -> Option<&Device> {
        self.devices
            .iter()
            .filter(|d| d.is_healthy())
            .min_by_key(|d| d.load.load(Ordering::SeqCst))
    }
}
