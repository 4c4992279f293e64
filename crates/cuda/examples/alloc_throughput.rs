//! The caching allocator and the stream pool on CUDA, driven exactly as the PyTorch anchor
//! (`scripts/anchors/torch_runtime_bench.py`) drives PyTorch's: each of N threads on its own pool
//! stream loops { alloc 8 blocks of 512 B – 6 MiB; free them } (alloc and free each count as one op),
//! and { get a pool stream; set it current; get the current stream } for the stream figure.
//!
//! A benchmark: prints one JSON row per thread count (median of 5 runs, and the share of allocations
//! that took a shared pool's lock rather than a thread cache), asserts nothing.
//! `cargo run --release -p braid-cuda --example alloc_throughput [-- cpu]`: on CUDA GPU 0 (a GPU
//! machine), or with `cpu` on the CPU backend (no device work is encoded, so that measures the
//! allocator's host-side cost alone).

use std::sync::{Arc, Barrier};
use std::time::Instant;

use braid_cuda::CudaDevice;
use braid_runtime::alloc::{AllocatorConfig, CachingAllocator};
use braid_runtime::cpu::CpuDevice;
use braid_runtime::device::Device;
use braid_runtime::stream::{StreamPool, StreamPoolConfig};

const SIZES: [usize; 8] = [
    512,
    4096,
    65536,
    262_144,
    1 << 20,
    1_572_864,
    3 << 20,
    6_291_456,
];
const REPS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `work(thread, iters)` on `threads` threads after a common start; returns wall seconds.
fn timed(threads: usize, work: impl Fn(usize) + Send + Sync + 'static) -> f64 {
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (work, start) = (work.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                work(t);
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    for h in handles {
        h.join().expect("bench thread");
    }
    t0.elapsed().as_secs_f64()
}

fn main() -> braid_runtime::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("cpu") {
        run(CpuDevice::new())
    } else {
        run(CudaDevice::new(0)?)
    }
}

fn run<D: Device>(device: D) -> braid_runtime::Result<()> {
    eprintln!("{}", device.describe());
    let pool = Arc::new(StreamPool::new(device, StreamPoolConfig::default())?);
    let alloc = Arc::new(CachingAllocator::new(&pool, AllocatorConfig::default()));
    for threads in [1usize, 2, 4, 8, 16] {
        let iters = if threads > 1 {
            200_000 / threads
        } else {
            200_000
        };
        let mut alloc_rates = Vec::new();
        let mut stream_ns = Vec::new();
        let before = alloc.stats();
        for _ in 0..REPS {
            let (p, a) = (pool.clone(), alloc.clone());
            let seconds = timed(threads, move |_| {
                let s = p.current_stream().expect("stream");
                let mut live = Vec::with_capacity(8);
                for i in 0..iters {
                    for j in 0..8 {
                        live.push(a.alloc(SIZES[(i + j) & 7], s).expect("alloc"));
                    }
                    live.clear();
                }
            });
            alloc_rates.push((threads * iters * 16) as f64 / seconds);
            let p = pool.clone();
            let lookups = 1_000_000;
            let seconds = timed(threads, move |t| {
                let mut acc = 0usize;
                for i in 0..lookups {
                    let s = p.stream(1 + (t + i) % 31).expect("stream");
                    let _guard = p.set_current_stream(s).expect("a stream of this pool");
                    acc += p.current_stream().expect("current").index();
                }
                std::hint::black_box(acc);
            });
            stream_ns.push(seconds * 1e9 / lookups as f64);
        }
        let after = alloc.stats();
        let allocs = after.allocs - before.allocs;
        let locked = allocs - (after.thread_cache_hits - before.thread_cache_hits);
        println!(
            "{{\"threads\": {threads}, \"braid_alloc_ops_per_s\": {:.0}, \"braid_stream_get_set_ns\": {:.1}, \"allocs_via_a_lock\": {:.3}}}",
            median(alloc_rates),
            median(stream_ns),
            locked as f64 / allocs as f64
        );
    }
    let stats = alloc.stats();
    eprintln!("{stats}");
    Ok(())
}
