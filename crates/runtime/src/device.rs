//! The backend interface: [`Device`] (memory, streams, events) and the vocabulary it speaks in
//! ([`DevicePtr`], [`DType`]).
//!
//! A backend implements [`Device`] once; everything else in the runtime (the stream pool, the caching
//! allocator, tensors) is written against it, as wgpu-hal's `Api` trait lets one frontend drive many
//! backends. The op set lives in [`crate::ops::Ops`], a second trait, so that a backend can be brought up
//! (memory, streams, events, allocator tests) before its kernels exist.
//!
//! # Contract every backend keeps
//!
//! - A stream is an in-order queue. Work encoded on it runs in encoding order; [`Device::commit`] makes
//!   encoded work eligible to run (on backends that start work at launch, like CUDA, it does nothing).
//! - An event recorded on a stream completes when all work encoded on that stream before the record has
//!   run. Recording commits the stream, so an event never waits on work nobody submitted.
//! - [`Device::wait_event`] makes later work on a stream wait for an event without blocking the host.
//! - Raw memory is 256-byte aligned and is only freed by the caching allocator, after the work that
//!   used it has completed.
//! - No method blocks the host except [`Device::synchronize`], [`Device::event_synchronize`] and
//!   [`Device::copy_to_host`].
//!
//! Validation (shapes, dtypes, lifetimes) is the caller's job — the tensor layer does it once for all
//! backends; a backend may assume its arguments describe valid memory.

use std::fmt;

use crate::Result;

/// The alignment, in bytes, of every raw allocation (cudaMalloc gives 256; the CPU backend matches it).
pub const ALIGNMENT: usize = 256;

/// An address in a device's memory. On the CPU backend it is a host pointer; on CUDA a `CUdeviceptr`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    /// The address `bytes` further on.
    #[inline]
    pub fn offset(self, bytes: usize) -> Self {
        Self(self.0 + bytes as u64)
    }
}

impl fmt::Debug for DevicePtr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevicePtr({:#x})", self.0)
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

/// A compute device: raw memory, streams and events. See the module doc for the contract.
///
/// Handles are cheap to clone (an `Arc` inside) and shared by every thread.
pub trait Device: Clone + Send + Sync + 'static {
    /// The backend's native stream.
    type Stream: Send + Sync + 'static;
    /// The backend's native event.
    type Event: Send + Sync + 'static;

    /// The backend's name, for errors and reports ("cpu", "cuda").
    fn backend(&self) -> &'static str;
    /// A one-line description of the device for reports (model, memory, driver).
    fn describe(&self) -> String;
    /// Total device memory in bytes (what a fractional memory limit is a fraction of).
    fn memory_capacity(&self) -> usize;

    /// Allocates `bytes` (> 0) of raw device memory, [`ALIGNMENT`]-aligned. Called only by the
    /// caching allocator, never under one of its locks. Failure is [`crate::RuntimeError::OutOfMemory`]
    /// or [`crate::RuntimeError::Device`].
    fn alloc_raw(&self, bytes: usize) -> Result<DevicePtr>;
    /// Frees memory from [`Device::alloc_raw`].
    ///
    /// # Safety
    /// `ptr` came from `alloc_raw(bytes)` on this device, is freed once, and no work that uses it is
    /// pending on any stream.
    unsafe fn free_raw(&self, ptr: DevicePtr, bytes: usize);

    /// Creates the native stream for pool slot `index` (0 = the default stream).
    fn create_stream(&self, index: usize) -> Result<Self::Stream>;
    /// Submits the work encoded on `stream` so far.
    fn commit(&self, stream: &Self::Stream) -> Result<()>;
    /// Submits and waits until all work on `stream` has run; reports a failure of that work.
    fn synchronize(&self, stream: &Self::Stream) -> Result<()>;
    /// Drains `stream` and releases what it holds (an executor thread, a native handle). Work encoded on
    /// it afterwards fails with [`crate::RuntimeError::Dropped`]. Called once, when its pool is dropped.
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

    /// Encodes a copy of `src` into device memory at `dst` on `stream`. The bytes are taken (staged)
    /// before this returns, so `src` may be reused at once.
    fn copy_from_host(&self, stream: &Self::Stream, src: &[u8], dst: DevicePtr) -> Result<()>;
    /// Copies `dst.len()` bytes from device memory at `src` into `dst` after all work encoded on
    /// `stream` so far; returns when the bytes are there.
    fn copy_to_host(&self, stream: &Self::Stream, src: DevicePtr, dst: &mut [u8]) -> Result<()>;
    /// Encodes a device-to-device copy of `bytes` bytes on `stream`.
    fn copy_device(
        &self,
        stream: &Self::Stream,
        src: DevicePtr,
        dst: DevicePtr,
        bytes: usize,
    ) -> Result<()>;
}
