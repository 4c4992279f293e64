//! [`WgpuDevice`]: braid's [`Device`] on one wgpu adapter (contract v2: see [`braid_runtime::device`]).
//!
//! # Owns
//!
//! The wgpu device and its one queue, the adapter's facts, the memory arenas (the `memory` module),
//! the kernels' pipelines (created once, when the device is opened) and the order of submissions:
//! every submit of every stream goes through [`Shared::submit`], which numbers it, so an event is "the
//! queue has finished submission N" and is polled without blocking.
//!
//! # Promises
//!
//! - Opening never panics: no Vulkan loader, no adapter, an adapter without immediates (push constants)
//!   or a refused device are [`RuntimeError::Device`] naming the adapters seen and `BRAID_WGPU_ADAPTER`.
//! - Adapter choice: `BRAID_WGPU_ADAPTER` picks by type (`discrete`, `integrated`, `virtual`, `cpu`) or by
//!   a case-insensitive part of the adapter's name (`llvmpipe`, `H200`); unset, a discrete GPU is
//!   preferred, then integrated, virtual and CPU adapters.
//! - A failure the driver reports (validation, out of memory inside a command, a lost device) is kept and
//!   reported by every later sync point (`synchronize`, `event_synchronize`, `finish_download`) as
//!   [`RuntimeError::StreamFailed`]; wgpu's default handler, which panics, is replaced.
//! - wgpu does not report device memory; [`Device::memory_capacity`] is the host's memory (exact for a
//!   CPU adapter such as lavapipe, an upper bound elsewhere): set `BRAID_MEMORY_LIMIT` to a size on a GPU.
//! - Counters of dispatches and submissions ([`WgpuDevice::counters`]) let benchmarks report both per
//!   forward pass.
//! - [`Device::commit`] (the runtime's commit policy, after an op) submits unless the stream's earlier
//!   work is still in flight and fewer than the submit batch of commands are encoded
//!   ([`WgpuDevice::set_submit_batch`], `BRAID_WGPU_SUBMIT_BATCH`); sync points always submit.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use braid_runtime::device::{Device, View};
use braid_runtime::{Result, RuntimeError};
use parking_lot::Mutex;

use crate::bind::BindGroups;
use crate::download::WgpuDownload;
use crate::event::WgpuEvent;
use crate::kernels::{Kernel, Kernels};
use crate::memory::{Arenas, WgpuBuffer};
use crate::stream::WgpuStream;

/// The environment variable that picks the adapter (see the module doc).
pub const ADAPTER_ENV: &str = "BRAID_WGPU_ADAPTER";

/// The largest arena (sub-allocated buffer); smaller when the adapter's limits are.
const ARENA_BYTES: u64 = 256 << 20;

/// The environment variable that forces one GEMM kernel (`small`, `64`, `128`), for tuning the `ops`
/// module's choice on a new adapter; unset, the choice is by shape.
pub const GEMM_ENV: &str = "BRAID_WGPU_GEMM";

/// The environment variable that sets the submit batch (see [`WgpuDevice::set_submit_batch`]).
pub const SUBMIT_BATCH_ENV: &str = "BRAID_WGPU_SUBMIT_BATCH";

/// The default submit batch: commands a stream encodes before the runtime's commit submits them
/// while its earlier work is still in flight (see the `stream` module).
pub const SUBMIT_BATCH: usize = 16;

/// Runs a wgpu future to completion. wgpu's native futures are ready when first polled; this yields
/// the thread until one is, so a backend that defers them is still served.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::yield_now();
    }
}

/// A wgpu adapter. Cheap to clone (an `Arc` inside); shared by every thread.
#[derive(Clone)]
pub struct WgpuDevice {
    pub(crate) shared: Arc<Shared>,
}

/// Dispatches and submissions since the device was opened (see [`WgpuDevice::counters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Compute dispatches encoded.
    pub dispatches: u64,
    /// Command buffers submitted to the queue.
    pub submits: u64,
}

/// One queue submission: braid's sequence number and wgpu's index for `poll`.
#[derive(Clone, Debug)]
pub(crate) struct Submitted {
    pub(crate) seq: u64,
    pub(crate) index: wgpu::SubmissionIndex,
}

