//! The PyTorch allocator anchor's loop on the CPU backend: each of N threads on its own pool stream
//! loops { alloc 8 blocks of 512 B – 6 MiB; free them } (alloc and free each count as one op), as
//! `crates/cuda/examples/alloc_throughput.rs` does on CUDA. No device work is encoded, so this measures
//! the allocator's host-side cost alone.
//!
//! With `mixed` as the first argument it runs braid-bench's S1a workload instead: each thread keeps 4
//! live buffers and replaces a random one per op with a new buffer of a log-uniform size from 256 B to
//! 64 MiB (each replacement is one alloc + one free, counted as one op, as S1a counts).
//!
//! A benchmark: prints one line per thread count (median, min and max of the repetitions, and the share
//! of allocations that took a shared pool's lock rather than the thread cache) and the allocator's
//! stats, asserts nothing.
//!
//! `cargo run --release -p braid-runtime --example alloc_loop -- [mixed] [THREADS,…] [ITERS] [REPS]`
//! (defaults: `1,2`, 100000 iterations per thread, 5 repetitions).

use std::sync::{Arc, Barrier};
use std::time::Instant;

use braid_runtime::cpu::CpuDevice;
use braid_runtime::{AllocatorConfig, CachingAllocator, StreamPool, StreamPoolConfig};

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

/// Runs `work(thread)` on `threads` threads after a common start; returns wall seconds.
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

/// splitmix64, as braid-bench's `Rng`, so `mixed` draws the same kind of plan as S1a.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A (size, window slot) plan: sizes log-uniform in 256 B – 64 MiB, slots in 0..4.
    fn s1a_plan(&mut self, len: usize) -> Vec<(usize, usize)> {
        let (low, high) = (8.0f64, 26.0f64);
        (0..len)
            .map(|_| {
                let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                let size = ((low + unit * (high - low)).exp2() as usize).clamp(256, 64 << 20);
                (size, (self.next_u64() % 4) as usize)
            })
            .collect()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let mixed = args.next_if(|a| a == "mixed").is_some();
    let thread_counts: Vec<usize> = match args.next() {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![1, 2],
    };
    let iters: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let reps: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);

    let device = CpuDevice::new();
    let pool = Arc::new(StreamPool::new(
        device.clone(),
        StreamPoolConfig::default(),
    )?);
    let alloc = Arc::new(CachingAllocator::new(device, AllocatorConfig::default()));
    if mixed {
        println!("S1a: {iters} window replacements per thread, {reps} repetitions");
    } else {
        println!("{iters} iterations of 8 allocs + 8 frees per thread, {reps} repetitions");
    }
    println!(
        "{:>7} {:>14} {:>14} {:>14} {:>18}",
        "threads", "M ops/s p50", "min", "max", "allocs via a lock"
    );
    for &threads in &thread_counts {
        let mut rates = Vec::with_capacity(reps);
        let before = alloc.stats();
        for _ in 0..reps {
            let (p, a) = (pool.clone(), alloc.clone());
            let seconds = timed(threads, move |t| {
                let s = p.current_stream().expect("stream");
                if mixed {
                    let plan = Rng(0x51 + t as u64).s1a_plan(4096);
                    let mut window: Vec<Option<_>> = (0..4).map(|_| None).collect();
                    for i in 0..iters {
                        let (bytes, slot) = plan[i % plan.len()];
                        let buffer = a.alloc(bytes, s).expect("alloc");
                        drop(window[slot].replace(buffer));
                    }
                    return;
                }
                let mut live = Vec::with_capacity(8);
                for i in 0..iters {
                    for j in 0..8 {
                        live.push(a.alloc(SIZES[(i + j) & 7], s).expect("alloc"));
                    }
                    live.clear();
                }
            });
            let ops = if mixed { iters } else { iters * 16 };
            rates.push((threads * ops) as f64 / seconds / 1e6);
        }
        let after = alloc.stats();
        let allocs = after.allocs - before.allocs;
        let cached = after.thread_cache_hits - before.thread_cache_hits;
        rates.sort_by(f64::total_cmp);
        println!(
            "{threads:>7} {:>14.2} {:>14.2} {:>14.2} {:>17.1}%",
            rates[rates.len() / 2],
            rates[0],
            rates[rates.len() - 1],
            100.0 * (allocs - cached) as f64 / allocs as f64
        );
    }
    println!("{}", alloc.stats());
    Ok(())
}
