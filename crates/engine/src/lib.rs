//! braid-engine: many caller threads become GPU-saturating batches, on one device or several.
//!
//! Threads alone do not fill a GPU; batching does (the seed's fork measured batching 21–400x over
//! threading). An [`Engine`] is shared by every caller (`Arc` or `&`), object-safe over the device: it
//! holds an `Arc<dyn Embedder>` from `braid_model::load` per device.
//!
//! - **Batched mode** ([`Mode::Batched`], what [`Mode::Auto`] picks on a GPU): a caller tokenizes on its own
//!   thread (callers are the CPU parallelism), then enqueues its sequences — a lock-free push, bounded
//!   in tokens ([`EngineError::Overloaded`] past the bound). K executor threads per device (`executor`),
//!   each on its own leased stream of its device, take batches formed by a padded-token budget and a
//!   size limit, grouping similar lengths (`queue`), so upload, compute and download of different
//!   batches overlap. An idle executor takes a batch at once; while all are busy the queue becomes
//!   the next batch (continuous batching, as text-embeddings-inference does with one batch in flight
//!   — here K per device).
//! - **Direct mode** ([`Mode::Direct`], what [`Mode::Auto`] picks on the CPU): each caller runs its own
//!   forward on its own leased stream (with several devices, on the healthy device with the least
//!   work in flight, on a stream leased there for the call).
//!
//! **Several devices** ([`Engine::with_devices`]: one model, so one runtime, allocator and stream pool,
//! per device; nothing shared across devices on any per-op path): each batch goes to the device with
//! the least queued work, and a device that fails (a failed stream, a driver error, out of memory
//! that splitting down to one sequence does not cure) is retired — it takes no more work, and the
//! sequences of its batches in flight go back to the queue for the others, never lost, never
//! delivered twice. When no device is left, requests fail with [`EngineError::NoHealthyDevice`].
//! [`Engine::devices`] reports each device's state (the `executor` module doc has the rules).
//!
//! Results go back to each caller in input order. A failed batch is split and retried down to single
//! sequences, so an out-of-memory batch runs in pieces and a bad input fails only its request. A caller
//! that drops its [`EmbedFuture`] costs no work that has not started. [`Engine::shutdown`] (and drop)
//! stops taking requests, finishes those accepted, and joins the executors.
//!
//! Metrics go through the `metrics` facade (a server installs an exporter): `braid_engine_queued_tokens`
//! (gauge), `braid_engine_batch_size`, `braid_engine_batch_tokens` (padded), `braid_engine_padding_share`,
//! `braid_engine_queue_wait_seconds`, `braid_engine_forward_seconds` (histograms),
//! `braid_engine_errors_total{kind}` and `braid_engine_split_batches_total{kind}` (counters), and per
//! device (`device` label, see `device`): `braid_engine_device_healthy`,
//! `braid_engine_device_inflight_tokens` (gauges), `braid_engine_device_batches_total`,
//! `braid_engine_device_sequences_total`, `braid_engine_device_requeued_sequences_total` (counters).
//!
//! ```no_run
//! use braid_engine::{Engine, EngineConfig};
//! use braid_model::load::{load, LoadOptions};
//!
//! let model = load(&LoadOptions::new("models/all-MiniLM-L6-v2"))?;
//! let engine = Engine::new(model.clone(), EngineConfig::for_backend(model.backend()))?;
//! let embeddings = engine.embed(&["A man is eating food."])?;
//! assert_eq!(embeddings[0].len(), model.dim());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod device;
mod doorbell;
mod error;
mod executor;
mod queue;
mod request;
mod sync;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use braid_model::load::Embedder;
use braid_model::Encoding;
use parking_lot::Mutex;

pub use self::config::{EngineConfig, Mode};
use self::device::Device;
pub use self::device::{DeviceState, EngineDevice};
pub use self::error::EngineError;
use self::error::Fault;
use self::executor::{Counters, Shared};
use self::queue::Queue;
pub use self::request::EmbedFuture;
use self::request::{Request, Sequence};