/// What every stream, event and download of the device shares.
pub(crate) struct Shared {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) limits: wgpu::Limits,
    info: wgpu::AdapterInfo,
    description: String,
    capacity: usize,
    pub(crate) arenas: Arenas,
    pub(crate) kernels: Kernels,
    pub(crate) bind_groups: BindGroups,
    /// The GEMM kernel `BRAID_WGPU_GEMM` forces, if any.
    pub(crate) gemm_override: Option<Kernel>,
    submit_batch: AtomicUsize,
    /// The last sequence number handed out; held across `Queue::submit` so numbers follow queue order.
    submit_order: Mutex<u64>,
    /// The highest sequence number whose work has completed (written by wgpu's callbacks).
    completed: Arc<AtomicU64>,
    /// The first failure the driver reported, if any.
    failure: Arc<Mutex<Option<String>>>,
    pub(crate) dispatches: AtomicU64,
    submits: AtomicU64,
}

impl Shared {
    /// Submits `commands`, numbering the submission in queue order.
    pub(crate) fn submit(&self, commands: wgpu::CommandBuffer) -> Submitted {
        let mut last = self.submit_order.lock();
        let index = self.queue.submit([commands]);
        *last += 1;
        let seq = *last;
        let completed = self.completed.clone();
        // AcqRel: readers that see `seq` completed also see the work's effects reported before it.
        self.queue
            .on_submitted_work_done(move || _ = completed.fetch_max(seq, Ordering::AcqRel));
        self.submits.fetch_add(1, Ordering::Relaxed);
        Submitted { seq, index }
    }

    /// The submit batch (see [`WgpuDevice::set_submit_batch`]).
    pub(crate) fn submit_batch(&self) -> usize {
        self.submit_batch.load(Ordering::Relaxed)
    }

    /// Whether submission `seq` is known to have completed, without polling (wgpu's callbacks run
    /// when some thread polls: a wait, a download, a query).
    pub(crate) fn is_done(&self, seq: u64) -> bool {
        self.completed.load(Ordering::Acquire) >= seq
    }

    /// Whether submission `seq` has completed, after letting wgpu run the callbacks that are due.
    pub(crate) fn is_complete(&self, seq: u64) -> Result<bool> {
        if self.completed.load(Ordering::Acquire) >= seq {
            return Ok(true);
        }
        self.poll(wgpu::PollType::Poll)?;
        Ok(self.completed.load(Ordering::Acquire) >= seq)
    }

    /// Blocks until `submitted` has completed, and reports a failure of the device's work.
    pub(crate) fn wait(&self, submitted: &Submitted, stream: usize) -> Result<()> {
        if self.completed.load(Ordering::Acquire) < submitted.seq {
            self.poll(wgpu::PollType::Wait {
                submission_index: Some(submitted.index.clone()),
                timeout: None,
            })?;
        }
        self.check(stream)
    }

    /// `Device::poll`, its failure as a device error.
    pub(crate) fn poll(&self, poll: wgpu::PollType) -> Result<()> {
        self.device
            .poll(poll)
            .map(drop)
            .map_err(|e| RuntimeError::Device(format!("wgpu poll failed: {e}")))
    }

    /// The driver's failure, if one was reported, as stream `stream`'s.
    pub(crate) fn check(&self, stream: usize) -> Result<()> {
        match self.failure.lock().as_ref() {
            None => Ok(()),
            Some(message) => Err(RuntimeError::StreamFailed {
                stream,
                message: message.clone(),
            }),
        }
    }
}

impl std::fmt::Debug for WgpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuDevice")
            .field("adapter", &self.shared.description)
            .finish()
    }
}

/// How an adapter type is named in `BRAID_WGPU_ADAPTER` and reports, and its rank when none is asked.
fn type_name(kind: wgpu::DeviceType) -> (&'static str, u8) {
    match kind {
        wgpu::DeviceType::DiscreteGpu => ("discrete", 0),
        wgpu::DeviceType::IntegratedGpu => ("integrated", 1),
        wgpu::DeviceType::VirtualGpu => ("virtual", 2),
        wgpu::DeviceType::Cpu => ("cpu", 3),
        wgpu::DeviceType::Other => ("other", 4),
    }
}

fn adapter_line(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} ({}, {:?}, {} {})",
        info.name,
        type_name(info.device_type).0,
        info.backend,
        info.driver,
        info.driver_info
    )
}

/// The adapters wgpu finds on Vulkan and Metal (none without a loader or driver). Never panics.
fn adapters() -> Vec<wgpu::Adapter> {
    let descriptor = wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    }
    .with_env();
    let instance = wgpu::Instance::new(descriptor);
    block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

/// Whether an adapter matches a `BRAID_WGPU_ADAPTER` value.
fn matches(info: &wgpu::AdapterInfo, wanted: &str) -> bool {
    let wanted = wanted.trim().to_ascii_lowercase();
    type_name(info.device_type).0 == wanted || info.name.to_ascii_lowercase().contains(&wanted)
}

