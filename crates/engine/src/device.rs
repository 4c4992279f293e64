//! The devices an [`crate::Engine`] drives: [`EngineDevice`] (a name and the model loaded on it),
//! [`DeviceState`] (what [`crate::Engine::devices`] reports), and the engine's own record of each
//! device — healthy or failed (and why), the padded tokens of the batches running on it (placement's
//! measure of its queued work), its totals, and its metrics.
//!
//! What it promises: nothing here is shared across devices on a per-op path. Each device's model has
//! its own runtime, allocator and stream pool; each device's counters are its own atomics, touched
//! once per batch, never per op. A device goes from healthy to failed once and never back
//! ([`Device::retire`], called under the engine's health lock, so the count of healthy devices and
//! each device's flag change together).
//!
//! Metrics (through the `metrics` facade, labelled `device="<name>"`): `braid_engine_device_healthy`
//! (gauge, 1 or 0), `braid_engine_device_inflight_tokens` (gauge: padded tokens running now),
//! `braid_engine_device_batches_total`, `braid_engine_device_sequences_total` and
//! `braid_engine_device_requeued_sequences_total` (counters: sequences a failed device handed back).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use braid_model::load::Embedder;
use metrics::{Counter, Gauge};
use parking_lot::Mutex;

/// One device for an engine: a name for reports and metric labels (`cuda:0`, `cpu:1`) and the model
/// loaded on it (its own runtime: weights are loaded once per device).
#[derive(Clone)]
pub struct EngineDevice {
    /// The name reports and metric labels use.
    pub name: String,
    /// The model on this device.
    pub model: Arc<dyn Embedder>,
}

impl EngineDevice {
    /// A device named `name` running `model`.
    pub fn new(name: impl Into<String>, model: Arc<dyn Embedder>) -> Self {
        Self {
            name: name.into(),
            model,
        }
    }
}

impl std::fmt::Debug for EngineDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineDevice")
            .field("name", &self.name)
            .field("backend", &self.model.backend())
            .finish()
    }
}

/// One device's state at one moment ([`crate::Engine::devices`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceState {
    /// Its position in the engine's device list.
    pub index: usize,
    /// Its name (`cuda:0`, `cpu:1`).
    pub name: String,
    /// The backend: "cpu", "cuda" or "wgpu".
    pub backend: &'static str,
    /// Whether it takes work (false once it failed; it does not come back).
    pub healthy: bool,
    /// Why it failed, when it did.
    pub failure: Option<String>,
    /// Batches it ran (a split batch counts once; direct mode: calls).
    pub batches: u64,
    /// Sequences in them.
    pub sequences: u64,
    /// Padded tokens of the batches running on it now.
    pub inflight_tokens: usize,
    /// Sequences it handed back to the queue when it failed (run again on the others).
    pub requeued_sequences: u64,
}

/// The engine's record of one device (module doc).
pub(crate) struct Device {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) model: Arc<dyn Embedder>,
    healthy: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Padded tokens of the batches running on it now (placement's measure of its queued work).
    pub(crate) load: AtomicUsize,
    /// Set by an executor of another device that left a batch in the queue for this one (see
    /// `executor`'s placement); cleared by this device's executor that looks next.
    pub(crate) handoff: AtomicBool,
    batches: AtomicU64,
    sequences: AtomicU64,
    requeued: AtomicU64,
    metrics: DeviceMetrics,
}

/// The metric handles of one device (registered once, with its label).
struct DeviceMetrics {
    healthy: Gauge,
    inflight_tokens: Gauge,
    batches: Counter,
    sequences: Counter,
    requeued: Counter,
}

impl Device {
    pub(crate) fn new(index: usize, device: EngineDevice) -> Self {
        let label = device.name.clone();
        let metrics = DeviceMetrics {
            healthy: metrics::gauge!("braid_engine_device_healthy", "device" => label.clone()),
            inflight_tokens: metrics::gauge!("braid_engine_device_inflight_tokens", "device" => label.clone()),
            batches: metrics::counter!("braid_engine_device_batches_total", "device" => label.clone()),
            sequences: metrics::counter!("braid_engine_device_sequences_total", "device" => label.clone()),
            requeued: metrics::counter!("braid_engine_device_requeued_sequences_total", "device" => label),
        };
        metrics.healthy.set(1.0);
        metrics.inflight_tokens.set(0.0);
        Self {
            index,
            name: device.name,
            model: device.model,
            healthy: AtomicBool::new(true),
            failure: Mutex::new(None),
            load: AtomicUsize::new(0),
            handoff: AtomicBool::new(false),
            batches: AtomicU64::new(0),
            sequences: AtomicU64::new(0),
            requeued: AtomicU64::new(0),
            metrics,
        }
    }

    /// Whether it still takes work.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Marks it failed for `reason`; whether it was healthy until now. Called under the engine's
    /// health lock only (module doc).
    pub(crate) fn retire(&self, reason: String) -> bool {
        if !self.healthy.swap(false, Ordering::SeqCst) {
            return false;
        }
        tracing::error!(device = %self.name, %reason, "engine device failed; its work goes to the others");
        *self.failure.lock() = Some(reason);
        self.metrics.healthy.set(0.0);
        true
    }

    /// Why it failed (empty while healthy).
    pub(crate) fn failure(&self) -> String {
        self.failure.lock().clone().unwrap_or_default()
    }

    /// A batch of `sequences` and `padded` tokens starts on it.
    pub(crate) fn started(&self, sequences: usize, padded: usize) {
        let load = self.load.fetch_add(padded, Ordering::SeqCst) + padded;
        self.metrics.inflight_tokens.set(load as f64);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.sequences
            .fetch_add(sequences as u64, Ordering::Relaxed);
        self.metrics.batches.increment(1);
        self.metrics.sequences.increment(sequences as u64);
    }

    /// A batch of `padded` tokens has ended on it (delivered, failed or handed back).
    pub(crate) fn ended(&self, padded: usize) {
        let load = self.load.fetch_sub(padded, Ordering::SeqCst) - padded;
        self.metrics.inflight_tokens.set(load as f64);
    }

    /// It handed `sequences` back to the queue (it failed with them in flight).
    pub(crate) fn requeued(&self, sequences: usize) {
        self.requeued.fetch_add(sequences as u64, Ordering::Relaxed);
        self.metrics.requeued.increment(sequences as u64);
    }

    /// Its state now.
    pub(crate) fn state(&self) -> DeviceState {
        DeviceState {
            index: self.index,
            name: self.name.clone(),
            backend: self.model.backend(),
            healthy: self.is_healthy(),
            failure: self.failure.lock().clone(),
            batches: self.batches.load(Ordering::Relaxed),
            sequences: self.sequences.load(Ordering::Relaxed),
            inflight_tokens: self.load.load(Ordering::Relaxed),
            requeued_sequences: self.requeued.load(Ordering::Relaxed),
        }
    }
}
