//! The backend interface: [`Device`] (memory, streams, events, copies) and the vocabulary it speaks in
//! ([`View`], [`DType`]).
//!
//! A backend implements [`Device`] once; everything else in the runtime (the stream pool, the caching
//! allocator, tensors) is written against it, as wgpu-hal's `Api` trait lets one frontend drive many
//! backends. The op set lives in [`crate::ops::Ops`], a second trait, so that a backend can be brought up
//! (memory, streams, events, allocator tests) before its kernels exist.
//!
//! # Contract every backend keeps (v2)
//!
//! - **Memory is handles, not addresses.** [`Device::alloc_raw`] returns a backend buffer
//!   ([`Device::Buffer`]: a host allocation on the CPU, a `CUdeviceptr` range on CUDA, a `wgpu::Buffer`
//!   on wgpu). Everything above the backend names memory as a [`View`] — a buffer, a byte offset and a
//!   length — and never does arithmetic on an address; each backend resolves a view its own way.
//! - A stream is an in-order queue. Work encoded on it runs in encoding order; [`Device::commit`] makes
//!   encoded work eligible to run (on backends that start work at launch, like CUDA, it does nothing).
//! - An event recorded on a stream completes when all work encoded on that stream before the record has
//!   run. Recording commits the stream, so an event never waits on work nobody submitted.
//! - [`Device::wait_event`] makes later work on a stream wait for an event without blocking the host.
//! - Raw memory is [`ALIGNMENT`]-aligned and is only freed by the caching allocator, after the work that
//!   used it has completed.
//! - Downloads are split in two: [`Device::download`] encodes the copy into staging memory the backend
//!   owns and returns a [`Device::Download`] at once; [`Device::finish_download`] waits for it and copies
//!   the bytes out. So one stream can hold the next batch's upload and compute while the last batch's
//!   results come down. [`Device::copy_to_host`] is the two in a row.
//! - No method blocks the host except [`Device::synchronize`], [`Device::event_synchronize`],
//!   [`Device::finish_download`] (and so [`Device::copy_to_host`]).
//! - Errors are the backend's own: a refused allocation is [`RuntimeError::DeviceOutOfMemory`] with the
//!   bytes asked for; only the caching allocator turns that into [`RuntimeError::OutOfMemory`] with its
//!   statistics and limit.
//! - A device handle is a reference: when the last clone — and every buffer, stream and event made from
//!   it — is dropped, the backend releases what it holds (a CUDA context, cuBLAS handles, kernels).
//!
//! - **Stream capture is optional.** A backend that can record a stream's work into a replayable graph
//!   (CUDA graphs) says so with [`Device::supports_capture`] and implements [`Device::begin_capture`] /
//!   [`Device::end_capture`]; the others keep the defaults ("not supported") and callers take the plain
//!   path. While a stream captures, nothing runs: work encoded on it is recorded, and the backend must
//!   not synchronise, query or allocate on it. The runtime's `graph` module builds on this (private
//!   memory pools, replay on the caller's stream).
//!
//! Validation (shapes, dtypes, lifetimes, that a view lies inside its buffer) is the caller's job — the
//! tensor layer does it once for all backends; a backend may assume its arguments describe valid memory.

use std::fmt;

use crate::error::Result;
#[cfg(doc)]
use crate::error::RuntimeError;

/// The alignment, in bytes, of every raw allocation (cudaMalloc gives 256; the CPU backend matches it).
pub const ALIGNMENT: usize = 256;

/// A byte range of a backend buffer: how every op and copy names memory.
///
/// `offset` and `len` are in bytes from the start of `buffer` (a raw allocation of the caching
/// allocator, or of the backend's own tests). A view does not own its buffer; the caller keeps the
/// buffer alive until the work that uses the view has run (the caching allocator does, by stream order).
pub struct View<'a, D: Device> {
    /// The backend buffer.
    pub buffer: &'a D::Buffer,
    /// Bytes from the buffer's start.
    pub offset: usize,
    /// Bytes in the range.
    pub len: usize,
}

impl<D: Device> Clone for View<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D: Device> Copy for View<'_, D> {}

impl<'a, D: Device> View<'a, D> {
    /// The whole of `buffer`'s first `len` bytes.
    pub fn new(buffer: &'a D::Buffer, len: usize) -> Self {
        Self {
            buffer,
            offset: 0,
            len,
        }
    }

    /// The sub-range starting `offset` bytes into this view (clamped to the view's end).
    pub fn skip(self, offset: usize) -> Self {
        let offset = offset.min(self.len);
        Self {
            buffer: self.buffer,
            offset: self.offset + offset,
            len: self.len - offset,
        }
    }
}

impl<D: Device> fmt::Debug for View<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "View(+{}, {} bytes)", self.offset, self.len)
    }
}

/// Element types a tensor can hold. The CPU backend computes in f32; f16/bf16 are representable so that
/// model code can keep the dtype a parameter and the CUDA backend can use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// 32-bit unsigned integer (token ids).
    U32,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U32 => "u32",
        })
    }
}

/// A captured, instantiated graph of device work ([`Device::end_capture`]): replayable on any stream of
/// its device, one launch per replay. Dropping it releases the backend's executable graph (work
/// already launched finishes first).
pub trait DeviceGraph<D: Device>: Send + Sync {
    /// Encodes one replay of the captured work on `stream`, in stream order.
    fn launch(&self, stream: &D::Stream) -> Result<()>;
}

