//! Times each op of MiniLM's forward pass at one shape on the wgpu adapter (and the CPU backend beside
//! it): median of 5 runs of 10 ops each, synchronised. A benchmark, not a test:
//! `cargo run --release -p braid-wgpu --example op_times -- [ROWS]`.

use std::time::Instant;

use braid_runtime::cpu::CpuDevice;
use braid_runtime::ops::{Gelu, Ops};
use braid_runtime::{DType, Runtime, RuntimeConfig};
use braid_wgpu::WgpuDevice;

fn time<D: Ops>(rt: &Runtime<D>, what: &str, mut op: impl FnMut()) {
    let stream = rt.current_stream().unwrap();
    op();
    stream.synchronize().unwrap();
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..10 {
                op();
            }
            stream.synchronize().unwrap();
            start.elapsed().as_secs_f64() * 1e3 / 10.0
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    println!(
        "{:>5} {what:<28} {:>9.3} ms",
        rt.device().backend(),
        runs[2]
    );
}

fn ops<D: Ops>(rt: &Runtime<D>, rows: usize) {
    let x = rt.from_f32(&vec![0.1; rows * 384], &[rows, 384]).unwrap();
    let w_in = rt.from_f32(&vec![0.01; 1536 * 384], &[1536, 384]).unwrap();
    let w_qkv = rt.from_f32(&vec![0.01; 1152 * 384], &[1152, 384]).unwrap();
    let b = rt.from_f32(&vec![0.1; 1536], &[1536]).unwrap();
    let g = rt.from_f32(&vec![1.0; 384], &[384]).unwrap();
    let beta = rt.from_f32(&vec![0.0; 384], &[384]).unwrap();
    let mut h = rt.from_f32(&vec![0.1; rows * 1536], &[rows, 1536]).unwrap();
    let qkv = rt.from_f32(&vec![0.1; rows * 1152], &[rows, 1152]).unwrap();
    let mask = rt.from_f32(&vec![1.0; rows], &[1, rows]).unwrap();
    time(rt, "linear 384 -> 1536", || {
        drop(rt.linear(&x, &w_in, None).unwrap())
    });
    time(rt, "linear 384 -> 1152 (qkv)", || {
        drop(rt.linear(&x, &w_qkv, None).unwrap())
    });
    time(rt, "bias_gelu 1536", || {
        rt.bias_gelu(&mut h, &b, Gelu::Erf).unwrap()
    });
    time(rt, "layer_norm 384", || {
        drop(rt.layer_norm(&x, None, Some(&x), &g, &beta, 1e-12).unwrap())
    });
    time(rt, "attention 12 heads", || {
        drop(rt.attention(&qkv, &mask, 12).unwrap())
    });
}

fn main() {
    let rows: usize = std::env::args()
        .nth(1)
        .map_or(10, |a| a.parse().expect("ROWS"));
    let wgpu = Runtime::new(
        WgpuDevice::new().expect("a wgpu adapter"),
        RuntimeConfig::default(),
    )
    .unwrap();
    println!(
        "{} rows on {}",
        rows,
        braid_runtime::Device::describe(wgpu.device())
    );
    ops(&wgpu, rows);
    let cpu = Runtime::new(CpuDevice::new(), RuntimeConfig::default()).unwrap();
    ops(&cpu, rows);
    let _ = DType::F32;
}
