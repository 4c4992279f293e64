//! [`CudaDevice`]: braid's [`Device`] on one NVIDIA GPU, through the CUDA driver API (contract v2: see
//! [`braid_runtime::device`]).
//!
//! # Owns
//!
//! The device's primary context (retained through cudarc's `CudaContext`), braid's kernels module once
//! an op has run, and the facts [`Device::describe`] reports. Streams ([`CudaStream`]), events
//! ([`CudaEvent`]) and downloads ([`CudaDownload`]) hold the context too, so none outlives it; raw
//! buffers ([`CudaBuffer`]) are plain handles that hold nothing.
//!
//! # Promises
//!
//! - Construction never panics: with no libcuda, no device, a stub library or a driver too old,
//!   [`CudaDevice::new`] returns [`RuntimeError::Device`] saying so (and that the CPU backend needs no
//!   driver). `cudarc::driver::sys::is_culib_present()` is checked before `CudaContext::new`, which panics
//!   when libcuda cannot be loaded; a panic from a missing driver symbol is caught too.
//! - cudarc's automatic event tracking is off (`CudaContext::disable_event_tracking`): it records two
//!   events per `CudaSlice` use, and braid orders memory with its own allocator events. braid allocates
//!   through `cuMemAlloc` directly and never creates a `CudaSlice` for its buffers.
//! - **Memory is handles.** [`Device::alloc_raw`] returns a [`CudaBuffer`] (a `CUdeviceptr` range from
//!   `cuMemAlloc`, 256-byte aligned or better); ops and copies take [`View`]s and resolve each to
//!   `buffer.ptr() + view.offset` at encode time. Dropping a `CudaBuffer` does nothing: only
//!   [`Device::free_raw`] (the caching allocator) frees it. `cuMemFree` may synchronise the whole
//!   device; the caching allocator is what keeps it off the inference path.
//! - `CUDA_ERROR_OUT_OF_MEMORY` becomes [`RuntimeError::DeviceOutOfMemory`] with the bytes asked for and
//!   the driver's free/total figures, so the caching allocator frees its cache and retries before it
//!   fails with its own statistics. The backend reports no allocator statistics.
//! - Every driver call is made with the context current on the calling thread (the `context` module: a
//!   thread-local check, a `cuCtxSetCurrent` only on a thread's first call).
//! - **Downloads do not block.** [`Device::download`] encodes `cuMemcpyDtoHAsync` into page-locked
//!   buffers of the stream's download pool, records a pooled event and returns;
//!   [`Device::download_ready`] queries that event; [`Device::finish_download`] waits for that event
//!   alone, reports a failure of the stream's work, copies the bytes out and returns the buffers and
//!   event to the pool (the `download` module). [`Device::copy_to_host`] is the trait's: the two in a
//!   row.
//! - No method blocks the host except `synchronize`, `event_synchronize`, `finish_download` (and so
//!   `copy_to_host`) — the trait's list — and `free_raw` (see above). `copy_from_host` stages through
//!   page-locked memory and does not wait for the stream, except on the fallback to pageable memory
//!   when page-locked memory is refused (see the `staging` module); `download` likewise.
//! - **Graphs.** [`Device::supports_capture`] is true: a stream captures into a [`crate::CudaGraph`]
//!   (the `graph` module), replayed with one `cuGraphLaunch`.
//! - `copy_device` ranges must not overlap (CUDA's copies do not handle overlap).
//! - **Nothing leaks.** The device's state is freed when its last clone goes: it unloads the kernels
//!   module with the context current, then drops its retain of the context. Each stream's shutdown
//!   destroys its cuBLAS handle (before the stream), its staging buffers and events, its idle download
//!   buffers and the stream; events destroy themselves; a download pool is freed with its last download.
//!   No global holds a device object, nothing is leaked on purpose, and no two of these objects hold
//!   each other (there is no `Arc` cycle: streams, events and download pools hold the context, the
//!   context holds nothing of braid's). [`crate::live_objects`] counts every such object for tests.
//!
//! [`RuntimeError::Device`]: braid_runtime::RuntimeError::Device
//! [`RuntimeError::DeviceOutOfMemory`]: braid_runtime::RuntimeError::DeviceOutOfMemory

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use braid_runtime::device::{Device, DeviceGraph, View, ALIGNMENT};
use braid_runtime::Result;
use cudarc::driver::{result, sys, CudaContext, DriverError};

use crate::context::Context;
use crate::download::CudaDownload;
use crate::event::CudaEvent;
use crate::kernels::Kernels;
use crate::stream::CudaStream;
use crate::{error, live};

/// A CUDA GPU. Cheap to clone (an `Arc` inside); shared by every thread.
#[derive(Clone)]
pub struct CudaDevice {
    inner: Arc<Inner>,
}

