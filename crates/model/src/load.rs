//! Loading a model with plain types, behind an object-safe seam: [`load`] picks the device, builds the
//! runtime and loads the model, and hands back an [`Embedder`] trait object, so that a command line, an
//! engine or an HTTP server holds an `Arc<dyn Embedder>` and is never generic over the device type
//! (as text-embeddings-inference's `Backend` trait is to its router).
//!
//! # What this module owns
//!
//! - [`DeviceChoice`]: where a model runs (`auto`, `cpu`, `cuda`, `cuda:N`, `wgpu`), and the rule
//!   behind `auto`: CUDA device 0 when a CUDA driver and a device are found, else wgpu on a hardware
//!   GPU (discrete or integrated: Metal on a Mac, Vulkan elsewhere), else the CPU.
//! - [`LoadOptions`]: the model directory, device, compute dtype, how many threads will embed at once,
//!   and the runtime settings.
//! - [`Embedder`]: what users of a loaded model need from it without naming the device: embedding
//!   texts or pre-tokenized batches, the model's facts (dimension, sequence limit, tokenizer, dtype,
//!   backend, device), the allocator's statistics and the stream pool's slots.
//! - The [`Embedder`] impl for [`BertModel`] on any backend: each method forwards to the model or its
//!   runtime, so a call through the seam computes exactly what the model computes (bit-identical).
//!
//! # Errors
//!
//! Everything is a [`ModelError`]: a bad option is a [`RuntimeError::InvalidConfig`] naming the option,
//! the value and what is allowed; a device that cannot be opened (no CUDA driver, no such GPU) is the
//! backend's own [`RuntimeError::Device`] message; loading failures name the file and the fix. Nothing
//! here panics on bad input.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use braid_cuda::CudaDevice;
use braid_runtime::cpu::CpuDevice;
use braid_runtime::ops::Ops;
use braid_runtime::{
    AllocatorStats, CurrentStreamGuard, DType, Runtime, RuntimeConfig, RuntimeError,
    MAX_WORKER_SLOTS,
};
use braid_wgpu::WgpuDevice;

use crate::batch::{PackedBatch, PaddedBatch, TokenBatch};
use crate::encoder::BertModel;
use crate::error::{ModelError, Result};
use crate::model_dir::{ModelDir, ModelSpec};
use crate::tokenizer::Encoding;

/// Where a model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA device 0 when a CUDA driver and at least one device are found, else wgpu on a hardware
    /// GPU, else the CPU.
    #[default]
    Auto,
    /// The CPU backend.
    Cpu,
    /// CUDA device `ordinal` (0 = the first); an error when there is no driver or no such device.
    Cuda {
        /// The device's ordinal, as `nvidia-smi` numbers them (within `CUDA_VISIBLE_DEVICES`).
        ordinal: usize,
    },
    /// The wgpu backend on the adapter `BRAID_WGPU_ADAPTER` names, or the best one (Vulkan or Metal;
    /// Mesa's lavapipe counts); an error when there is none.
    Wgpu,
}

/// What [`DeviceChoice::from_str`] accepts, for error and help messages.
pub const DEVICE_CHOICES: &str = "auto, cpu, cuda (= cuda:0), cuda:N or wgpu";

impl DeviceChoice {
    /// Whether `auto` would pick CUDA on this machine now (a driver and at least one device).
    fn auto_uses_cuda() -> bool {
        CudaDevice::is_available()
    }

    /// Whether `auto` would pick wgpu on this machine now (no CUDA, a discrete or integrated GPU).
    fn auto_uses_wgpu() -> bool {
        WgpuDevice::has_gpu()
    }
}

impl FromStr for DeviceChoice {
    type Err = ModelError;

    /// Parses `auto`, `cpu`, `cuda`, `cuda:N` or `wgpu` (case-insensitive).
    fn from_str(text: &str) -> Result<Self> {
        let invalid = || {
            ModelError::Runtime(RuntimeError::InvalidConfig {
                name: "device",
                value: text.to_string(),
                allowed: DEVICE_CHOICES,
            })
        };
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda { ordinal: 0 }),
            "wgpu" => Ok(Self::Wgpu),
            other => {
                let ordinal = other
                    .strip_prefix("cuda:")
                    .ok_or_else(invalid)?
                    .parse()
                    .map_err(|_| invalid())?;
                Ok(Self::Cuda { ordinal })
            }
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda { ordinal } => write!(f, "cuda:{ordinal}"),
            Self::Wgpu => f.write_str("wgpu"),
        }
    }
}

