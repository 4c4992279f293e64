//! braid's CUDA backend: [`CudaDevice`] implements [`braid_runtime::Device`] — raw device memory, streams,
//! events and copies — on an NVIDIA GPU through the CUDA driver API (cudarc with dynamic loading).
//!
//! The crate builds with no CUDA installed; at run time, with no driver or no device,
//! [`CudaDevice::new`] returns a clear error instead of panicking ([`CudaDevice::is_available`] asks
//! without failing). It implements the op set ([`braid_runtime::ops::Ops`]: cuBLAS GEMMs, NVRTC kernels for
//! the rest), so the runtime's tensors and the model's forward pass run on it unchanged.
//!
//! # Modules, each owning one thing
//!
//! - [`device`] — [`CudaDevice`]: the primary context, the device facts, raw memory, and the
//!   [`braid_runtime::Device`] impl that routes streams, events and copies.
//! - [`stream`] — [`CudaStream`]: a slot's non-blocking `CUstream`, its lifetime (read-locked use,
//!   write-locked destruction), host functions and their failures.
//! - [`event`] — [`CudaEvent`]: a timing-free `CUevent`.
//! - `blas` — a stream's cuBLAS handle and braid's strided GEMM mapped onto column-major cuBLAS.
//! - `kernels` — the non-GEMM ops as CUDA C, compiled once per process by NVRTC.
//! - `ops` — the [`braid_runtime::ops::Ops`] impl that routes each op to one of the two.
//! - `staging` — the page-locked buffers that let `copy_from_host` return before the copy runs.
//! - `context` — making the context current on a thread, once per thread.
//! - `error` — `CUresult` → [`braid_runtime::RuntimeError`], the backend edge.
//!
//! # Level of cudarc used
//!
//! The driver's `result`/`sys` layer, wrapped here in types whose `Drop` releases in order (STYLE.md,
//! habit 10): the safe layer's `CudaSlice` tracks every use with events and binds the context with a
//! driver call per operation, both of which braid does itself, once (see [`device`]). cudarc's
//! `CudaContext` is still the context's owner, so the safe API (modules, cuBLAS) can share it through
//! [`CudaDevice::context`] and [`CudaStream::cu_stream`].

mod blas;
mod context;
pub mod device;
mod error;
pub mod event;
mod kernels;
mod ops;
mod ptx_cache;
mod staging;
pub mod stream;

pub use blas::TF32_ENV;
pub use device::CudaDevice;
pub use event::CudaEvent;
pub use ptx_cache::CACHE_DIR_ENV;
pub use stream::CudaStream;