struct Inner {
    ordinal: usize,
    description: String,
    total_memory: usize,
    compute_capability: (i32, i32),
    driver_version: i32,
    /// Raw bytes allocated now (alloc_raw/free_raw only; Relaxed: a statistic).
    raw_allocated: AtomicUsize,
    /// braid's kernels, compiled on the first op (see the `kernels` module); a failure is kept and
    /// reported by every op.
    kernels: OnceLock<std::result::Result<Kernels, String>>,
    /// Declared last, so dropped after the kernels (see `Drop for Inner`).
    context: Arc<Context>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The module is unloaded from the current context: bind it first, while this retain of it
        // still exists. (Every stream has been shut down by its pool, which held a device clone.)
        if let Some(Ok(kernels)) = self.kernels.take() {
            if let Err(e) = self.context.bind() {
                tracing::warn!(error = %e, "binding the CUDA context to unload braid's kernels failed");
            }
            drop(kernels);
        }
    }
}

/// One raw allocation of a [`CudaDevice`]: a `CUdeviceptr` range from `cuMemAlloc`. A plain handle:
/// dropping it frees nothing ([`Device::free_raw`] does), and it holds no reference to the device.
#[derive(Debug)]
pub struct CudaBuffer {
    ptr: sys::CUdeviceptr,
    len: usize,
}

impl CudaBuffer {
    /// The device address of the first byte (for cudarc's or another library's kernels; braid's ops
    /// take [`View`]s).
    pub fn ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }

    /// Bytes allocated.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the allocation is empty (never: raw allocations have at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The device address a view starts at: its buffer's address plus its offset.
#[inline]
pub(crate) fn addr(view: View<'_, CudaDevice>) -> sys::CUdeviceptr {
    view.buffer.ptr + view.offset as u64
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.inner.ordinal)
            .field("description", &self.inner.description)
            .finish()
    }
}

/// Whether libcuda can be loaded (asked once: the answer does not change while the process runs).
fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        // SAFETY: `is_culib_present` only tries to open libcuda under its candidate names and closes
        // what it opened; loading the driver's library runs its initialisers, which is what using CUDA
        // means anyway.
        std::panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false)
    })
}

/// Runs `f`, turning a panic (cudarc panics on a missing library or symbol) into its message.
fn no_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a CUDA driver call panicked".into())
    })
}

