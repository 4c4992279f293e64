//! The implementations under test behind one interface per component, so every scenario's workload is
//! written once and run unchanged against the seed's design and braid's:
//!
//! - [`AllocatorUnderTest`]: braid's [`CachingAllocator`] and the seed's [`BeforeAllocator`].
//! - [`PoolUnderTest`]: braid's [`StreamPool`] and the seed's [`BeforeStreamPool`].
//!
//! Each method maps to the call a real caller makes, at the same level on both sides. In particular a
//! stream lookup returns the *native* stream, ready for work: braid's `current_stream()?.raw()?` and
//! `stream(i)?.raw()?` against the seed's `getCurrentStream()` and `getStream(i)`, which returned
//! created streams.

use braid_runtime::{
    AllocatorConfig, AllocatorStats, Buffer, CachingAllocator, CommitPolicy, CurrentStreamGuard,
    Device, DevicePtr, ExhaustionPolicy, Result, Stream, StreamLease, StreamPool, StreamPoolConfig,
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

    /// An allocator with its default configuration.
    fn create(device: BenchDevice) -> Self;
    /// A buffer of at least `bytes` for `stream`.
    fn alloc(&self, bytes: usize, stream: Stream<BenchDevice>) -> Result<Self::Buffer>;
    /// The buffer's device address.
    fn ptr(buffer: &Self::Buffer) -> DevicePtr;
    /// A snapshot of the statistics.
    fn stats(&self) -> AllocatorStats;
}

impl AllocatorUnderTest for CachingAllocator<BenchDevice> {
    type Buffer = Buffer<BenchDevice>;

    fn create(device: BenchDevice) -> Self {
        CachingAllocator::new(device, AllocatorConfig::default())
    }

    #[inline]
    fn alloc(&self, bytes: usize, stream: Stream<BenchDevice>) -> Result<Self::Buffer> {
        CachingAllocator::alloc(self, bytes, stream)
    }

    #[inline]
    fn ptr(buffer: &Self::Buffer) -> DevicePtr {
        buffer.ptr()
    }

    fn stats(&self) -> AllocatorStats {
        CachingAllocator::stats(self)
    }
}

impl AllocatorUnderTest for BeforeAllocator<BenchDevice> {
    type Buffer = BeforeBuffer<BenchDevice>;

    fn create(device: BenchDevice) -> Self {
        BeforeAllocator::new(device)
    }

    #[inline]
    fn alloc(&self, bytes: usize, stream: Stream<BenchDevice>) -> Result<Self::Buffer> {
        BeforeAllocator::alloc(self, bytes, stream)
    }

    #[inline]
    fn ptr(buffer: &Self::Buffer) -> DevicePtr {
        buffer.ptr()
    }

    fn stats(&self) -> AllocatorStats {
        BeforeAllocator::stats(self)
    }
}

/// A stream pool as the stream scenarios (S4, S5) use it.
pub trait PoolUnderTest: Send + Sync + Sized + 'static {
    /// What identifies a stream to `set_current_stream` (braid: the handle; seed: the stream itself).
    type Current: Copy + Send;
    /// Restores the previous current stream when dropped.
    type Guard;
    /// An explicitly leased slot.
    type Lease: Send;

    /// A pool with `worker_slots` slots and `exhaustion` policy.
    fn create(
        device: BenchDevice,
        worker_slots: usize,
        exhaustion: ExhaustionPolicy,
    ) -> Result<Self>;
    /// This thread's current stream as `set_current_stream` takes it (leases a slot on first use).
    fn current_stream(&self) -> Result<Self::Current>;
    /// This thread's current stream, native and ready for work.
    fn current_raw(&self) -> Result<&'static RawStream>;
    /// The slot index of this thread's current stream (leases a slot on first use).
    fn current_index(&self) -> Result<usize>;
    /// Makes `stream` current until the guard drops.
    fn set_current_stream(&self, stream: Self::Current) -> Self::Guard;
    /// Stream `index`, native and ready for work.
    fn get_raw(&self, index: usize) -> Result<&'static RawStream>;
    /// Leases a worker slot.
    fn lease(&self) -> Result<Self::Lease>;
    /// The leased slot's stream index.
    fn lease_index(lease: &Self::Lease) -> usize;
    /// Returns the slot.
    fn release(lease: Self::Lease);
    /// Worker slots leased now.
    fn leased_slots(&self) -> usize;
}

impl PoolUnderTest for StreamPool<BenchDevice> {
    type Current = Stream<BenchDevice>;
    type Guard = CurrentStreamGuard;
    type Lease = StreamLease<BenchDevice>;

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
    fn current_stream(&self) -> Result<Self::Current> {
        StreamPool::current_stream(self)
    }

    #[inline]
    fn current_raw(&self) -> Result<&'static RawStream> {
        StreamPool::current_stream(self)?.raw()
    }

    fn current_index(&self) -> Result<usize> {
        Ok(StreamPool::current_stream(self)?.index())
    }

    #[inline]
    fn set_current_stream(&self, stream: Self::Current) -> Self::Guard {
        StreamPool::set_current_stream(self, stream)
    }

    #[inline]
    fn get_raw(&self, index: usize) -> Result<&'static RawStream> {
        self.stream(index)?.raw()
    }

    #[inline]
    fn lease(&self) -> Result<Self::Lease> {
        StreamPool::lease(self)
    }

    #[inline]
    fn lease_index(lease: &Self::Lease) -> usize {
        lease.stream().index()
    }

    #[inline]
    fn release(mut lease: Self::Lease) {
        lease.release();
    }

    fn leased_slots(&self) -> usize {
        StreamPool::leased_slots(self)
    }
}

impl PoolUnderTest for BeforeStreamPool<BenchDevice> {
    type Current = &'static RawStream;
    type Guard = BeforeCurrentGuard;
    type Lease = BeforeLease;

    fn create(
        device: BenchDevice,
        worker_slots: usize,
        exhaustion: ExhaustionPolicy,
    ) -> Result<Self> {
        BeforeStreamPool::new(device, worker_slots, exhaustion)
    }

    #[inline]
    fn current_stream(&self) -> Result<Self::Current> {
        BeforeStreamPool::current_stream(self)
    }

    #[inline]
    fn current_raw(&self) -> Result<&'static RawStream> {
        BeforeStreamPool::current_stream(self)
    }

    fn current_index(&self) -> Result<usize> {
        BeforeStreamPool::current_index(self)
    }

    #[inline]
    fn set_current_stream(&self, stream: Self::Current) -> Self::Guard {
        BeforeStreamPool::set_current_stream(self, stream)
    }

    #[inline]
    fn get_raw(&self, index: usize) -> Result<&'static RawStream> {
        self.get_stream(index)
    }

    #[inline]
    fn lease(&self) -> Result<Self::Lease> {
        BeforeStreamPool::lease(self)
    }

    #[inline]
    fn lease_index(lease: &Self::Lease) -> usize {
        lease.index()
    }

    #[inline]
    fn release(mut lease: Self::Lease) {
        lease.release();
    }

    fn leased_slots(&self) -> usize {
        BeforeStreamPool::leased_slots(self)
    }
}
