//! Times each kernel of MiniLM's forward pass on the wgpu adapter at the shapes of a batch: per op,
//! the host's time to encode it and the time per op of `REPS` ops encoded back to back in one submit
//! (commit policy `off`) and synchronised — the device's time once it exceeds the encoding — median
//! of 5 runs, with GFLOP/s for the products. A benchmark, not a test:
//! `cargo run --release -p braid-wgpu --example op_times -- [BATCHxSEQ ...] [f16]` (default `1x12
//! 64x20`); `BRAID_WGPU_GEMM=small|64|128` forces one GEMM kernel (the tuning knob of the `ops` module).

use std::time::Instant;

use braid_runtime::ops::Gelu;
use braid_runtime::{CommitPolicy, DType, Runtime, RuntimeConfig};
use braid_wgpu::WgpuDevice;

const REPS: usize = 50;

/// (encode µs per op, total µs per op): medians of 5 runs.
fn time(rt: &Runtime<WgpuDevice>, mut op: impl FnMut()) -> (f64, f64) {
    let stream = rt.current_stream().unwrap();
    op();
    stream.synchronize().unwrap();
    let mut runs: Vec<(f64, f64)> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..REPS {
                op();
            }
            let encoded = start.elapsed().as_secs_f64();
            stream.synchronize().unwrap();
            let total = start.elapsed().as_secs_f64();
            (encoded * 1e6 / REPS as f64, total * 1e6 / REPS as f64)
        })
        .collect();
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    runs[2]
}

fn report(what: &str, flops: f64, (encode, total): (f64, f64)) {
    let rate = match flops {
        0.0 => String::new(),
        _ => format!("{:>9.0} GFLOP/s", flops / total / 1e3),
    };
    println!("  {what:<34} encode {encode:>7.1} us   total {total:>8.1} us {rate}");
}

fn shapes(rt: &Runtime<WgpuDevice>, batch: usize, seq: usize, dtype: DType) {
    let rows = batch * seq;
    let up = |data: Vec<f32>, shape: &[usize]| rt.from_f32_as(&data, shape, dtype).unwrap();
    let x = up(vec![0.1; rows * 384], &[rows, 384]);
    let wide = up(vec![0.1; rows * 1536], &[rows, 1536]);
    let qkv = up(vec![0.1; rows * 1152], &[rows, 1152]);
    let mask = rt.from_f32(&vec![1.0; rows], &[batch, seq]).unwrap();
    let g = up(vec![1.0; 384], &[384]);
    let beta = up(vec![0.0; 384], &[384]);
    let b = up(vec![0.1; 1536], &[1536]);
    println!("{batch} x {seq} = {rows} tokens, {dtype}");
    for (name, n, k) in [
        ("linear 384 -> 1152 (qkv)", 1152, 384),
        ("linear 384 -> 384 (attn out)", 384, 384),
        ("linear 384 -> 1536 (ffn in)", 1536, 384),
        ("linear 1536 -> 384 (ffn out)", 384, 1536),
    ] {
        let w = up(vec![0.01; n * k], &[n, k]);
        let input = if k == 384 { &x } else { &wide };
        let flops = 2.0 * (rows * n * k) as f64;
        report(
            name,
            flops,
            time(rt, || drop(rt.linear(input, &w, None).unwrap())),
        );
    }
    let flops = 4.0 * (batch * 12 * seq * seq * 32) as f64;
    report(
        "attention 12 x 32",
        flops,
        time(rt, || drop(rt.attention(&qkv, &mask, 12).unwrap())),
    );
    let ln = || {
        drop(
            rt.layer_norm(&x, Some(&g), Some(&x), &g, &beta, 1e-12)
                .unwrap(),
        )
    };
    report("layer_norm 384 + bias + residual", 0.0, time(rt, ln));
    let mut h = up(vec![0.1; rows * 1536], &[rows, 1536]);
    report(
        "bias_gelu 1536",
        0.0,
        time(rt, || rt.bias_gelu(&mut h, &b, Gelu::Erf).unwrap()),
    );
}

fn main() {
    let device = WgpuDevice::new().expect("a wgpu adapter");
    let rt = Runtime::new(device, RuntimeConfig::default()).unwrap();
    rt.streams().set_commit_policy(CommitPolicy::Off);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dtype = match args.iter().any(|a| a == "f16") {
        true => DType::F16,
        false => DType::F32,
    };
    let mut configs: Vec<(usize, usize)> = (args.iter())
        .filter_map(|a| a.split_once('x'))
        .map(|(b, s)| (b.parse().expect("BATCH"), s.parse().expect("SEQ")))
        .collect();
    if configs.is_empty() {
        configs = vec![(1, 12), (64, 20)];
    }
    println!(
        "{} ({REPS} ops a run)",
        braid_runtime::Device::describe(rt.device())
    );
    for (batch, seq) in configs {
        shapes(&rt, batch, seq, dtype);
    }
}