impl WgpuDevice {
    /// Opens the adapter `BRAID_WGPU_ADAPTER` names, or the best one (see the module doc).
    pub fn new() -> Result<Self> {
        Self::with_adapter(std::env::var(ADAPTER_ENV).ok().as_deref())
    }

    /// The adapters found, one line each (name, type, backend, driver), for reports and errors.
    pub fn list_adapters() -> Vec<String> {
        adapters()
            .iter()
            .map(|a| adapter_line(&a.get_info()))
            .collect()
    }

    /// Whether a hardware GPU (discrete or integrated) is available to wgpu: `auto`'s question.
    pub fn has_gpu() -> bool {
        adapters()
            .iter()
            .any(|a| type_name(a.get_info().device_type).1 <= 1)
    }

    /// Opens the adapter matching `wanted` (a type or part of a name; `None`: the best one).
    pub fn with_adapter(wanted: Option<&str>) -> Result<Self> {
        let found = adapters();
        let seen = || {
            let lines: Vec<String> = found.iter().map(|a| adapter_line(&a.get_info())).collect();
            if lines.is_empty() {
                "none (is a Vulkan loader, libvulkan1, and a driver installed? lavapipe: \
                 apt-get install mesa-vulkan-drivers libvulkan1)"
                    .to_string()
            } else {
                lines.join("; ")
            }
        };
        let usable = found
            .iter()
            .filter(|a| a.features().contains(wgpu::Features::IMMEDIATES))
            .filter(|a| wanted.is_none_or(|w| matches(&a.get_info(), w)));
        let Some(adapter) = usable.min_by_key(|a| type_name(a.get_info().device_type).1) else {
            return Err(RuntimeError::Device(match wanted {
                Some(w) => format!(
                    "no wgpu adapter matches {ADAPTER_ENV}={w:?} (a type: discrete, integrated, \
                     virtual, cpu; or part of a name) and supports immediates; adapters: {}",
                    seen()
                ),
                None => format!(
                    "no wgpu adapter with immediates found; adapters: {}",
                    seen()
                ),
            }));
        };
        Self::open(adapter)
    }

    fn open(adapter: &wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
        let mut features = wgpu::Features::IMMEDIATES;
        if f16 {
            features |= wgpu::Features::SHADER_F16;
        }
        let (device, queue) = block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("braid"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| {
            RuntimeError::Device(format!(
                "wgpu refused a device on {}: {e}",
                adapter_line(&info)
            ))
        })?;
        let failure = Arc::new(Mutex::new(None::<String>));
        let keep = failure.clone();
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            tracing::error!(%error, "wgpu reported an error");
            keep.lock().get_or_insert_with(|| error.to_string());
        }));
        let keep = failure.clone();
        device.set_device_lost_callback(move |reason, message| {
            keep.lock()
                .get_or_insert_with(|| format!("the wgpu device was lost ({reason:?}): {message}"));
        });
        let kernels = Kernels::new(&device, f16)?;
        let arena = ARENA_BYTES
            .min(limits.max_buffer_size)
            .min(limits.max_storage_buffer_binding_size)
            / braid_runtime::ALIGNMENT as u64
            * braid_runtime::ALIGNMENT as u64;
        let description = format!("{} via wgpu 30", adapter_line(&info));
        let gemm_override = match std::env::var(GEMM_ENV).as_deref().map(str::trim) {
            Err(_) | Ok("") => None,
            Ok("small") => Some(Kernel::GemmSmall),
            Ok("64") => Some(Kernel::Gemm64),
            Ok("128") => Some(Kernel::Gemm128),
            Ok(other) => {
                return Err(RuntimeError::InvalidConfig {
                    name: GEMM_ENV,
                    value: other.to_string(),
                    allowed: "small, 64 or 128",
                })
            }
        };
        let submit_batch = match std::env::var(SUBMIT_BATCH_ENV) {
            Err(_) => SUBMIT_BATCH,
            Ok(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| RuntimeError::InvalidConfig {
                    name: SUBMIT_BATCH_ENV,
                    value: v.clone(),
                    allowed: "a whole number of commands, at least 1",
                })?,
        };
        tracing::debug!(device = %description, "opened wgpu device");
        Ok(Self {
            shared: Arc::new(Shared {
                arenas: Arenas::new(arena, limits.max_buffer_size),
                capacity: braid_runtime::cpu::host_memory()
                    .unwrap_or(limits.max_buffer_size as usize),
                device,
                queue,
                limits,
                info,
                description,
                kernels,
                bind_groups: BindGroups::default(),
                gemm_override,
                submit_batch: AtomicUsize::new(submit_batch),
                submit_order: Mutex::new(0),
                completed: Arc::new(AtomicU64::new(0)),
                failure,
                dispatches: AtomicU64::new(0),
                submits: AtomicU64::new(0),
            }),
        })
    }

    /// The adapter's name (e.g. "llvmpipe (LLVM 15.0.6, 256 bits)", "NVIDIA H200").
    pub fn adapter_name(&self) -> &str {
        &self.shared.info.name
    }

    /// The adapter's type: "discrete", "integrated", "virtual", "cpu" or "other".
    pub fn adapter_type(&self) -> &'static str {
        type_name(self.shared.info.device_type).0
    }

    /// Dispatches and submissions so far (all streams).
    pub fn counters(&self) -> Counters {
        Counters {
            dispatches: self.shared.dispatches.load(Ordering::Relaxed),
            submits: self.shared.submits.load(Ordering::Relaxed),
        }
    }

    /// Sets the submit batch: after an op, a stream whose earlier work is still in flight submits once
    /// at least `commands` are encoded (1: every commit of the runtime submits; see the `stream`
    /// module). `BRAID_WGPU_SUBMIT_BATCH` sets it when the device is opened; default [`SUBMIT_BATCH`].
    pub fn set_submit_batch(&self, commands: usize) {
        self.shared
            .submit_batch
            .store(commands.max(1), Ordering::Relaxed);
    }

    /// Whether the block attention (`attention_block.wgsl`) runs here: the adapter's workgroup memory
    /// holds it (see the `ops` module).
    pub fn has_block_attention(&self) -> bool {
        self.shared.kernels.attention_block
    }

    /// Bind groups cached now (the `bind` module: a handful once a forward pass has run).
    pub fn cached_bind_groups(&self) -> usize {
        self.shared.bind_groups.len()
    }

    /// Raw bytes allocated from this device right now (through `alloc_raw`).
    pub fn raw_allocated(&self) -> usize {
        self.shared.arenas.allocated()
    }
}

