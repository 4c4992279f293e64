//! Helpers shared by the runtime's integration tests.
#![allow(dead_code)]

use braid_runtime::cpu::CpuDevice;
use braid_runtime::{Buffer, Runtime, RuntimeConfig, Stream, View};

/// A CPU runtime with the given config.
pub fn cpu_runtime(config: RuntimeConfig) -> Runtime<CpuDevice> {
    Runtime::new(CpuDevice::new(), config).expect("runtime")
}

/// Encodes a host function on `stream` (in stream order).
pub fn on_stream(stream: Stream<'_, CpuDevice>, f: impl FnOnce() + Send + 'static) {
    stream
        .device()
        .launch(stream.raw().expect("stream"), f)
        .expect("launch");
}

/// The host address a CPU view starts at (for host functions that inspect device memory).
pub fn host_addr(view: View<'_, CpuDevice>) -> usize {
    view.buffer.as_ptr() as usize + view.offset
}

/// The host address of a CPU buffer's block: its identity, for tests of reuse.
pub fn addr_of(buffer: &Buffer<CpuDevice>) -> usize {
    buffer.raw().as_ptr() as usize
}

/// Writes `byte` over the bytes of `view`, in stream order.
pub fn fill_bytes(stream: Stream<'_, CpuDevice>, view: View<'_, CpuDevice>, byte: u8) {
    let (addr, len) = (host_addr(view), view.len);
    on_stream(stream, move || {
        // SAFETY: addr addresses len live bytes of a buffer that outlives this work by stream order.
        unsafe { std::ptr::write_bytes(addr as *mut u8, byte, len) }
    });
}

/// Counts bytes of `view` that differ from `byte`, in stream order, adding them to `bad`.
pub fn check_bytes(
    stream: Stream<'_, CpuDevice>,
    view: View<'_, CpuDevice>,
    byte: u8,
    bad: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let (addr, len) = (host_addr(view), view.len);
    on_stream(stream, move || {
        // SAFETY: as in `fill_bytes`.
        let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
        let wrong = bytes.iter().filter(|&&b| b != byte).count();
        bad.fetch_add(wrong, std::sync::atomic::Ordering::Relaxed);
    });
}

/// xorshift64*: a deterministic per-thread size/choice generator for the stress tests.
pub fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}
