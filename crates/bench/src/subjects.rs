//! The implementations under test behind one interface per component, so every scenario's workload is
//! written once and run unchanged against the seed's design and braid's:
//!
//! - [`AllocatorUnderTest`]: braid's [`CachingAllocator`] and the seed's [`BeforeAllocator`].
//! - [`PoolUnderTest`]: braid's [`StreamPool`] and the seed's [`BeforeStreamPool`].
//!
//! Each method maps to the call a real caller makes, at the same level on both sides. In particular a
//! stream lookup returns the *native* stream, ready for work: braid's `current_stream()?.raw()?` and
//! `stream(i)?.raw()?` against the seed's `getCurrentStream()` and `getStream(i)`, which returned
//! created streams. The lookups' wrappers are `#[inline(always)]` on both sides, so a loop calls the
//! pool as a caller of its (inline) API would, not through an extra call. Streams, leases and current-stream handles borrow their pool (`'a`) on both
//! sides, as braid's do: a worker that keeps one borrows the pool from its
//! [`MakeWorker`](crate::harness::workers::MakeWorker).

use std::sync::Arc;

use braid_runtime::{
    AllocatorConfig, AllocatorStats, Buffer, CachingAllocator, CommitPolicy, CurrentStreamGuard,
    Device, ExhaustionPolicy, Result, Stream, StreamLease, StreamPool, StreamPoolConfig, View,
};

use crate::before::allocator::{BeforeAllocator, BeforeBuffer};
use crate::before::stream_pool::{BeforeCurrentGuard, BeforeLease, BeforeStreamPool};
use crate::device::BenchDevice;

/// The native stream type of the bench device.
pub type RawStream = <BenchDevice as Device>::Stream;

/// A caching allocator as the allocator scenarios (S1–S3) use it.
pub trait AllocatorUnderTest: Send + Sync + Sized + 'static {
    /// A live allocation; dropping it frees.
    type Buffer: Send + 'static;

    /// An allocator with its default configuration, serving the streams of `streams`.
    fn create(streams: &Arc<StreamPool<BenchDevice>>) -> Self;
    /// A buffer of at least `bytes` for `stream` (one of the allocator's pool).
    fn alloc(&self, bytes: usize, stream: Stream<'_, BenchDevice>) -> Result<Self::Buffer>;
    /// The bytes asked for, as ops and copies name them.
    fn view(buffer: &Self::Buffer) -> View<'_, BenchDevice>;
    /// A snapshot of the statistics.
    fn stats(&self) -> AllocatorStats;
}

impl AllocatorUnderTest for CachingAllocator<BenchDevice> {
    type Buffer = Buffer<BenchDevice>;

    fn create(streams: &Arc<StreamPool<BenchDevice>>) -> Self {
        CachingAllocator::new(streams, AllocatorConfig::default())
    }

    #[inline]
    fn alloc(&self, bytes: usize, stream: Stream<'_, BenchDevice>) -> Result<Self::Buffer> {
        CachingAllocator::alloc(self, bytes, stream)
    }

    #[inline]
    fn view(buffer: &Self::Buffer) -> View<'_, BenchDevice> {
        buffer.view()
    }

    fn stats(&self) -> AllocatorStats {
        CachingAllocator::stats(self)
    }
}

impl AllocatorUnderTest for BeforeAllocator<BenchDevice> {
    type Buffer = BeforeBuffer<BenchDevice>;

    fn create(streams: &Arc<StreamPool<BenchDevice>>) -> Self {
        BeforeAllocator::new(streams.clone())
    }

    #[inline]
    fn alloc(&self, bytes: usize, stream: Stream<'_, BenchDevice>) -> Result<Self::Buffer> {
        BeforeAllocator::alloc(self, bytes, stream)
    }

    #[inline]
    fn view(buffer: &Self::Buffer) -> View<'_, BenchDevice> {
        buffer.view()
    }

    fn stats(&self) -> AllocatorStats {
        BeforeAllocator::stats(self)
    }
}