/// How long a blocking caller spins for its result before it sleeps, when few callers wait.
const CALLER_SPIN: Duration = Duration::from_millis(2);

/// Totals since an engine started ([`Engine::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineStats {
    /// Batches run (a split batch counts once).
    pub batches: u64,
    /// Sequences in them.
    pub sequences: u64,
    /// Their real tokens.
    pub tokens: u64,
    /// Their padded tokens (sequences × the batch's longest).
    pub padded_tokens: u64,
    /// Batch pieces that failed (after splitting) and failed their requests.
    pub failed_batches: u64,
    /// Batches (or pieces) that failed and were split in two to retry.
    pub split_batches: u64,
}

impl EngineStats {
    /// Mean sequences per batch (0 when none ran).
    pub fn mean_batch_size(&self) -> f64 {
        self.sequences as f64 / self.batches.max(1) as f64
    }

    /// The share of computed tokens that were padding (0 when none ran).
    pub fn padding_share(&self) -> f64 {
        1.0 - self.tokens as f64 / self.padded_tokens.max(1) as f64
    }
}

/// Many callers' embeddings, batched across threads or run direct (module doc).
pub struct Engine {
    shared: Arc<Shared>,
    mode: Mode,
    executors: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// An engine over `model` on one device (named after its backend). In batched mode this starts
    /// `config.executors` threads, each leasing a worker stream (an error if the pool has too few
    /// free slots).
    pub fn new(model: Arc<dyn Embedder>, config: EngineConfig) -> Result<Self, EngineError> {
        Self::with_devices(vec![EngineDevice::new(model.backend(), model)], config)
    }

