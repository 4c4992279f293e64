//! [`WgpuDownload`]: a device-to-host copy in flight — a mapped read-back buffer — and each stream's
//! pool of idle read-back buffers.
//!
//! [`crate::WgpuStream::download`] copies the view's words into a read-back buffer, submits, and asks
//! wgpu to map the buffer once that submission has run; it returns at once. `ready` polls the device
//! (never blocks); `finish` waits for the submission, then for the mapping, copies the bytes out, unmaps
//! and gives the buffer back to its stream's pool, which keeps at most [`IDLE_READBACK_BYTES`] idle. A
//! download dropped unfinished drops its buffer (wgpu frees it once the copy has run).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use braid_runtime::{Result, RuntimeError};
use parking_lot::Mutex;

use crate::device::{Shared, Submitted};

/// Idle read-back bytes a stream keeps for its next downloads.
pub const IDLE_READBACK_BYTES: u64 = 16 << 20;

const PENDING: u8 = 0;
const MAPPED: u8 = 1;
const FAILED: u8 = 2;

/// A stream's idle read-back buffers.
#[derive(Default)]
pub(crate) struct ReadbackPool {
    idle: Vec<wgpu::Buffer>,
}

impl ReadbackPool {
    /// The smallest idle buffer of at least `bytes`, or a new one.
    pub(crate) fn take(&mut self, device: &wgpu::Device, bytes: u64) -> wgpu::Buffer {
        let best = (self.idle.iter().enumerate())
            .filter(|(_, b)| b.size() >= bytes)
            .min_by_key(|(_, b)| b.size())
            .map(|(i, _)| i);
        match best {
            Some(i) => self.idle.swap_remove(i),
            None => device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("braid read-back"),
                size: bytes.next_power_of_two().max(4096),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        }
    }

    fn give_back(&mut self, buffer: wgpu::Buffer) {
        if self.idle_bytes() + buffer.size() <= IDLE_READBACK_BYTES {
            self.idle.push(buffer);
        }
    }

    pub(crate) fn idle_bytes(&self) -> u64 {
        self.idle.iter().map(wgpu::Buffer::size).sum()
    }

    pub(crate) fn clear(&mut self) {
        self.idle.clear();
    }
}

/// A download in flight (see the module doc).
pub struct WgpuDownload {
    shared: Arc<Shared>,
    pool: Arc<Mutex<ReadbackPool>>,
    buffer: wgpu::Buffer,
    /// Bytes of the buffer before the view's first (the copy starts on a word).
    skip: usize,
    len: usize,
    submitted: Submitted,
    state: Arc<AtomicU8>,
    stream: usize,
}

impl WgpuDownload {
    /// Starts mapping `buffer`, whose copy is in `submitted`.
    pub(crate) fn start(
        shared: Arc<Shared>,
        pool: Arc<Mutex<ReadbackPool>>,
        buffer: wgpu::Buffer,
        skip: usize,
        len: usize,
        submitted: Submitted,
        stream: usize,
    ) -> Self {
        let state = Arc::new(AtomicU8::new(PENDING));
        let done = state.clone();
        buffer.map_async(wgpu::MapMode::Read, .., move |result| {
            // Release pairs with the Acquire in `finish`/`ready`.
            done.store(
                if result.is_ok() { MAPPED } else { FAILED },
                Ordering::Release,
            );
        });
        Self {
            shared,
            pool,
            buffer,
            skip,
            len,
            submitted,
            state,
            stream,
        }
    }

    /// Whether the copy has run and the buffer is mapped (polls the device; never blocks).
    pub(crate) fn ready(&self) -> Result<bool> {
        if self.state.load(Ordering::Acquire) == PENDING {
            self.shared.poll(wgpu::PollType::Poll)?;
        }
        match self.state.load(Ordering::Acquire) {
            PENDING => Ok(false),
            _ => Ok(true),
        }
    }

    /// Waits for the copy, writes its bytes into `dst` and gives the buffer back to the pool.
    pub(crate) fn finish(self, dst: &mut [u8]) -> Result<()> {
        self.shared.wait(&self.submitted, self.stream)?;
        while self.state.load(Ordering::Acquire) == PENDING {
            // The submission has run; wgpu maps the buffer on its next maintenance.
            self.shared.poll(wgpu::PollType::wait_indefinitely())?;
        }
        if self.state.load(Ordering::Acquire) == FAILED {
            self.shared.check(self.stream)?;
            return Err(RuntimeError::StreamFailed {
                stream: self.stream,
                message: "mapping a read-back buffer failed".into(),
            });
        }
        {
            let view = self.buffer.get_mapped_range(..).map_err(|e| {
                RuntimeError::Device(format!("reading a mapped read-back buffer: {e}"))
            })?;
            dst.copy_from_slice(&view[self.skip..self.skip + self.len]);
        }
        self.buffer.unmap();
        self.pool.lock().give_back(self.buffer);
        Ok(())
    }
}
