//! The runtime's demonstration job (until `braid bench` exists): 1, 2, 4 … N threads each run an
//! encoder-shaped block (linear → bias+GELU → linear → residual layer norm) on their own leased stream,
//! then the table shows throughput and what the allocator and the stream pool did.
//!
//! `cargo run --release -p braid-runtime --example threads -- [MAX_THREADS] [ITERATIONS]`

use std::sync::Arc;
use std::time::Instant;

use braid_runtime::cpu::CpuDevice;
use braid_runtime::{Device, Runtime, RuntimeConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max_threads: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(cores);
    let iterations: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let (tokens, hidden, inner) = (128usize, 384usize, 1536usize);

    let rt = Arc::new(Runtime::new(CpuDevice::new(), RuntimeConfig::from_env()?)?);
    println!("device: {}", rt.device().describe());
    println!(
        "block: {tokens} tokens x {hidden} hidden, FFN {inner}; {iterations} iterations per thread"
    );
    println!(
        "{:>7} {:>12} {:>14} {:>10} {:>14} {:>12}",
        "threads", "blocks/s", "ms/block p50", "hit rate", "peak reserved", "slots used"
    );

    let mut threads = 1;
    while threads <= max_threads {
        let start = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let rt = rt.clone();
                std::thread::spawn(move || -> braid_runtime::Result<(Vec<f64>, f32, usize)> {
                    let init = |n: usize, seed: usize| {
                        (0..n)
                            .map(|i| (((i * 7 + seed) % 101) as f32 - 50.0) * 1e-3)
                            .collect::<Vec<_>>()
                    };
                    let w1 = rt.from_f32(&init(inner * hidden, 1), &[inner, hidden])?;
                    let b1 = rt.from_f32(&init(inner, 2), &[inner])?;
                    let w2 = rt.from_f32(&init(hidden * inner, 3), &[hidden, inner])?;
                    let b2 = rt.from_f32(&init(hidden, 4), &[hidden])?;
                    let gamma = rt.full(&[hidden], 1.0)?;
                    let beta = rt.full(&[hidden], 0.0)?;
                    let x = rt.from_f32(&init(tokens * hidden, t), &[tokens, hidden])?;
                    let mut times = Vec::with_capacity(iterations);
                    let mut checksum = 0.0;
                    for _ in 0..iterations {
                        let t0 = Instant::now();
                        let mut h = rt.linear(&x, &w1, None)?;
                        rt.bias_gelu(&mut h, &b1, braid_runtime::ops::Gelu::Erf)?;
                        let y = rt.linear(&h, &w2, Some(&b2))?;
                        drop(h);
                        let out = rt.layer_norm(&y, None, Some(&x), &gamma, &beta, 1e-12)?;
                        checksum = rt.to_vec_f32(&out)?[0];
                        times.push(t0.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok((times, checksum, rt.current_stream()?.index()))
                })
            })
            .collect();
        let mut times = Vec::new();
        let mut slots = std::collections::BTreeSet::new();
        for h in handles {
            let (t, _checksum, slot) = h.join().expect("worker panicked")?;
            times.extend(t);
            slots.insert(slot);
        }
        let elapsed = start.elapsed().as_secs_f64();
        times.sort_by(f64::total_cmp);
        let stats = rt.allocator().stats();
        println!(
            "{:>7} {:>12.1} {:>14.2} {:>9.1}% {:>11.1} MiB {:>12}",
            threads,
            (threads * iterations) as f64 / elapsed,
            times[times.len() / 2],
            stats.hit_rate() * 100.0,
            stats.peak_reserved_bytes as f64 / (1 << 20) as f64,
            slots.len()
        );
        threads *= 2;
    }
    let stats = rt.allocator().stats();
    println!("allocator: {stats}");
    println!(
        "stream slots leased now: {} of {}",
        rt.streams().leased_slots(),
        rt.streams().worker_slots()
    );
    Ok(())
}