impl CudaDevice {
    /// Opens GPU `ordinal` (0 = the first). Without a usable driver or device this is a clear
    /// [`braid_runtime::RuntimeError::Device`], never a panic.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(error::no_driver(
                "the NVIDIA driver's library libcuda (libcuda.so.1) could not be loaded; install the \
                 NVIDIA driver or put its directory on LD_LIBRARY_PATH",
            ));
        }
        let cudarc = match no_panic(|| CudaContext::new(ordinal)) {
            Ok(Ok(ctx)) => ctx,
            Ok(Err(e)) => {
                let devices = no_panic(result::device::get_count)
                    .ok()
                    .and_then(|r| r.ok());
                return Err(error::context_creation(ordinal, e, devices));
            }
            Err(message) => {
                return Err(error::no_driver(&format!(
                    "libcuda was found but could not be used ({message})"
                )))
            }
        };
        // SAFETY: the obligations (order every `CudaSlice`'s uses across streams by hand) apply to slices
        // created through this context object from now on; braid creates none for its buffers (raw
        // `cuMemAlloc` memory ordered by the caching allocator's events), and code that later uses cudarc's
        // safe API on this context (kernels, cuBLAS) orders its work with braid's streams and events.
        unsafe { cudarc.disable_event_tracking() };
        let context = Arc::new(Context::new(cudarc));
        context.bind_now()?;
        let ctx = context.cudarc();
        let name = ctx
            .name()
            .map_err(|e| error::device("cuDeviceGetName", e))?;
        let total_memory = ctx
            .total_mem()
            .map_err(|e| error::device("cuDeviceTotalMem", e))?;
        let compute_capability = ctx
            .compute_capability()
            .map_err(|e| error::device("cuDeviceGetAttribute", e))?;
        let driver_version =
            driver_version().map_err(|e| error::device("cuDriverGetVersion", e))?;
        let description = format!(
            "{name}, {:.1} GiB, compute capability {}.{}, CUDA driver {}.{} (device {ordinal})",
            total_memory as f64 / (1u64 << 30) as f64,
            compute_capability.0,
            compute_capability.1,
            driver_version / 1000,
            driver_version % 1000 / 10,
        );
        tracing::debug!(device = %description, "opened CUDA device");
        Ok(Self {
            inner: Arc::new(Inner {
                ordinal,
                description,
                total_memory,
                compute_capability,
                driver_version,
                raw_allocated: AtomicUsize::new(0),
                kernels: OnceLock::new(),
                context,
            }),
        })
    }

    /// How many CUDA devices the driver reports (0 without a driver). Never panics.
    pub fn device_count() -> usize {
        if !driver_present() {
            return 0;
        }
        no_panic(|| result::init().and_then(|()| result::device::get_count()))
            .ok()
            .and_then(|r| r.ok())
            .map_or(0, |n| n.max(0) as usize)
    }

    /// Whether a driver and at least one device are present (what [`CudaDevice::new`]`(0)` needs).
    pub fn is_available() -> bool {
        Self::device_count() > 0
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.inner.ordinal
    }

    /// Compute capability (major, minor), e.g. (9, 0) for an H100.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.inner.compute_capability
    }

    /// The driver's CUDA version as the driver reports it (e.g. 13000 for 13.0).
    pub fn driver_version(&self) -> i32 {
        self.inner.driver_version
    }

    /// cudarc's context object, for cudarc's safe API (NVRTC modules, cuBLAS). Event tracking is off.
    pub fn context(&self) -> &Arc<CudaContext> {
        self.inner.context.cudarc()
    }

    /// Makes this device's context current on the calling thread now. braid does this by itself; call it
    /// only after code outside braid made another context current on this thread (see the `context` module).
    pub fn bind_to_thread(&self) -> Result<()> {
        self.inner.context.bind_now()
    }

    /// Raw bytes allocated from this device right now (through `alloc_raw`).
    pub fn raw_allocated(&self) -> usize {
        self.inner.raw_allocated.load(Ordering::Relaxed)
    }

    /// The driver's `(free, total)` bytes of device memory right now (`cuMemGetInfo`: every process's
    /// use counts, not only braid's).
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.inner.context.bind()?;
        result::mem_get_info().map_err(|e| error::device("cuMemGetInfo", e))
    }

    /// Encodes a host function to run in stream order on the driver's callback thread (CUDA's
    /// `cuLaunchHostFunc`; the CPU backend's `CpuDevice::launch`). The stream waits for it to finish.
    ///
    /// `f` must not call CUDA, and must not drop anything that does (a `Buffer`, a `Tensor`, a download,
    /// a device handle): the driver forbids CUDA calls on its callback thread. Device memory is not
    /// host-readable, so to check bytes, download them first and read the host copy in `f`. A panic
    /// in `f` fails the stream (see [`crate::stream`]).
    pub fn launch_host_fn(
        &self,
        stream: &CudaStream,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<()> {
        stream.launch_host_fn(Box::new(f))
    }
}

impl CudaDevice {
    /// braid's kernels, compiled and loaded on first use.
    pub(crate) fn kernels(&self) -> Result<&Kernels> {
        let loaded = self.inner.kernels.get_or_init(|| {
            self.inner
                .context
                .bind()
                .and_then(|()| Kernels::compile_and_load(self.inner.compute_capability))
                .map_err(|e| e.to_string())
        });
        loaded
            .as_ref()
            .map_err(|message| braid_runtime::RuntimeError::Device(message.clone()))
    }
}

fn driver_version() -> Result<i32, DriverError> {
    let mut version = 0;
    // SAFETY: `version` is a valid out-pointer for the call's duration.
    unsafe { sys::cuDriverGetVersion(&mut version) }.result()?;
    Ok(version)
}

impl Device for CudaDevice {
    type Buffer = CudaBuffer;
    type Stream = CudaStream;
    type Event = CudaEvent;
    type Download = CudaDownload;