/// A stream pool as the stream scenarios (S4, S5) use it.
pub trait PoolUnderTest: Send + Sync + Sized + 'static {
    /// What identifies a stream to `set_current_stream` (braid: the handle; seed: the stream itself),
    /// borrowing the pool.
    type Current<'a>: Copy
    where
        Self: 'a;
    /// Restores the previous current stream when dropped.
    type Guard;
    /// An explicitly leased slot, borrowing the pool.
    type Lease<'a>
    where
        Self: 'a;

    /// A pool with `worker_slots` slots and `exhaustion` policy.
    fn create(
        device: BenchDevice,
        worker_slots: usize,
        exhaustion: ExhaustionPolicy,
    ) -> Result<Self>;
    /// This thread's current stream as `set_current_stream` takes it (leases a slot on first use).
    fn current_stream(&self) -> Result<Self::Current<'_>>;
    /// This thread's current stream, native and ready for work.
    fn current_raw(&self) -> Result<&RawStream>;
    /// The slot index of this thread's current stream (leases a slot on first use).
    fn current_index(&self) -> Result<usize>;
    /// Makes `stream` current until the guard drops.
    fn set_current_stream<'a>(&'a self, stream: Self::Current<'a>) -> Result<Self::Guard>;
    /// Stream `index`, native and ready for work.
    fn get_raw(&self, index: usize) -> Result<&RawStream>;
    /// Leases a worker slot.
    fn lease(&self) -> Result<Self::Lease<'_>>;
    /// The leased slot's stream index.
    fn lease_index(lease: &Self::Lease<'_>) -> usize;
    /// Returns the slot.
    fn release(lease: Self::Lease<'_>);
    /// Worker slots leased now.
    fn leased_slots(&self) -> usize;
}

impl PoolUnderTest for StreamPool<BenchDevice> {
    type Current<'a> = Stream<'a, BenchDevice>;
    type Guard = CurrentStreamGuard;
    type Lease<'a> = StreamLease<'a, BenchDevice>;

    fn create(
        device: BenchDevice,
        worker_slots: usize,
        exhaustion: ExhaustionPolicy,
    ) -> Result<Self> {
        StreamPool::new(
            device,
            StreamPoolConfig {
                worker_slots,
                exhaustion,
                commit: CommitPolicy::Auto,
                main_thread_uses_default: true,
            },
        )
    }

    #[inline]
    fn current_stream(&self) -> Result<Self::Current<'_>> {
        StreamPool::current_stream(self)
    }

    #[inline(always)]
    fn current_raw(&self) -> Result<&RawStream> {
        StreamPool::current_stream(self)?.raw()
    }

    fn current_index(&self) -> Result<usize> {
        Ok(StreamPool::current_stream(self)?.index())
    }

    #[inline(always)]
    fn set_current_stream<'a>(&'a self, stream: Self::Current<'a>) -> Result<Self::Guard> {
        StreamPool::set_current_stream(self, stream)
    }

    #[inline(always)]
    fn get_raw(&self, index: usize) -> Result<&RawStream> {
        self.stream(index)?.raw()
    }

    #[inline]
    fn lease(&self) -> Result<Self::Lease<'_>> {
        StreamPool::lease(self)
    }

    #[inline]
    fn lease_index(lease: &Self::Lease<'_>) -> usize {
        lease.stream().index()
    }

    #[inline]
    fn release(mut lease: Self::Lease<'_>) {
        lease.release();
    }

    fn leased_slots(&self) -> usize {
        StreamPool::leased_slots(self)
    }
}

impl PoolUnderTest for BeforeStreamPool<BenchDevice> {
    type Current<'a> = &'a RawStream;
    type Guard = BeforeCurrentGuard;
    type Lease<'a> = BeforeLease<'a>;

    fn create(
        device: BenchDevice,
        worker_slots: usize,
        exhaustion: ExhaustionPolicy,
    ) -> Result<Self> {
        BeforeStreamPool::new(device, worker_slots, exhaustion)
    }

    #[inline]
    fn current_stream(&self) -> Result<Self::Current<'_>> {
        BeforeStreamPool::current_stream(self)
    }

    #[inline(always)]
    fn current_raw(&self) -> Result<&RawStream> {
        BeforeStreamPool::current_stream(self)
    }

    fn current_index(&self) -> Result<usize> {
        BeforeStreamPool::current_index(self)
    }

    #[inline(always)]
    fn set_current_stream<'a>(&'a self, stream: Self::Current<'a>) -> Result<Self::Guard> {
        Ok(BeforeStreamPool::set_current_stream(self, stream))
    }

    #[inline(always)]
    fn get_raw(&self, index: usize) -> Result<&RawStream> {
        self.get_stream(index)
    }

    #[inline]
    fn lease(&self) -> Result<Self::Lease<'_>> {
        BeforeStreamPool::lease(self)
    }

    #[inline]
    fn lease_index(lease: &Self::Lease<'_>) -> usize {
        lease.index()
    }

    #[inline]
    fn release(mut lease: Self::Lease<'_>) {
        lease.release();
    }

    fn leased_slots(&self) -> usize {
        BeforeStreamPool::leased_slots(self)
    }
}