/// What [`load`] loads, and where.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The model directory (Hugging Face / sentence-transformers layout).
    pub model_dir: PathBuf,
    /// Where the model runs.
    pub device: DeviceChoice,
    /// The compute dtype: f32 on every backend; f16 and bf16 on CUDA; f16 on wgpu where the adapter
    /// has `SHADER_F16`.
    pub dtype: DType,
    /// How many threads will embed at once (1..=[`MAX_WORKER_SLOTS`]): the stream pool gets at least
    /// this many worker slots, so each of them has a stream of its own.
    pub callers: usize,
    /// The runtime's settings (stream pool, allocator). [`RuntimeConfig::from_env`] applies the
    /// `BRAID_*` environment variables; [`LoadOptions::new`] uses the defaults.
    pub runtime: RuntimeConfig,
}

impl LoadOptions {
    /// The model in `model_dir`, on [`DeviceChoice::Auto`], in f32, for one caller, with the default
    /// runtime settings.
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: model_dir.into(),
            device: DeviceChoice::Auto,
            dtype: DType::F32,
            callers: 1,
            runtime: RuntimeConfig::default(),
        }
    }
}

/// `callers` as the error message states it; a build error when the runtime's limit changes.
const CALLERS_ALLOWED: &str = "1 to 64 (a stream pool has at most 64 worker slots)";
const _: () = assert!(
    MAX_WORKER_SLOTS == 64,
    "update CALLERS_ALLOWED to the new MAX_WORKER_SLOTS"
);

/// A loaded sentence-embedding model, whatever device it runs on. Share it (`Arc<dyn Embedder>`) among
/// every thread that embeds: each call runs on the calling thread's current stream (a worker slot
/// leased on the thread's first call and returned when the thread exits, or the one made current by
/// [`Embedder::use_worker_stream`]), so threads run at once with no lock between them.
pub trait Embedder: Send + Sync {
    /// Embeddings of `texts`, one vector of [`dim`](Self::dim) values per input in input order, as one
    /// padded batch. Inputs longer than [`max_seq_length`](Self::max_seq_length) tokens are truncated.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;

    /// Embeddings of pre-tokenized inputs (for example of a fixed length, as `braid bench --seq` uses),
    /// as one batch in the layout the device prefers ([`Embedder::prepare`]).
    fn embed_encodings(&self, encodings: &[Encoding]) -> Result<Vec<Vec<f32>>> {
        self.embed_prepared(&self.prepare(encodings))
    }

    /// `encodings` as one batch in the layout the device prefers (see [`BertModel::prepare`]):
    /// packed where the device prefers it and packing computes fewer rows, else padded.
    fn prepare(&self, encodings: &[Encoding]) -> TokenBatch;

    /// Embeddings of a prepared batch ([`Embedder::prepare`]); checked against the model first.
    fn embed_prepared(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>>;

    /// Embeddings of an already padded batch (see [`pad_batch`](crate::pad_batch)); checked against the model first.
    fn embed_batch(&self, batch: &PaddedBatch) -> Result<Vec<Vec<f32>>>;

    /// Embeddings of an already packed batch (see [`pack_batch`](crate::pack_batch)); checked against the model first.
    fn embed_packed(&self, batch: &PackedBatch) -> Result<Vec<Vec<f32>>>;

    /// The model's config, pooling, sequence limit and tokenizer.
    fn spec(&self) -> &ModelSpec;

    /// Width of an embedding.
    fn dim(&self) -> usize {
        self.spec().config.hidden_size
    }

    /// The most tokens of one input; longer inputs are truncated.
    fn max_seq_length(&self) -> usize {
        self.spec().max_seq_length
    }

    /// The compute dtype.
    fn dtype(&self) -> DType;

    /// The backend's name: "cpu", "cuda" or "wgpu".
    fn backend(&self) -> &'static str;

    /// A one-line description of the device (model, memory, driver), for reports.
    fn device_description(&self) -> String;

    /// The device allocator's statistics, summed over threads.
    fn allocator_stats(&self) -> AllocatorStats;

    /// Starts the allocator's peak figures afresh from what is held now.
    fn reset_peak_stats(&self);

    /// Returns the allocator's cached, unused blocks to the device.
    fn empty_cache(&self) -> Result<()>;

    /// Worker stream slots in the stream pool (at least [`LoadOptions::callers`]).
    fn worker_slots(&self) -> usize;

    /// Worker slots leased now (0 once every thread that embedded has exited).
    fn leased_slots(&self) -> usize;

    /// Leases a worker stream and makes it the calling thread's current stream until the returned guard
    /// is dropped, as an engine's executor threads do; follows the pool's exhaustion policy when every
    /// slot is leased.
    fn use_worker_stream(&self) -> Result<WorkerStream<'_>>;
}

/// A leased worker stream, current on the thread that leased it until dropped; the slot is returned
/// (after its work drains) when it is dropped. Not `Send`: it changes its own thread's current stream.
pub struct WorkerStream<'a> {
    // Field order is drop order: restore the previous current stream, then return the slot.
    _current: CurrentStreamGuard,
    /// The `StreamLease` (its device type erased); it borrows the model's stream pool.
    _lease: Box<dyn Send + 'a>,
    index: usize,
}

