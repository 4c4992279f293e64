//! [`CountedDevice`]: the one device every arm of every scenario runs on — braid's CPU backend, wrapped
//! so that the calls the design says must not happen in steady state can be counted.
//!
//! It forwards every [`Device`] call unchanged and counts three rare ones: host-blocking syncs of a
//! stream ([`Device::synchronize`]), host waits on an event ([`Device::event_synchronize`]) and event
//! creations ([`Device::create_event`]). Hot calls (record, query, commit, raw memory) are forwarded
//! with no counting, so the wrapper adds no shared write to any per-op path and both arms pay exactly
//! the backend's own costs. Buffers, views and downloads are the wrapped device's own types
//! ([`inner_view`] renames a view for the wrapped device's ops); a download's host wait is not counted
//! (no scenario downloads).
//!
//! Counters are per device instance (each repetition builds its own), `CachePadded`, and Relaxed: they
//! are statistics read after the work they count, with no data ordered by them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use braid_runtime::cpu::CpuDevice;
use braid_runtime::{Device, Result, View};
use crossbeam_utils::CachePadded;

/// The device the benchmarks run on.
pub type BenchDevice = CountedDevice<CpuDevice>;

/// A fresh CPU device for one repetition.
pub fn bench_device() -> BenchDevice {
    CountedDevice::new(CpuDevice::new())
}

/// A snapshot of a [`CountedDevice`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounts {
    /// Host-blocking stream syncs plus host waits on events.
    pub host_syncs: u64,
    /// Native events created.
    pub events_created: u64,
}

impl std::ops::Sub for DeviceCounts {
    type Output = Self;

    fn sub(self, earlier: Self) -> Self {
        Self {
            host_syncs: self.host_syncs - earlier.host_syncs,
            events_created: self.events_created - earlier.events_created,
        }
    }
}

#[derive(Default)]
struct Counters {
    host_syncs: CachePadded<AtomicU64>,
    events_created: CachePadded<AtomicU64>,
}

/// A device that forwards to `inner` and counts host syncs and event creations (module doc).
#[derive(Clone)]
pub struct CountedDevice<D> {
    inner: D,
    counters: Arc<Counters>,
}

impl<D: Device> CountedDevice<D> {
    /// Wraps `inner` with zeroed counters.
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            counters: Arc::default(),
        }
    }

    /// The wrapped device (for backend-specific calls: kernels, raw byte counts).
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The counters so far.
    pub fn counts(&self) -> DeviceCounts {
        DeviceCounts {
            host_syncs: self.counters.host_syncs.load(Ordering::Relaxed),
            events_created: self.counters.events_created.load(Ordering::Relaxed),
        }
    }
}

impl<D: Device> Device for CountedDevice<D> {
    type Buffer = D::Buffer;
    type Stream = D::Stream;
    type Event = D::Event;
    type Download = D::Download;

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn memory_capacity(&self) -> usize {
        self.inner.memory_capacity()
    }

    fn alloc_raw(&self, bytes: usize) -> Result<Self::Buffer> {
        self.inner.alloc_raw(bytes)
    }

    unsafe fn free_raw(&self, buffer: Self::Buffer) {
        // SAFETY: the caller keeps `free_raw`'s contract, and `inner` is the device that allocated
        // `buffer`.
        unsafe { self.inner.free_raw(buffer) }
    }

    fn create_stream(&self, index: usize) -> Result<Self::Stream> {
        self.inner.create_stream(index)
    }

    fn commit(&self, stream: &Self::Stream) -> Result<()> {
        self.inner.commit(stream)
    }

    fn synchronize(&self, stream: &Self::Stream) -> Result<()> {
        self.counters.host_syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.synchronize(stream)
    }

    fn shutdown_stream(&self, stream: &Self::Stream) {
        self.inner.shutdown_stream(stream)
    }

    fn create_event(&self) -> Result<Self::Event> {
        self.counters.events_created.fetch_add(1, Ordering::Relaxed);
        self.inner.create_event()
    }

    fn record_event(&self, event: &Self::Event, stream: &Self::Stream) -> Result<()> {
        self.inner.record_event(event, stream)
    }

    fn wait_event(&self, stream: &Self::Stream, event: &Self::Event) -> Result<()> {
        self.inner.wait_event(stream, event)
    }

    fn query_event(&self, event: &Self::Event) -> Result<bool> {
        self.inner.query_event(event)
    }

    fn event_synchronize(&self, event: &Self::Event) -> Result<()> {
        self.counters.host_syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.event_synchronize(event)
    }

    fn copy_from_host(&self, stream: &Self::Stream, src: &[u8], dst: View<'_, Self>) -> Result<()> {
        self.inner.copy_from_host(stream, src, inner_view(dst))
    }

    fn copy_device(
        &self,
        stream: &Self::Stream,
        src: View<'_, Self>,
        dst: View<'_, Self>,
    ) -> Result<()> {
        self.inner
            .copy_device(stream, inner_view(src), inner_view(dst))
    }

    fn download(&self, stream: &Self::Stream, src: View<'_, Self>) -> Result<Self::Download> {
        self.inner.download(stream, inner_view(src))
    }

    fn download_ready(&self, download: &Self::Download) -> Result<bool> {
        self.inner.download_ready(download)
    }

    fn finish_download(&self, download: Self::Download, dst: &mut [u8]) -> Result<()> {
        self.inner.finish_download(download, dst)
    }

    fn copy_to_host(
        &self,
        stream: &Self::Stream,
        src: View<'_, Self>,
        dst: &mut [u8],
    ) -> Result<()> {
        self.inner.copy_to_host(stream, inner_view(src), dst)
    }
}

/// The same byte range named for the wrapped device (the buffer types are the same), for the wrapped
/// device's own calls: its ops, which the scenarios encode on `inner()`.
#[inline]
pub fn inner_view<D: Device>(view: View<'_, CountedDevice<D>>) -> View<'_, D> {
    View {
        buffer: view.buffer,
        offset: view.offset,
        len: view.len,
    }
}
