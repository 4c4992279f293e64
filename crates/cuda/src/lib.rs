//! braid's CUDA backend: [`CudaDevice`] implements [`braid_runtime::device::Device`] (backend contract
//! v2) — raw device memory as buffer handles, streams, events, copies and non-blocking downloads — on an
//! NVIDIA GPU through the CUDA driver API (cudarc with dynamic loading).
//!
//! The crate builds with no CUDA installed; at run time, with no driver or no device,
//! [`CudaDevice::new`] returns a clear error instead of panicking ([`CudaDevice::is_available`] asks
//! without failing). It implements the op set ([`braid_runtime::ops::Ops`]: cuBLAS GEMMs, NVRTC kernels
//! for the rest), so the runtime's tensors and the model's forward pass run on it unchanged.
//!
//! # The contract as built here
//!
//! - **Buffers, views.** `Device::Buffer` is [`CudaBuffer`], one `cuMemAlloc` range (a handle: dropping
//!   it frees nothing; the caching allocator frees it with `free_raw`). Ops and copies take
//!   [`braid_runtime::device::View`]s (buffer, byte offset, length) and resolve them to
//!   `ptr + offset` when they encode; nothing above the backend sees an address.
//! - **Op descriptors.** Each op of [`braid_runtime::ops::Ops`] takes its descriptor struct (`Gemm`,
//!   `Attention`, …) and launches from it (the `ops` module).
//! - **Errors.** A refused `cuMemAlloc` is `RuntimeError::DeviceOutOfMemory { requested, detail }`;
//!   the caching allocator alone makes `OutOfMemory` out of it. Failures of a stream's work are
//!   `StreamFailed`; other driver failures `Device`.
//! - **Downloads.** `Device::Download` is [`CudaDownload`]: pooled page-locked buffers filled by
//!   `cuMemcpyDtoHAsync` and a pooled event recorded behind the copy; `download` returns at once,
//!   `download_ready` queries the event, `finish_download` waits for it, reports a stream failure and
//!   copies the bytes out (the `download` module).
//! - **Nothing leaks.** Dropping every clone of a [`CudaDevice`] and every stream, event, buffer and
//!   download made from it releases the context retain, the events, the cuBLAS handles, the kernels
//!   module and the page-locked buffers; [`live_objects`] counts each kind for tests
//!   (`tests/cuda_lifetime.rs`).
//!
//! # Modules, each owning one thing
//!
//! - [`device`] — [`CudaDevice`] and [`CudaBuffer`]: the primary context, the device facts, raw memory,
//!   and the [`braid_runtime::device::Device`] impl that routes streams, events, copies and downloads.
//! - [`stream`] — [`CudaStream`]: a slot's non-blocking `CUstream`, its lifetime (read-locked use,
//!   write-locked destruction), its cuBLAS handle, host functions and their failures.
//! - [`event`] — [`CudaEvent`]: a timing-free `CUevent`.
//! - [`download`] — [`CudaDownload`] and each stream's pool of download buffers and events.
//! - [`graph`] — [`CudaGraph`]: captured CUDA graphs (the device contract's optional capture), replayed
//!   with one launch.
//! - `staging` — the page-locked buffers that let `copy_from_host` return before the copy runs.
//! - `pinned` — the cache of page-locked host buffers both of those draw from.
//! - `blas` — a stream's cuBLAS handle and braid's strided GEMM mapped onto column-major cuBLAS.
//! - `blas_lt` — a stream's cuBLASLt handle: GEMMs with the bias in the epilogue.
//! - `kernels` — the non-GEMM ops as CUDA C, compiled once per device by NVRTC (PTX cached on disk by
//!   `ptx_cache`).
//! - `ops` — the [`braid_runtime::ops::Ops`] impl that routes each op descriptor to one of the two.
//! - `context` — making the context current on a thread, once per thread.
//! - `error` — `CUresult` → [`braid_runtime::RuntimeError`], the backend edge.
//! - [`live`] — counts of the driver objects held, for leak tests.
//!
//! # Level of cudarc used
//!
//! The driver's `result`/`sys` layer, wrapped here in types whose `Drop` releases in order: the safe
//! layer's `CudaSlice` tracks every use with events and binds the context with a driver call per
//! operation, both of which braid does itself, once (see [`device`]). cudarc's `CudaContext` is still
//! the context's owner, so the safe API (modules, cuBLAS) can share it through
//! [`CudaDevice::context`] and [`CudaStream::cu_stream`].

mod blas;
mod blas_lt;
mod context;
pub mod device;
pub mod download;
mod error;
pub mod event;
pub mod graph;
mod kernels;
pub mod live;
mod ops;
mod pinned;
mod ptx_cache;
mod staging;
pub mod stream;

pub use blas::TF32_ENV;
pub use device::{CudaBuffer, CudaDevice};
pub use download::CudaDownload;
pub use event::CudaEvent;
pub use graph::CudaGraph;
pub use live::{live_objects, LiveObjects};
pub use ptx_cache::CACHE_DIR_ENV;
pub use stream::CudaStream;
