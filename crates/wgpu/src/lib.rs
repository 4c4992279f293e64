//! braid's wgpu backend: [`WgpuDevice`] implements [`braid_runtime::device::Device`] (backend contract
//! v2) and the op set ([`braid_runtime::ops::Ops`]) on any adapter wgpu drives — Vulkan on Linux (an
//! NVIDIA GPU, or Mesa's lavapipe on the CPU in CI) and Metal on macOS, from the same Rust and the same
//! WGSL kernels, in f32 and (where the adapter has `SHADER_F16`) f16.
//!
//! # The contract as built here
//!
//! - **One queue, many streams.** wgpu has one queue per device, so a braid stream ([`WgpuStream`]) is a
//!   command encoder of its own that work is encoded into; [`braid_runtime::Device::commit`] finishes
//!   it and submits it to the queue (the runtime's commit policy decides how often: after ops, or only
//!   at sync points; after an op, a stream with work still in flight submits once 16 commands are
//!   encoded — `BRAID_WGPU_SUBMIT_BATCH` — as wgpu serialises submits). Dispatches go into one open
//!   compute pass. Submissions are totally ordered, so work submitted later never runs before work
//!   submitted earlier.
//! - **Events are submission indices.** Recording an event commits the stream and remembers its last
//!   submission; waiting on the host is `Device::poll` with that index; a stream waiting on an event
//!   needs nothing more than the queue's order (the event's work was submitted first).
//! - **Memory is sub-ranges of large buffers.** [`WgpuBuffer`] is a range of a large `wgpu::Buffer`
//!   (the `memory` module's arenas) or a buffer of its own when it is large; ops bind each buffer whole
//!   and pass the view's element offset to the kernel, so bind groups depend only on which buffers a
//!   dispatch uses and are cached (the `bind` module).
//! - **Copies.** Uploads go through the stream's staging belt (mapped chunks reused across calls),
//!   large ones through the queue's own staging; downloads copy into mapped read-back buffers pooled per
//!   stream ([`WgpuDownload`]). Ranges that are not 4-byte aligned go through a byte-copy kernel.
//! - **Errors, never panics.** No adapter, a refused allocation, a lost device or a validation error
//!   of the driver are [`braid_runtime::RuntimeError`]s (`Device`, `DeviceOutOfMemory`,
//!   `StreamFailed`); wgpu's default handler (which panics) is replaced.
//!
//! # Modules, each owning one thing
//!
//! - [`device`] — [`WgpuDevice`]: adapter choice (`BRAID_WGPU_ADAPTER`), the wgpu device and queue,
//!   submission order and completion, failures, and the [`braid_runtime::Device`] impl.
//! - `memory` — [`WgpuBuffer`] and the arenas it is carved from.
//! - `bind` — how operands are bound (whole buffers) and the device's bind group cache.
//! - [`stream`] — [`WgpuStream`]: a stream's encoder, staging belt and read-back pool.
//! - [`event`] — [`WgpuEvent`]: the last submission of the stream it was recorded on.
//! - [`download`] — [`WgpuDownload`]: a read-back buffer being mapped.
//! - `kernels` — the WGSL kernels (`shaders/`, their `// unroll` blocks expanded), their pipelines
//!   (created once per device) and the prepared dispatch (bind group, immediates, grid).
//! - `ops` — the [`braid_runtime::ops::Ops`] impl: which GEMM kernel for which shape, the fused
//!   attention.
//!
//! # What is verified where
//!
//! Every test of this crate runs on lavapipe in CI (`scripts/test.sh`); `scripts/wgpu-h200.sh` runs them
//! on an NVIDIA GPU through Vulkan. The Metal path is wgpu's own and is compiled by wgpu only on macOS:
//! this crate has no platform-specific code, and nothing of it has been run on Metal.

mod bind;
pub mod device;
pub mod download;
pub mod event;
mod kernels;
mod memory;
mod ops;
pub mod stream;

pub use device::{Counters, WgpuDevice, ADAPTER_ENV, GEMM_ENV, SUBMIT_BATCH, SUBMIT_BATCH_ENV};
pub use download::WgpuDownload;
pub use event::WgpuEvent;
pub use memory::WgpuBuffer;
pub use ops::{BLOCK_MAX_SEQ, FUSED_MAX_HEAD_DIM, FUSED_MAX_SEQ, SMALL_GEMM_MAX_ROWS, WIDE_GRID};
pub use stream::WgpuStream;
