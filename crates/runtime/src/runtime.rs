//! [`Runtime`]: one device's stream pool, caching allocator and event pool, and the place where
//! tensor work is encoded on the calling thread's current stream.
//!
//! This is what the model and engine layers hold (by reference or in an `Arc`). It owns nothing a
//! thread would contend on: streams come from the pool's thread-local lease, buffers from the
//! allocator's thread cache.
//!
//! Dropping a runtime drops its allocator (emptying its cache), its events and its stream pool
//! (draining and shutting down the streams). What the device holds is released when the last of
//! those and of the buffers made from them is gone: nothing is leaked.

use std::sync::Arc;

use crate::alloc::{AllocatorConfig, Buffer, CachingAllocator};
use crate::device::Device;
use crate::error::Result;
use crate::stream::{Event, EventPool, Stream, StreamPool, StreamPoolConfig};

/// How a [`Runtime`] is set up.
#[derive(Clone, Debug, Default)]
pub struct RuntimeConfig {
    /// The stream pool's slots and policies.
    pub streams: StreamPoolConfig,
    /// The allocator's limit and thread-cache size.
    pub allocator: AllocatorConfig,
}

impl RuntimeConfig {
    /// Defaults, with every `BRAID_*` environment variable applied (an invalid value is an error).
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            streams: StreamPoolConfig::from_env()?,
            allocator: AllocatorConfig::from_env()?,
        })
    }
}

/// A device with its stream pool, allocator and events.
pub struct Runtime<D: Device> {
    // Field order is drop order: the allocator empties its cache while the streams still exist.
    allocator: CachingAllocator<D>,
    events: Arc<EventPool<D>>,
    streams: StreamPool<D>,
    device: D,
    /// Serialises graph captures (see `crate::graph`); never taken per op or per replay.
    capture_lock: parking_lot::Mutex<()>,
}

impl<D: Device> Runtime<D> {
    /// A runtime on `device`.
    pub fn new(device: D, config: RuntimeConfig) -> Result<Self> {
        let streams = StreamPool::new(device.clone(), config.streams)?;
        Ok(Self {
            allocator: CachingAllocator::new(&streams, config.allocator),
            events: EventPool::new(device.clone()),
            streams,
            device,
            capture_lock: parking_lot::Mutex::new(()),
        })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The stream pool.
    pub fn streams(&self) -> &StreamPool<D> {
        &self.streams
    }

    /// The caching allocator.
    pub fn allocator(&self) -> &CachingAllocator<D> {
        &self.allocator
    }

    /// This thread's current stream (see [`StreamPool::current_stream`]).
    #[inline]
    pub fn current_stream(&self) -> Result<Stream<'_, D>> {
        self.streams.current_stream()
    }

    /// A buffer of `bytes` for the current stream.
    #[inline]
    pub fn alloc(&self, bytes: usize) -> Result<Buffer<D>> {
        self.allocator.alloc(bytes, self.current_stream()?)
    }

    /// A pooled event.
    pub fn event(&self) -> Result<Event<D>> {
        self.events.event()
    }

    /// The lock that serialises graph captures.
    pub(crate) fn capture_lock(&self) -> &parking_lot::Mutex<()> {
        &self.capture_lock
    }

    /// Waits for the current stream's work.
    pub fn synchronize(&self) -> Result<()> {
        self.current_stream()?.synchronize()
    }
}
