//! Dispatches and submits per forward pass of the default model on wgpu under each commit policy
//! (`auto`, `on`, `off`), with one caller's p50 latency and seq/s at batch 1 and 64. A benchmark, not a
//! test: `cargo run --release -p braid-wgpu --example forward_counts -- [SECONDS]` (default 2 per point;
//! `BRAID_WGPU_ADAPTER` picks the adapter, `BRAID_MODEL` the model). Many callers' figures per policy come
//! from `braid bench --device wgpu` with `BRAID_COMMIT_AND_CONTINUE` set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_model::{default_model_dir, BertModel, ModelDir};
use braid_runtime::{CommitPolicy, DType, Device, Runtime, RuntimeConfig};
use braid_wgpu::WgpuDevice;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: f64 = std::env::args().nth(1).map_or(Ok(2.0), |a| a.parse())?;
    let device = WgpuDevice::new()?;
    let runtime = Arc::new(Runtime::new(device.clone(), RuntimeConfig::default())?);
    let model = BertModel::load(
        runtime.clone(),
        &ModelDir::open(default_model_dir())?,
        DType::F32,
    )?;
    println!(
        "all-MiniLM-L6-v2 (f32) on {}; one caller, {seconds} s per point",
        device.describe()
    );
    println!("policy  batch  dispatches/forward  submits/forward     p50 ms      seq/s");
    let sentence = "A man is eating a piece of bread while the dog watches him closely.";
    for batch in [1usize, 64] {
        let texts = vec![sentence; batch];
        for policy in [CommitPolicy::Auto, CommitPolicy::On, CommitPolicy::Off] {
            runtime.streams().set_commit_policy(policy);
            model.embed(&texts)?; // warm-up: caches filled, pipelines used once
            let before = device.counters();
            let (start, mut latencies) = (Instant::now(), Vec::new());
            while start.elapsed() < Duration::from_secs_f64(seconds) || latencies.len() < 3 {
                let one = Instant::now();
                model.embed(&texts)?;
                latencies.push(one.elapsed().as_secs_f64() * 1e3);
            }
            let elapsed = start.elapsed().as_secs_f64();
            let after = device.counters();
            let forwards = latencies.len() as f64;
            latencies.sort_by(f64::total_cmp);
            println!(
                "{:<6} {batch:>6} {:>19.1} {:>16.1} {:>10.2} {:>10.1}",
                policy.to_string(),
                (after.dispatches - before.dispatches) as f64 / forwards,
                (after.submits - before.submits) as f64 / forwards,
                latencies[latencies.len() / 2],
                forwards * batch as f64 / elapsed,
            );
        }
    }
    Ok(())
}