/// A compute device: raw memory, streams, events and copies. See the module doc for the contract.
///
/// Handles are cheap to clone (an `Arc` inside) and shared by every thread.
pub trait Device: Clone + Send + Sync + 'static {
    /// One raw allocation. Dropping it does not free device memory: [`Device::free_raw`] does.
    type Buffer: Send + Sync + 'static;
    /// The backend's native stream.
    type Stream: Send + Sync + 'static;
    /// The backend's native event.
    type Event: Send + Sync + 'static;
    /// A device-to-host copy in flight (staging memory and what tells that the copy is done).
    type Download: Send + 'static;

    /// The backend's name, for errors and reports ("cpu", "cuda").
    fn backend(&self) -> &'static str;
    /// A one-line description of the device for reports (model, memory, driver).
    fn describe(&self) -> String;
    /// Total device memory in bytes (what a fractional memory limit is a fraction of).
    fn memory_capacity(&self) -> usize;

    /// Allocates `bytes` (> 0) of raw device memory, [`ALIGNMENT`]-aligned. Called only by the caching
    /// allocator (and backend tests), never under one of its locks. A refusal is
    /// [`RuntimeError::DeviceOutOfMemory`]; other failures [`RuntimeError::Device`].
    fn alloc_raw(&self, bytes: usize) -> Result<Self::Buffer>;
    /// Frees a buffer from [`Device::alloc_raw`].
    ///
    /// # Safety
    /// `buffer` came from `alloc_raw` on this device and no work that uses it is pending on any stream.
    unsafe fn free_raw(&self, buffer: Self::Buffer);

    /// Creates the native stream for pool slot `index` (0 = the default stream).
    fn create_stream(&self, index: usize) -> Result<Self::Stream>;
    /// Submits the work encoded on `stream` so far.
    fn commit(&self, stream: &Self::Stream) -> Result<()>;
    /// Submits and waits until all work on `stream` has run; reports a failure of that work.
    fn synchronize(&self, stream: &Self::Stream) -> Result<()>;
    /// Drains `stream` and releases what it holds (an executor thread, a native handle). Work encoded on
    /// it afterwards fails with [`RuntimeError::Dropped`]. Called once, when its pool is dropped.
    fn shutdown_stream(&self, stream: &Self::Stream);

    /// Creates a native event (only the event pool calls this; steady state creates none).
    fn create_event(&self) -> Result<Self::Event>;
    /// Records `event` on `stream` (see the module doc: this commits the stream).
    fn record_event(&self, event: &Self::Event, stream: &Self::Stream) -> Result<()>;
    /// Makes work encoded on `stream` after this call wait for `event`'s last record. The host does not block.
    fn wait_event(&self, stream: &Self::Stream, event: &Self::Event) -> Result<()>;
    /// Whether `event`'s last record has completed (true for a never-recorded event).
    fn query_event(&self, event: &Self::Event) -> Result<bool>;
    /// Blocks the host until `event`'s last record has completed.
    fn event_synchronize(&self, event: &Self::Event) -> Result<()>;

    /// Encodes a copy of `src` into `dst` (`dst.len == src.len()`) on `stream`. The bytes are taken
    /// (staged) before this returns, so `src` may be reused at once.
    fn copy_from_host(&self, stream: &Self::Stream, src: &[u8], dst: View<'_, Self>) -> Result<()>;
    /// Encodes a device-to-device copy of `src.len` bytes from `src` to `dst` on `stream`.
    fn copy_device(
        &self,
        stream: &Self::Stream,
        src: View<'_, Self>,
        dst: View<'_, Self>,
    ) -> Result<()>;
    /// Encodes a copy of `src` into host staging memory after all work encoded on `stream` so far, and
    /// submits it; returns at once. The copy is finished (and its bytes read) by
    /// [`Device::finish_download`]; dropping the download unfinished is allowed (the staging memory is
    /// reclaimed once the copy has run).
    fn download(&self, stream: &Self::Stream, src: View<'_, Self>) -> Result<Self::Download>;
    /// Whether `download`'s copy has run (never blocks).
    fn download_ready(&self, download: &Self::Download) -> Result<bool>;
    /// Waits for `download`'s copy and writes its bytes into `dst` (`dst.len()` = the view's length);
    /// reports a failure of the stream's work before it.
    fn finish_download(&self, download: Self::Download, dst: &mut [u8]) -> Result<()>;

    /// Copies `dst.len()` bytes of `src` into `dst` after all work encoded on `stream` so far; returns
    /// when the bytes are there. A [`Device::download`] finished at once.
    fn copy_to_host(
        &self,
        stream: &Self::Stream,
        src: View<'_, Self>,
        dst: &mut [u8],
    ) -> Result<()> {
        let download = self.download(stream, src)?;
        self.finish_download(download, dst)
    }

    /// Whether [`Device::begin_capture`] can work on this backend (default: no).
    fn supports_capture(&self) -> bool {
        false
    }

    /// Starts recording the work encoded on `stream` (which must have no work of its own: a stream
    /// kept for capturing) instead of running it, after making ready what that work's first ops would
    /// otherwise create lazily (library handles). Until [`Device::end_capture`], only the calling
    /// thread encodes on `stream`, and nothing may synchronise or query it. Default: not supported.
    fn begin_capture(&self, stream: &Self::Stream) -> Result<()> {
        let _ = stream;
        Err(capture_unsupported(self.backend()))
    }

    /// Ends the capture begun on `stream` and returns its work as a replayable graph. Must be called
    /// once after every successful [`Device::begin_capture`], also when encoding failed meanwhile (the
    /// stream is then left ready to capture again, and the failure is the error).
    fn end_capture(&self, stream: &Self::Stream) -> Result<Box<dyn DeviceGraph<Self>>> {
        let _ = stream;
        Err(capture_unsupported(self.backend()))
    }
}

/// The error of a capture on a backend that has none.
fn capture_unsupported(backend: &'static str) -> crate::error::RuntimeError {
    crate::error::RuntimeError::Device(format!(
        "the {backend} backend cannot capture streams into graphs (Device::supports_capture is false)"
    ))
}