impl WorkerStream<'_> {
    /// The stream's index in its pool (1..=worker slots).
    pub fn index(&self) -> usize {
        self.index
    }
}

impl fmt::Debug for WorkerStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerStream")
            .field("index", &self.index)
            .finish()
    }
}

impl<D: Ops> Embedder for BertModel<D> {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        BertModel::embed(self, texts)
    }

    fn prepare(&self, encodings: &[Encoding]) -> TokenBatch {
        BertModel::prepare(self, encodings)
    }

    fn embed_prepared(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        BertModel::embed_prepared(self, batch)
    }

    fn embed_batch(&self, batch: &PaddedBatch) -> Result<Vec<Vec<f32>>> {
        BertModel::embed_batch(self, batch)
    }

    fn embed_packed(&self, batch: &PackedBatch) -> Result<Vec<Vec<f32>>> {
        BertModel::embed_packed(self, batch)
    }

    fn spec(&self) -> &ModelSpec {
        BertModel::spec(self)
    }

    fn dim(&self) -> usize {
        BertModel::dim(self)
    }

    fn dtype(&self) -> DType {
        BertModel::dtype(self)
    }

    fn backend(&self) -> &'static str {
        self.runtime().device().backend()
    }

    fn device_description(&self) -> String {
        self.runtime().device().describe()
    }

    fn allocator_stats(&self) -> AllocatorStats {
        self.runtime().allocator().stats()
    }

    fn reset_peak_stats(&self) {
        self.runtime().allocator().reset_peak_stats();
    }

    fn empty_cache(&self) -> Result<()> {
        Ok(self.runtime().allocator().empty_cache()?)
    }

    fn worker_slots(&self) -> usize {
        self.runtime().streams().worker_slots()
    }

    fn leased_slots(&self) -> usize {
        self.runtime().streams().leased_slots()
    }

    fn use_worker_stream(&self) -> Result<WorkerStream<'_>> {
        let streams = self.runtime().streams();
        let lease = streams.lease()?;
        let stream = lease.stream();
        Ok(WorkerStream {
            _current: streams.set_current_stream(stream)?,
            _lease: Box::new(lease),
            index: stream.index(),
        })
    }
}

/// Loads the model `options` describe onto the device it chooses (`auto`: CUDA device 0 when a driver
/// and a device are found, else wgpu on a hardware GPU, else the CPU), with a runtime of at least
/// `options.callers` worker slots.
pub fn load(options: &LoadOptions) -> Result<Arc<dyn Embedder>> {
    if !(1..=MAX_WORKER_SLOTS).contains(&options.callers) {
        return Err(RuntimeError::InvalidConfig {
            name: "callers (threads that embed at once)",
            value: options.callers.to_string(),
            allowed: CALLERS_ALLOWED,
        }
        .into());
    }
    let dir = ModelDir::open(&options.model_dir)?;
    let device = match options.device {
        DeviceChoice::Auto if DeviceChoice::auto_uses_cuda() => DeviceChoice::Cuda { ordinal: 0 },
        DeviceChoice::Auto if DeviceChoice::auto_uses_wgpu() => DeviceChoice::Wgpu,
        DeviceChoice::Auto => DeviceChoice::Cpu,
        chosen => chosen,
    };
    match device {
        DeviceChoice::Cuda { ordinal } => load_on(CudaDevice::new(ordinal)?, &dir, options),
        DeviceChoice::Wgpu => load_on(WgpuDevice::new()?, &dir, options),
        DeviceChoice::Cpu | DeviceChoice::Auto => load_on(CpuDevice::new(), &dir, options),
    }
}

/// The runtime on `device` and the model in `dir` on it.
fn load_on<D: Ops>(device: D, dir: &ModelDir, options: &LoadOptions) -> Result<Arc<dyn Embedder>> {
    let mut config = options.runtime.clone();
    config.streams.worker_slots = config.streams.worker_slots.max(options.callers);
    let runtime = Arc::new(Runtime::new(device, config)?);
    Ok(Arc::new(BertModel::load(runtime, dir, options.dtype)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choices_parse_and_print() {
        for (text, choice) in [
            ("auto", DeviceChoice::Auto),
            ("CPU", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda { ordinal: 0 }),
            ("cuda:3", DeviceChoice::Cuda { ordinal: 3 }),
            ("WGPU", DeviceChoice::Wgpu),
        ] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), choice, "{text}");
            assert_eq!(choice.to_string().parse::<DeviceChoice>().unwrap(), choice);
        }
        for bad in [
            "",
            "tpu",
            "cuda:",
            "cuda:-1",
            "cuda:x",
            "cuda:99999999999999999999",
        ] {
            let message = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(message.contains(DEVICE_CHOICES), "{bad}: {message}");
        }
    }
}
