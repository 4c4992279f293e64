//! [`WgpuStream`]: one braid stream on wgpu's one queue — a command encoder of its own, a staging belt
//! for uploads and a pool of read-back buffers for downloads.
//!
//! # Promises
//!
//! - **In order.** Work is encoded into the stream's open encoder in call order; dispatches go into
//!   the encoder's open compute pass (one pass for a run of dispatches: beginning and ending a pass per
//!   dispatch costs more than a small kernel runs), which copies end. A submit finishes the encoder
//!   (through the device's numbered submit), and the next op opens a new one.
//! - **When work is submitted.** Sync points (an event, a download, a synchronize, a shutdown, a
//!   large upload) always submit. The runtime's commit after an op (`commit_op`, by its
//!   commit policy: `on` after every op, `off` never) submits when the stream has nothing in flight
//!   (the device would otherwise idle) or when at least the device's submit batch of commands
//!   ([`crate::WgpuDevice::set_submit_batch`], `BRAID_WGPU_SUBMIT_BATCH`, default
//!   [`crate::device::SUBMIT_BATCH`]) is encoded; otherwise it leaves them for the next commit.
//!   wgpu serialises submits (one lock across validation, tracking and the driver's submit), so a
//!   submit per op caps all callers together at one submit rate; a batch of 1 is a submit per commit.
//! - **Uploads take their bytes at once.** Aligned uploads up to [`BELT_CHUNK`] are written into the
//!   stream's staging belt (mapped chunks, reused once the queue is done with them) and copied in
//!   stream order; larger ones commit the stream and go through the queue's own staging, which runs
//!   before anything submitted later. Ranges not 4-byte aligned (wgpu copies move whole words) are
//!   staged into the stream's scratch buffer and moved by the byte-copy kernel, which keeps the bytes
//!   around the range.
//! - **Device copies.** Aligned copies between two buffers are `copy_buffer_to_buffer`; within one
//!   buffer (two ranges of an arena: wgpu refuses such copies) or unaligned, the byte-copy kernel.
//! - **Shutdown** submits and waits for what is encoded; later work on the stream is
//!   [`RuntimeError::Dropped`].
//! - The state sits behind one mutex, so a stream shared by several threads (the pool's `share`
//!   policy) stays in order; streams of different threads share nothing but the queue.

use std::num::NonZeroU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use braid_runtime::device::View;
use braid_runtime::{Result, RuntimeError};
use parking_lot::Mutex;

use crate::bind::Binding;
use crate::device::{Shared, Submitted};
use crate::download::{ReadbackPool, WgpuDownload};
use crate::kernels::{Kernel, Recorded};
use crate::WgpuDevice;

/// Bytes per staging-belt chunk; aligned uploads up to this size go through the belt.
pub const BELT_CHUNK: u64 = 1 << 20;

/// A native stream of one pool slot. See the module doc.
pub struct WgpuStream {
    index: usize,
    shared: Arc<Shared>,
    state: Mutex<State>,
    readback: Arc<Mutex<ReadbackPool>>,
}

struct State {
    closed: bool,
    /// The open compute pass of `encoder` (declared first: dropped, so ended, before the encoder).
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    /// Commands in the open encoder (0: nothing to submit).
    encoded: usize,
    belt: wgpu::util::StagingBelt,
    last: Option<Submitted>,
    /// Where unaligned uploads are staged for the byte-copy kernel; grown on demand.
    scratch: Option<wgpu::Buffer>,
}

/// The absolute byte range of a view in its wgpu buffer.
fn range(view: View<'_, WgpuDevice>) -> (u64, u64) {
    (view.buffer.base + view.offset as u64, view.len as u64)
}

fn aligned(values: &[u64]) -> bool {
    values.iter().all(|v| v % wgpu::COPY_BUFFER_ALIGNMENT == 0)
}

impl WgpuStream {
    pub(crate) fn new(index: usize, shared: Arc<Shared>) -> Self {
        let belt = wgpu::util::StagingBelt::new(shared.device.clone(), BELT_CHUNK);
        Self {
            index,
            state: Mutex::new(State {
                closed: false,
                pass: None,
                encoder: None,
                encoded: 0,
                belt,
                last: None,
                scratch: None,
            }),
            readback: Arc::new(Mutex::new(ReadbackPool::default())),
            shared,
        }
    }