impl Device for WgpuDevice {
    type Buffer = WgpuBuffer;
    type Stream = WgpuStream;
    type Event = WgpuEvent;
    type Download = WgpuDownload;

    fn backend(&self) -> &'static str {
        "wgpu"
    }

    fn describe(&self) -> String {
        self.shared.description.clone()
    }

    fn memory_capacity(&self) -> usize {
        self.shared.capacity
    }

    fn alloc_raw(&self, bytes: usize) -> Result<WgpuBuffer> {
        self.shared.arenas.alloc(&self.shared.device, bytes)
    }

    unsafe fn free_raw(&self, buffer: WgpuBuffer) {
        if self.shared.arenas.free(buffer) {
            // A wgpu buffer was released: cached bind groups must not keep it alive.
            self.shared.bind_groups.clear();
        }
    }

    fn create_stream(&self, index: usize) -> Result<WgpuStream> {
        Ok(WgpuStream::new(index, self.shared.clone()))
    }

    fn commit(&self, stream: &WgpuStream) -> Result<()> {
        stream.commit_op()
    }

    fn synchronize(&self, stream: &WgpuStream) -> Result<()> {
        stream.synchronize()
    }

    fn shutdown_stream(&self, stream: &WgpuStream) {
        stream.shutdown();
    }

    fn create_event(&self) -> Result<WgpuEvent> {
        Ok(WgpuEvent::new(self.shared.clone()))
    }

    fn record_event(&self, event: &WgpuEvent, stream: &WgpuStream) -> Result<()> {
        event.record(stream.commit()?);
        Ok(())
    }

    fn wait_event(&self, _stream: &WgpuStream, _event: &WgpuEvent) -> Result<()> {
        // The event's work was submitted when it was recorded; everything this stream submits from now
        // on comes later in the queue's one order, which wgpu keeps (barriers included).
        Ok(())
    }

    fn query_event(&self, event: &WgpuEvent) -> Result<bool> {
        event.query()
    }

    fn event_synchronize(&self, event: &WgpuEvent) -> Result<()> {
        event.synchronize()
    }

    fn copy_from_host(&self, stream: &WgpuStream, src: &[u8], dst: View<'_, Self>) -> Result<()> {
        stream.copy_from_host(src, dst)
    }

    fn copy_device(
        &self,
        stream: &WgpuStream,
        src: View<'_, Self>,
        dst: View<'_, Self>,
    ) -> Result<()> {
        stream.copy_device(src, dst)
    }

    fn download(&self, stream: &WgpuStream, src: View<'_, Self>) -> Result<WgpuDownload> {
        stream.download(src)
    }

    fn download_ready(&self, download: &WgpuDownload) -> Result<bool> {
        download.ready()
    }

    fn finish_download(&self, download: WgpuDownload, dst: &mut [u8]) -> Result<()> {
        download.finish(dst)
    }
}
