//! Conversion of CUDA driver errors into [`RuntimeError`] — the one place `CUresult`s become braid errors
//! (the backend edge, as wgpu-hal converts `vk::Result` into its `DeviceError`).
//!
//! - A failed device call is [`RuntimeError::Device`], naming the call and the driver's error name and text.
//! - A failure reported by a stream's work (a faulting kernel surfacing at `cuStreamSynchronize`, a
//!   panicking host function) is [`RuntimeError::StreamFailed`] with the stream's pool index.
//! - `CUDA_ERROR_OUT_OF_MEMORY` from `cuMemAlloc` is [`RuntimeError::DeviceOutOfMemory`] with the bytes
//!   asked for and what the driver said (see [`out_of_memory`]); the caching allocator, which knows its
//!   limit and statistics, turns a refusal it cannot recover from into `RuntimeError::OutOfMemory`.
//! - No driver, no device, a stub library: one sentence that says so and points at the CPU backend
//!   ([`no_driver`]).

use braid_runtime::RuntimeError;
use cudarc::driver::{sys, DriverError};

/// What every "there is no usable CUDA" error ends with.
pub(crate) const CPU_HINT: &str = "(braid's CPU backend works without one)";

/// "CUDA_ERROR_NAME: description" for a driver error. Asking the driver for the texts is safe: a
/// `DriverError` exists only once libcuda was loaded.
pub(crate) fn describe(e: DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(text) => format!("{name}: {}", text.to_string_lossy()),
        Err(_) => name,
    }
}

/// A failed driver call: "`call` failed: CUDA_ERROR_…: …".
#[cold]
pub(crate) fn device(call: &str, e: DriverError) -> RuntimeError {
    RuntimeError::Device(format!("{call} failed: {}", describe(e)))
}

/// A failure of work on stream `index`, reported by `call`.
#[cold]
pub(crate) fn stream_failed(index: usize, call: &str, e: DriverError) -> RuntimeError {
    RuntimeError::StreamFailed {
        stream: index,
        message: format!("{call}: {}", describe(e)),
    }
}

/// Work encoded on stream `index` after its pool shut it down.
#[cold]
pub(crate) fn dropped(index: usize) -> RuntimeError {
    RuntimeError::Dropped {
        what: format!("stream {index}"),
        owner: "stream pool",
    }
}

/// `cuMemAlloc` refused `requested` bytes (`CUDA_ERROR_OUT_OF_MEMORY`): the device's word, with its free
/// and total memory when the driver could say. The caching allocator, which sees this variant, empties
/// its cache, retries, and on a second failure reports its own `OutOfMemory` with its statistics (a
/// [`RuntimeError::Device`] would skip that retry).
#[cold]
pub(crate) fn out_of_memory(
    requested: usize,
    e: DriverError,
    free_and_total: Option<(usize, usize)>,
) -> RuntimeError {
    let said = describe(e);
    RuntimeError::DeviceOutOfMemory {
        requested,
        detail: match free_and_total {
            Some((free, total)) => {
                format!("cuMemAlloc failed with {said}; {free} of {total} bytes free")
            }
            None => format!("cuMemAlloc failed with {said}"),
        },
    }
}

/// No usable CUDA: `detail` says what was missing.
#[cold]
pub(crate) fn no_driver(detail: &str) -> RuntimeError {
    RuntimeError::Device(format!("no CUDA driver found: {detail} {CPU_HINT}"))
}

/// The error for `CudaContext::new(ordinal)` failing with `e`.
#[cold]
pub(crate) fn context_creation(
    ordinal: usize,
    e: DriverError,
    devices: Option<i32>,
) -> RuntimeError {
    use sys::CUresult as R;
    match e.0 {
        R::CUDA_ERROR_STUB_LIBRARY => {
            no_driver("only the CUDA toolkit's stub libcuda was found, not the NVIDIA driver's")
        }
        R::CUDA_ERROR_NO_DEVICE => RuntimeError::Device(format!(
            "no CUDA device found: the driver is installed but reports no device ({}) {CPU_HINT}",
            describe(e)
        )),
        R::CUDA_ERROR_INVALID_DEVICE => RuntimeError::Device(format!(
            "CUDA device {ordinal} does not exist: the driver reports {} device(s); use an ordinal \
             below that",
            devices.map_or_else(|| "no".into(), |n| n.to_string())
        )),
        R::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH | R::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => {
            RuntimeError::Device(format!(
                "the NVIDIA driver cannot be used ({}); update the driver {CPU_HINT}",
                describe(e)
            ))
        }
        _ => RuntimeError::Device(format!(
            "creating a CUDA context on device {ordinal} failed: {} {CPU_HINT}",
            describe(e)
        )),
    }
}