    /// The slot index this stream was created for (0 = the pool's default stream).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Bytes of idle read-back buffers this stream keeps for downloads.
    pub fn idle_readback_bytes(&self) -> u64 {
        self.readback.lock().idle_bytes()
    }

    fn dropped(&self) -> RuntimeError {
        RuntimeError::Dropped {
            what: format!("wgpu stream {}", self.index),
            owner: "stream pool",
        }
    }

    /// Runs `f` on the open encoder (opening one), counting one command.
    pub(crate) fn encode<R>(
        &self,
        f: impl FnOnce(&mut wgpu::CommandEncoder, &mut wgpu::util::StagingBelt, &Shared) -> Result<R>,
    ) -> Result<R> {
        let mut state = self.state.lock();
        self.encode_locked(&mut state, f)
    }

    fn encode_locked<R>(
        &self,
        state: &mut State,
        f: impl FnOnce(&mut wgpu::CommandEncoder, &mut wgpu::util::StagingBelt, &Shared) -> Result<R>,
    ) -> Result<R> {
        if state.closed {
            return Err(self.dropped());
        }
        state.pass = None; // ends the pass: copies go between passes
        let State {
            encoder,
            belt,
            encoded,
            ..
        } = state;
        let encoder = encoder.get_or_insert_with(|| {
            self.shared
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("braid stream"),
                })
        });
        let out = f(encoder, belt, &self.shared)?;
        *encoded += 1;
        Ok(out)
    }

    /// Encodes one kernel dispatch.
    pub(crate) fn dispatch(
        &self,
        kernel: (Kernel, bool),
        bindings: &[Binding<'_>],
        params: &[u32],
        groups: [u32; 3],
    ) -> Result<()> {
        let recorded =
            (self.shared.kernels).prepare(&self.shared, kernel, bindings, params, groups);
        let mut state = self.state.lock();
        self.record_locked(&mut state, &recorded)
    }

    /// Records a prepared dispatch into the open compute pass (opening the encoder and the pass).
    fn record_locked(&self, state: &mut State, recorded: &Recorded) -> Result<()> {
        if state.closed {
            return Err(self.dropped());
        }
        if state.pass.is_none() {
            let encoder = state.encoder.get_or_insert_with(|| {
                self.shared
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("braid stream"),
                    })
            });
            let pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            state.pass = Some(pass.forget_lifetime());
        }
        recorded.record(state.pass.as_mut().expect("opened above"));
        state.encoded += 1;
        self.shared.dispatches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The runtime's commit after an op: submits when the stream has nothing in flight or at least
    /// the device's submit batch of commands is encoded (see the module doc).
    pub(crate) fn commit_op(&self) -> Result<()> {
        let mut state = self.state.lock();
        let idle = (state.last.as_ref()).is_none_or(|last| self.shared.is_done(last.seq));
        if idle || state.encoded >= self.shared.submit_batch() {
            self.commit_locked(&mut state);
        }
        Ok(())
    }

    /// Submits what is encoded; returns the stream's last submission (`None` if it never submitted).
    pub(crate) fn commit(&self) -> Result<Option<Submitted>> {
        let mut state = self.state.lock();
        self.commit_locked(&mut state);
        Ok(state.last.clone())
    }

    fn commit_locked(&self, state: &mut State) {
        if state.encoded == 0 {
            return;
        }
        state.pass = None;
        let Some(encoder) = state.encoder.take() else {
            return;
        };
        state.encoded = 0;
        state.belt.finish();
        state.last = Some(self.shared.submit(encoder.finish()));
        state.belt.recall();
    }

    /// Submits and waits for everything encoded; reports a failure of the device's work.
    pub(crate) fn synchronize(&self) -> Result<()> {
        match self.commit()? {
            Some(last) => self.shared.wait(&last, self.index),
            None => self.shared.check(self.index),
        }
    }

    /// Drains the stream; later work fails with [`RuntimeError::Dropped`]. Idempotent.
    pub(crate) fn shutdown(&self) {
        let mut state = self.state.lock();
        if state.closed {
            return;
        }
        self.commit_locked(&mut state);
        state.closed = true;
        if let Some(last) = state.last.clone() {
            if let Err(e) = self.shared.wait(&last, self.index) {
                tracing::warn!(stream = self.index, error = %e, "stream failed before shutdown");
            }
        }
        state.scratch = None;
        self.readback.lock().clear();
    }

    /// Encodes an upload of `src` into `dst` (see the module doc).
    pub(crate) fn copy_from_host(&self, src: &[u8], dst: View<'_, WgpuDevice>) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let (at, len) = range(dst);
        let mut state = self.state.lock();
        if aligned(&[at, len]) {
            return self.stage(&mut state, src, &dst.buffer.buffer, at);
        }
        // Unaligned: stage the bytes, padded to whole words, at the scratch buffer's start, then move
        // them with the byte-copy kernel.
        let padded = len.div_ceil(4) * 4;
        let scratch = match &state.scratch {
            Some(scratch) if scratch.size() >= padded => scratch.clone(),
            _ => {
                let scratch = self.shared.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("braid upload scratch"),
                    size: padded.next_power_of_two().max(4096),
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                state.scratch = Some(scratch.clone());
                scratch
            }
        };
        let mut words = src.to_vec();
        words.resize(padded as usize, 0);
        self.stage(&mut state, &words, &scratch, 0)?;
        let source = Binding::whole(&scratch, 0, padded, 0);
        let target = (&dst.buffer.buffer, at);
        let recorded = (self.shared.kernels).byte_copy(&self.shared, source, target, len)?;
        self.record_locked(&mut state, &recorded)
    }

    /// Writes `bytes` (a multiple of 4 long) at `at` in `target`, in stream order.
    fn stage(&self, state: &mut State, bytes: &[u8], target: &wgpu::Buffer, at: u64) -> Result<()> {
        let len = bytes.len() as u64;
        if len <= BELT_CHUNK {
            return self.encode_locked(state, |encoder, belt, _| {
                let size = NonZeroU64::new(len).expect("uploads are not empty");
                belt.write_buffer(encoder, target, at, size)
                    .copy_from_slice(bytes);
                Ok(())
            });
        }
        // Large: what is encoded goes first, then the queue's staged write, which wgpu runs before the
        // next submission. An empty command buffer is left to submit, so an event recorded next covers
        // the write too.
        self.commit_locked(state);
        if state.closed {
            return Err(self.dropped());
        }
        self.shared.queue.write_buffer(target, at, bytes);
        self.encode_locked(state, |_, _, _| Ok(()))
    }

    /// Encodes a copy of `src` to `dst` (see the module doc).
    pub(crate) fn copy_device(
        &self,
        src: View<'_, WgpuDevice>,
        dst: View<'_, WgpuDevice>,
    ) -> Result<()> {
        let ((from, len), (to, _)) = (range(src), range(dst));
        if len == 0 {
            return Ok(());
        }
        let (source, target) = (&src.buffer.buffer, &dst.buffer.buffer);
        if aligned(&[from, to, len]) && source != target {
            return self.encode(|encoder, _, _| {
                encoder.copy_buffer_to_buffer(source, from, target, to, len);
                Ok(())
            });
        }
        let shared = &self.shared;
        let binding = Binding::window(shared, source, from, len)?;
        let recorded = (shared.kernels).byte_copy(shared, binding, (target, to), len)?;
        self.record_locked(&mut self.state.lock(), &recorded)
    }

    /// Encodes a copy of `src` into a read-back buffer, submits it and starts mapping (see
    /// [`crate::download`]).
    pub(crate) fn download(&self, src: View<'_, WgpuDevice>) -> Result<WgpuDownload> {
        let (at, len) = range(src);
        // Copies move whole words: copy the aligned range around the view, skip the extra on read.
        let start = at / 4 * 4;
        let end = (at + len).div_ceil(4) * 4;
        let buffer = self.readback.lock().take(&self.shared.device, end - start);
        let mut state = self.state.lock();
        self.encode_locked(&mut state, |encoder, _, _| {
            if end > start {
                encoder.copy_buffer_to_buffer(&src.buffer.buffer, start, &buffer, 0, end - start);
            }
            Ok(())
        })?;
        self.commit_locked(&mut state);
        let submitted = state.last.clone().expect("the download was just submitted");
        drop(state);
        Ok(WgpuDownload::start(
            self.shared.clone(),
            self.readback.clone(),
            buffer,
            (at - start) as usize,
            len as usize,
            submitted,
            self.index,
        ))
    }
}

impl Drop for WgpuStream {
    fn drop(&mut self) {
        self.shutdown();
    }
}