    fn backend(&self) -> &'static str {
        "cuda"
    }

    fn describe(&self) -> String {
        self.inner.description.clone()
    }

    fn memory_capacity(&self) -> usize {
        self.inner.total_memory
    }

    fn alloc_raw(&self, bytes: usize) -> Result<CudaBuffer> {
        self.inner.context.bind()?;
        // SAFETY: the context is current; the memory is handed out as bytes of unspecified content, which
        // is what `alloc_raw` promises.
        match unsafe { result::malloc_sync(bytes) } {
            Ok(ptr) => {
                debug_assert_eq!(ptr % ALIGNMENT as u64, 0, "cuMemAlloc is 256-byte aligned");
                self.inner.raw_allocated.fetch_add(bytes, Ordering::Relaxed);
                live::DEVICE_BUFFERS.up();
                Ok(CudaBuffer { ptr, len: bytes })
            }
            Err(e @ DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => {
                Err(error::out_of_memory(bytes, e, result::mem_get_info().ok()))
            }
            Err(e) => Err(error::device("cuMemAlloc", e)),
        }
    }

    unsafe fn free_raw(&self, buffer: CudaBuffer) {
        if let Err(e) = self.inner.context.bind() {
            tracing::warn!(error = %e, "binding the CUDA context to free memory failed");
        }
        // SAFETY: the caller guarantees `buffer` came from `alloc_raw` on this device (so from
        // `cuMemAlloc` in this context), is freed once (it is consumed here), and no pending work uses it.
        if let Err(e) = unsafe { result::free_sync(buffer.ptr) } {
            tracing::warn!(?buffer, error = %error::describe(e), "cuMemFree failed");
        }
        self.inner
            .raw_allocated
            .fetch_sub(buffer.len, Ordering::Relaxed);
        live::DEVICE_BUFFERS.down();
    }

    fn create_stream(&self, index: usize) -> Result<CudaStream> {
        self.inner.context.bind()?;
        CudaStream::create(index, self.inner.context.clone())
    }

    fn commit(&self, _stream: &CudaStream) -> Result<()> {
        // Launches and copies went to the stream when they were encoded.
        Ok(())
    }

    fn synchronize(&self, stream: &CudaStream) -> Result<()> {
        stream.synchronize()
    }

    fn shutdown_stream(&self, stream: &CudaStream) {
        stream.shutdown();
    }

    fn create_event(&self) -> Result<CudaEvent> {
        self.inner.context.bind()?;
        CudaEvent::create(self.inner.context.clone())
    }

    fn record_event(&self, event: &CudaEvent, stream: &CudaStream) -> Result<()> {
        stream.with_raw(|raw| {
            // SAFETY: both handles are live (the event is borrowed, the stream's read lock is held) and
            // belong to this device's context, which is current.
            unsafe { result::event::record(event.cu_event(), raw) }
                .map_err(|e| error::device("cuEventRecord", e))
        })
    }

    fn wait_event(&self, stream: &CudaStream, event: &CudaEvent) -> Result<()> {
        stream.with_raw(|raw| {
            // SAFETY: as in `record_event`.
            unsafe {
                result::stream::wait_event(
                    raw,
                    event.cu_event(),
                    sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                )
            }
            .map_err(|e| error::device("cuStreamWaitEvent", e))
        })
    }

    fn query_event(&self, event: &CudaEvent) -> Result<bool> {
        self.inner.context.bind()?;
        // SAFETY: the event is live (borrowed) and of this context.
        match unsafe { result::event::query(event.cu_event()) } {
            Ok(()) => Ok(true),
            Err(DriverError(sys::CUresult::CUDA_ERROR_NOT_READY)) => Ok(false),
            Err(e) => Err(error::device("cuEventQuery", e)),
        }
    }

    fn event_synchronize(&self, event: &CudaEvent) -> Result<()> {
        self.inner.context.bind()?;
        // SAFETY: the event is live (borrowed) and of this context.
        unsafe { result::event::synchronize(event.cu_event()) }
            .map_err(|e| error::device("cuEventSynchronize", e))
    }

    fn copy_from_host(&self, stream: &CudaStream, src: &[u8], dst: View<'_, Self>) -> Result<()> {
        debug_assert!(
            src.len() <= dst.len,
            "copy_from_host: dst covers the source"
        );
        stream.copy_from_host(src, addr(dst))
    }

    fn copy_device(
        &self,
        stream: &CudaStream,
        src: View<'_, Self>,
        dst: View<'_, Self>,
    ) -> Result<()> {
        let bytes = src.len;
        if bytes == 0 {
            return Ok(());
        }
        let (src, dst) = (addr(src), addr(dst));
        stream.with_raw(|raw| {
            // SAFETY: the stream is live and current; both ranges are `bytes` bytes of live device memory
            // (the caller's contract) and do not overlap (module doc).
            unsafe { result::memcpy_dtod_async(dst, src, bytes, raw) }
                .map_err(|e| error::device("cuMemcpyDtoDAsync", e))
        })
    }

    fn download(&self, stream: &CudaStream, src: View<'_, Self>) -> Result<CudaDownload> {
        stream.download(addr(src), src.len)
    }

    fn download_ready(&self, download: &CudaDownload) -> Result<bool> {
        download.is_ready()
    }

    fn finish_download(&self, download: CudaDownload, dst: &mut [u8]) -> Result<()> {
        download.finish(dst)
    }

    fn supports_capture(&self) -> bool {
        true
    }

    fn begin_capture(&self, stream: &CudaStream) -> Result<()> {
        stream.begin_capture()
    }

    fn end_capture(&self, stream: &CudaStream) -> Result<Box<dyn DeviceGraph<Self>>> {
        Ok(Box::new(stream.end_capture()?))
    }
}