    /// An engine over several devices, each with the same model loaded on it (module doc). In
    /// batched mode each device gets `config.executors` threads, each leasing a worker stream of its
    /// device. The mode `Auto` stands for is the first device's backend's.
    pub fn with_devices(
        devices: Vec<EngineDevice>,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        config.validate()?;
        check_devices(&devices)?;
        let backend = devices[0].model.backend();
        let mode = config.mode.resolved(backend);
        // On the CPU backend the forward itself runs on this machine's cores: a spinning caller would
        // take them from it. On a GPU the cores are idle while the device computes.
        let spin_waiters = if backend == "cpu" {
            0
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get()) / 2
        };
        let count = devices.len();
        let shared = Arc::new(Shared {
            queue: Queue::new(config.max_queued_tokens, count),
            devices: devices
                .into_iter()
                .enumerate()
                .map(|(index, device)| Device::new(index, device))
                .collect(),
            config,
            closing: AtomicBool::new(false),
            submitting: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            spin_waiters,
            stats: Counters::default(),
            healthy_devices: AtomicUsize::new(count),
            health: Mutex::new(()),
            holding: AtomicUsize::new(0),
        });
        let engine = Self {
            shared,
            mode,
            executors: Mutex::new(Vec::new()),
        };
        if mode == Mode::Batched {
            engine.start_executors()?;
        }
        Ok(engine)
    }

    fn start_executors(&self) -> Result<(), EngineError> {
        let (ready, started) = std::sync::mpsc::channel();
        let mut executors = self.executors.lock();
        let several = self.shared.devices.len() > 1;
        for device in 0..self.shared.devices.len() {
            for index in 0..self.shared.config.executors {
                let shared = self.shared.clone();
                let ready = ready.clone();
                let name = if several {
                    format!("braid-eng-{device}-{index}")
                } else {
                    format!("braid-engine-{index}")
                };
                let handle = std::thread::Builder::new()
                    .name(name)
                    .spawn(move || shared.run_executor(device, ready))
                    .map_err(|e| EngineError::InvalidConfig {
                        name: "executors",
                        value: format!("{} started, then: {e}", executors.len()),
                        allowed: "as many threads as the system allows",
                    })?;
                executors.push(handle);
            }
        }
        let count = executors.len();
        drop(executors);
        for _ in 0..count {
            match started.recv() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    self.shutdown();
                    return Err(error);
                }
                Err(_) => {
                    self.shutdown();
                    return Err(EngineError::Internal {
                        detail: "an executor thread ended before it started".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The mode in force (`Auto` resolved).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The model (the first device's: every device holds the same model).
    pub fn model(&self) -> &Arc<dyn Embedder> {
        &self.shared.devices[0].model
    }

    /// Each device's state now: healthy or failed (and why), its batches, sequences and work in
    /// flight.
    pub fn devices(&self) -> Vec<DeviceState> {
        self.shared.devices.iter().map(Device::state).collect()
    }

    /// The model on device `index` (in [`Engine::devices`]' order), if there is one.
    pub fn device_model(&self, index: usize) -> Option<&Arc<dyn Embedder>> {
        self.shared.devices.get(index).map(|d| &d.model)
    }

    /// How many devices the engine drives.
    pub fn device_count(&self) -> usize {
        self.shared.devices.len()
    }

    /// How many of them are healthy now.
    pub fn healthy_devices(&self) -> usize {
        self.shared.healthy_devices.load(Ordering::SeqCst)
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Totals since the engine started.
    pub fn stats(&self) -> EngineStats {
        let c = &self.shared.stats;
        EngineStats {
            batches: c.batches.load(Ordering::Relaxed),
            sequences: c.sequences.load(Ordering::Relaxed),
            tokens: c.tokens.load(Ordering::Relaxed),
            padded_tokens: c.padded_tokens.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            split_batches: c.split_batches.load(Ordering::Relaxed),
        }
    }

    /// Tokens waiting in the queue now.
    pub fn queued_tokens(&self) -> usize {
        self.shared.queue.queued_tokens()
    }

    /// The embeddings of `texts`, in order; blocks until they are done. Tokenizes on this thread.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EngineError> {
        let encodings = self.model().spec().tokenizer.encode_batch(texts)?;
        self.embed_encodings(encodings)
    }

    /// The embeddings of pre-tokenized inputs (token ids from a client, fixed-length benchmarks).
    pub fn embed_encodings(&self, encodings: Vec<Encoding>) -> Result<Vec<Vec<f32>>, EngineError> {
        match self.mode {
            Mode::Batched => self.wait(self.submit(encodings)?),
            _ => self.direct(&encodings),
        }
    }

    /// [`Engine::embed`] for async callers: tokenizes and enqueues now, resolves when the embeddings
    /// are done; dropping the future cancels what has not started. In direct mode the forward runs
    /// here, on the calling thread, before this returns.
    pub fn embed_async(&self, texts: &[&str]) -> EmbedFuture {
        match self.model().spec().tokenizer.encode_batch(texts) {
            Ok(encodings) => self.embed_encodings_async(encodings),
            Err(error) => EmbedFuture {
                request: None,
                early: Some(error.into()),
            },
        }
    }

    /// [`Engine::embed_encodings`] for async callers (see [`Engine::embed_async`]).
    pub fn embed_encodings_async(&self, encodings: Vec<Encoding>) -> EmbedFuture {
        match self.mode {
            Mode::Batched => match self.submit(encodings) {
                Ok(request) => EmbedFuture {
                    request: Some(request),
                    early: None,
                },
                Err(error) => EmbedFuture {
                    request: None,
                    early: Some(error),
                },
            },
            _ => {
                let request = Request::new(encodings.len());
                match self.direct(&encodings) {
                    Ok(embeddings) => {
                        for (index, embedding) in embeddings.into_iter().enumerate() {
                            request.deliver(index, embedding);
                        }
                    }
                    Err(error) => request.fail(error),
                }
                EmbedFuture {
                    request: Some(request),
                    early: None,
                }
            }
        }
    }

    /// Direct mode: the forward on this thread, on the healthy device with the least work in flight;
    /// a device failure retires the device and the call runs again on another. With one device the
    /// forward runs on the caller's current stream; with several, on a stream leased on the chosen
    /// device for the call (the caller's current stream belongs to one device's pool).
    fn direct(&self, encodings: &[Encoding]) -> Result<Vec<Vec<f32>>, EngineError> {
        let shared = &self.shared;
        let longest = encodings.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let padded = longest * encodings.len();
        loop {
            let Some(device) = shared.least_loaded() else {
                return Err(shared.no_healthy_device());
            };
            device.started(encodings.len(), padded);
            let result = if shared.devices.len() == 1 {
                device.model.embed_encodings(encodings)
            } else {
                device
                    .model
                    .use_worker_stream()
                    .and_then(|_stream| device.model.embed_encodings(encodings))
            };
            device.ended(padded);
            match result {
                Ok(embeddings) => return Ok(embeddings),
                Err(error) if Fault::of(&error) == Fault::Device => {
                    let error = EngineError::from(error);
                    shared.retire(device, error.to_string(), false);
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Waits for a request: spinning first while fewer callers wait than half the cores (so one or a
    /// few callers pay no thread wake-up), else blocking at once (spinning callers would take the CPU
    /// the executors need).
    fn wait(&self, request: Arc<Request>) -> Result<Vec<Vec<f32>>, EngineError> {
        let waiting = &self.shared.waiting;
        let spin = if waiting.fetch_add(1, Ordering::Relaxed) < self.shared.spin_waiters {
            CALLER_SPIN
        } else {
            Duration::ZERO
        };
        let result = request.wait(spin);
        waiting.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// Enqueues a request's sequences (batched mode).
    fn submit(&self, encodings: Vec<Encoding>) -> Result<Arc<Request>, EngineError> {
        let shared = &self.shared;
        // SeqCst with `closing` and `healthy_devices`: either shutdown (or the executor that retired
        // the last device) sees this submit in flight and waits for it, or this submit sees it and is
        // refused (executors exit, or give the queue up, only when no submit is in flight).
        shared.submitting.fetch_add(1, Ordering::SeqCst);
        let result = if shared.closing.load(Ordering::SeqCst) {
            Err(EngineError::ShutDown)
        } else if shared.healthy_devices.load(Ordering::SeqCst) == 0 {
            Err(shared.no_healthy_device())
        } else {
            let request = Request::new(encodings.len());
            let sequences = encodings
                .into_iter()
                .enumerate()
                .map(|(index, encoding)| Sequence {
                    encoding,
                    request: request.clone(),
                    index,
                    order: 0,
                })
                .collect();
            shared.queue.submit(sequences).map(|()| request)
        };
        shared.submitting.fetch_sub(1, Ordering::SeqCst);
        if let Err(error) = &result {
            metrics::counter!("braid_engine_errors_total", "kind" => error.kind()).increment(1);
        }
        result
    }

    /// Stops taking requests, finishes every accepted one, and joins the executors. Idempotent; drop
    /// does it too.
    pub fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.queue.wake_all();
        let executors = std::mem::take(&mut *self.executors.lock());
        for handle in executors {
            if handle.join().is_err() {
                tracing::error!("an engine executor panicked (this is a bug)");
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Refuses an empty device list, and devices that do not hold the same model.
fn check_devices(devices: &[EngineDevice]) -> Result<(), EngineError> {
    let Some(first) = devices.first() else {
        return Err(EngineError::InvalidConfig {
            name: "devices",
            value: "none".into(),
            allowed: "at least one device",
        });
    };
    let facts = |d: &EngineDevice| {
        let spec = d.model.spec();
        (
            d.model.dim(),
            d.model.max_seq_length(),
            spec.config.vocab_size,
        )
    };
    for device in devices {
        if facts(device) != facts(first) {
            return Err(EngineError::InvalidConfig {
                name: "devices",
                value: format!(
                    "{} holds a model of (dimension, max_seq_length, vocab_size) {:?}, {} {:?}",
                    device.name,
                    facts(device),
                    first.name,
                    facts(first)
                ),
                allowed: "the same model on every device",
            });
        }
        if devices.iter().filter(|d| d.name == device.name).count() > 1 {
            return Err(EngineError::InvalidConfig {
                name: "devices",
                value: format!("{} is named twice", device.name),
                allowed: "a distinct name per device",
            });
        }
    }
    Ok(())
}
