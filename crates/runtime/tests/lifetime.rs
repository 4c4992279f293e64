//! Nothing leaked: creating a runtime, using it from 8 threads (streams leased, buffers cached per
//! thread, a non-blocking download) and dropping it, 100 times, brings the process's thread count back
//! to where it started and its heap bytes to within one small, one-time growth. The heap is counted by
//! this binary's global allocator (so this test lives alone in its file).
//!
//! The one-time growth: parking_lot's global table of parked threads grows with the most threads that
//! ever parked at once and never shrinks (2,080 bytes seen here, in some runs, once). One runtime's
//! state alone is larger than the tolerance (its stream pool has 32 cache-padded slots, its allocator
//! 52 cache-padded free lists), so leaking even one of the 100 runtimes fails the test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use braid_runtime::cpu::CpuDevice;
use braid_runtime::{Runtime, RuntimeConfig};

/// The system allocator, counting the bytes live now.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counter is a side effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's arguments.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        new
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The process's thread count (Linux: `/proc/self/status`).
fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Threads:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .expect("/proc/self/status has a Threads: line")
}

/// One runtime, used from this thread and 8 others, then dropped.
fn use_and_drop_a_runtime() {
    let runtime = Arc::new(Runtime::new(CpuDevice::new(), RuntimeConfig::default()).unwrap());
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let runtime = runtime.clone();
            std::thread::spawn(move || {
                let x: Vec<f32> = (0..4 * 64).map(|i| (i + t) as f32 * 0.01).collect();
                let x = runtime.from_f32(&x, &[4, 64]).unwrap();
                let w = runtime.full(&[32, 64], 0.5).unwrap();
                let y = runtime.linear(&x, &w, None).unwrap();
                // A large block (thread-cached when freed) and a download left in flight for a while.
                let big = runtime.full(&[1 << 18], 1.0).unwrap();
                let pending = runtime.download(&y).unwrap();
                drop(big);
                let values = pending.wait().unwrap();
                assert_eq!(values.len(), 4 * 32);
                assert!(values.iter().all(|v| v.is_finite()));
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    // The main thread too (on the default stream).
    let t = runtime.full(&[16], 2.0).unwrap();
    assert_eq!(runtime.to_vec_f32(&t).unwrap(), vec![2.0; 16]);
    drop(t);
    drop(runtime);
}

#[test]
fn dropping_runtimes_returns_threads_and_heap_bytes() {
    // Warm up what a process keeps once, whatever runtimes it makes (rayon's pool, thread-local
    // registries and their capacity).
    use_and_drop_a_runtime();
    let (threads_before, bytes_before) = (threads(), LIVE_BYTES.load(Ordering::SeqCst));
    for _ in 0..100 {
        use_and_drop_a_runtime();
    }
    let (threads_after, bytes_after) = (threads(), LIVE_BYTES.load(Ordering::SeqCst));
    assert_eq!(
        threads_after, threads_before,
        "executor and worker threads exited"
    );
    const ONE_TIME_GROWTH: isize = 4 << 10;
    assert!(
        bytes_after - bytes_before <= ONE_TIME_GROWTH,
        "heap bytes after 100 runtimes: {} more than before (tolerance {ONE_TIME_GROWTH})",
        bytes_after - bytes_before
    );
}
