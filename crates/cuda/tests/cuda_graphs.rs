//! CUDA graphs (the device contract's optional capture, `braid_runtime::graph`, the model's bucket
//! graphs): a captured graph replays exactly what the plain path computes, its memory stays private
//! while other streams allocate and write, dropping it returns every byte and handle, and the model's
//! graph path matches its plain path (f32 within 1e-6, f16 close) and is freed with the model.
//! Skips with a line saying so on a machine without a CUDA driver; the model tests need
//! all-MiniLM-L6-v2 (`BRAID_MODEL`).

mod common;
#[path = "../../model/tests/common/mod.rs"]
mod model_common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use braid_cuda::{live_objects, CudaDevice};
use braid_model::{pad_batch, BertModel, ModelDir};
use braid_runtime::{DType, Runtime, RuntimeConfig, StreamPoolConfig, Tensor};
use model_common::golden_cases;

const N: usize = 96;

fn runtime(device: CudaDevice) -> Arc<Runtime<CudaDevice>> {
    let config = RuntimeConfig {
        streams: StreamPoolConfig {
            worker_slots: 17,
            ..Default::default()
        },
        ..Default::default()
    };
    Arc::new(Runtime::new(device, config).unwrap())
}

fn addr(t: &Tensor<CudaDevice>) -> u64 {
    t.buffer().raw().ptr()
}

/// `out = (x·Wᵀ + b + x)·Wᵀ`, recording the address of every tensor it allocates.
fn work(
    rt: &Runtime<CudaDevice>,
    x: &Tensor<CudaDevice>,
    w: &Tensor<CudaDevice>,
    b: &Tensor<CudaDevice>,
    seen: &mut Vec<u64>,
) -> braid_runtime::Result<Tensor<CudaDevice>> {
    let mut h = rt.linear(x, w, Some(b))?;
    rt.add_assign(&mut h, x)?;
    seen.push(addr(&h));
    let out = rt.linear(&h, w, None)?;
    seen.push(addr(&out));
    Ok(out)
}

fn values(seed: u32, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % 1000)
        .map(|v| v as f32 / 1000.0 - 0.5)
        .collect()
}

#[test]
fn a_graph_replays_the_plain_result_while_other_streams_allocate_and_write() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let graphs_at_start = live_objects().graphs;
    let rt = runtime(device);
    let streams = rt.streams();
    let _on_1 = streams
        .set_current_stream(streams.stream(1).unwrap())
        .unwrap();
    let w = rt.from_f32(&values(1, N * N), &[N, N]).unwrap();
    let b = rt.from_f32(&values(2, N), &[N]).unwrap();
    let baseline = rt.allocator().stats().allocated_bytes;

    let pool = rt.graph_pool().unwrap();
    let mut private = Vec::new();
    let x = rt
        .with_pool(&pool, || rt.empty(&[N, N], DType::F32))
        .unwrap();
    private.push(addr(&x));
    rt.write_u32(&x, &bits(&values(3, N * N))).unwrap();
    rt.with_pool(&pool, || work(&rt, &x, &w, &b, &mut private).map(drop))
        .unwrap();
    let (graph, out) = rt
        .capture(&pool, || work(&rt, &x, &w, &b, &mut private))
        .unwrap();
    assert_eq!(live_objects().graphs, graphs_at_start + 1);
    let private: HashSet<u64> = private.into_iter().collect();

    // Four threads on their own streams allocate the graph's sizes and fill them with NaN meanwhile.
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) || rounds < 50 {
                    let noise: Vec<_> = (0..4)
                        .map(|_| rt.full(&[N, N], f32::NAN).unwrap())
                        .collect();
                    for t in &noise {
                        assert!(
                            !private.contains(&addr(t)),
                            "another stream got a graph's block"
                        );
                    }
                    rounds += 1;
                }
                rt.synchronize().unwrap();
            });
        }
        for round in 0..200u32 {
            let input = values(100 + round, N * N);
            rt.write_u32(&x, &bits(&input)).unwrap();
            rt.replay(&graph).unwrap();
            let got = rt.to_vec_f32(&out).unwrap();
            // The plain path on the same stream, outside the pool.
            let plain_x = rt.from_f32(&input, &[N, N]).unwrap();
            let want = rt
                .to_vec_f32(&work(&rt, &plain_x, &w, &b, &mut Vec::new()).unwrap())
                .unwrap();
            assert!(
                got.iter()
                    .map(|v| v.to_bits())
                    .eq(want.iter().map(|v| v.to_bits())),
                "replay {round} differs from the plain path"
            );
        }
        stop.store(true, Ordering::Relaxed);
    });

    drop((graph, out, x));
    assert_eq!(
        live_objects().graphs,
        graphs_at_start,
        "the executable is destroyed"
    );
    drop(pool);
    rt.synchronize().unwrap();
    assert_eq!(
        rt.allocator().stats().allocated_bytes,
        baseline,
        "a dropped graph's pool and tensors return every byte"
    );
}

#[test]
fn a_failed_capture_is_an_error_and_the_stream_captures_again() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let rt = runtime(device);
    let w = rt.from_f32(&values(1, N * N), &[N, N]).unwrap();
    let b = rt.from_f32(&values(2, N), &[N]).unwrap();
    let x = rt.from_f32(&values(3, N * N), &[N, N]).unwrap();
    let pool = rt.graph_pool().unwrap();
    // Not warmed: the capture's first request misses the pool, which is an error, not a cuMemAlloc.
    let error = rt
        .capture(&pool, || work(&rt, &x, &w, &b, &mut Vec::new()))
        .unwrap_err()
        .to_string();
    assert!(error.contains("did not hold"), "{error}");
    rt.with_pool(&pool, || work(&rt, &x, &w, &b, &mut Vec::new()).map(drop))
        .unwrap();
    let (graph, out) = rt
        .capture(&pool, || work(&rt, &x, &w, &b, &mut Vec::new()))
        .unwrap();
    rt.replay(&graph).unwrap();
    let want = rt
        .to_vec_f32(&work(&rt, &x, &w, &b, &mut Vec::new()).unwrap())
        .unwrap();
    assert_eq!(rt.to_vec_f32(&out).unwrap(), want);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn minilm(rt: Arc<Runtime<CudaDevice>>, dtype: DType) -> BertModel<CudaDevice> {
    let dir =
        ModelDir::open(braid_model::default_model_dir()).expect("the model (set BRAID_MODEL)");
    BertModel::load(rt, &dir, dtype).unwrap()
}

#[test]
fn the_graph_path_matches_the_plain_path() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let cases = golden_cases();
    let tokenizer_model = minilm(runtime(device.clone()), DType::F32);
    let encodings: Vec<_> = cases
        .iter()
        .map(|c| {
            tokenizer_model
                .spec()
                .tokenizer
                .encode_batch(&[c.text.as_str()])
                .unwrap()
                .remove(0)
        })
        .collect();
    drop(tokenizer_model);
    for (dtype, tolerance) in [(DType::F32, 1e-6f32), (DType::F16, 2e-3)] {
        let model = minilm(runtime(device.clone()), dtype);
        assert!(model.graphs_enabled(), "graphs are on by default on CUDA");
        let pad = model.spec().config.pad_token_id;
        let mut worst = 0f32;
        let mut start = 0;
        for size in [1, 2, 3, 5, 8, 1, 7, 4, 1, 2] {
            let rows: Vec<_> = (0..size)
                .map(|k| encodings[(start + k) % encodings.len()].clone())
                .collect();
            start += size;
            let batch = pad_batch(&rows, pad);
            model.set_graphs(true);
            let graphed = model.embed_batch(&batch).unwrap();
            let again = model.embed_batch(&batch).unwrap();
            assert_eq!(graphed, again, "two replays of one batch are bit-identical");
            model.set_graphs(false);
            let plain = model.embed_batch(&batch).unwrap();
            for (g, p) in graphed.iter().flatten().zip(plain.iter().flatten()) {
                worst = worst.max((g - p).abs());
            }
        }
        let memory = model.graph_memory();
        println!("{dtype}: graph path vs plain path max abs diff {worst:.2e}; {memory:?}");
        assert!(worst <= tolerance, "{dtype}: {worst} > {tolerance}");
        assert!(memory.graphs >= 5, "{memory:?}");
    }
}

#[test]
fn graphs_are_freed_with_their_model() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let graphs_at_start = live_objects().graphs;
    let rt = runtime(device);
    let baseline = rt.allocator().stats().allocated_bytes;
    let model = Arc::new(minilm(rt.clone(), DType::F16));
    let texts = [
        "A man is eating food.",
        "A man is riding a horse on a beach at dawn, slowly.",
    ];
    let one = model.embed(&texts[..1]).unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..20 {
                    assert_eq!(model.embed(&texts[..1]).unwrap(), one);
                    model.embed(&texts).unwrap();
                }
            });
        }
    });
    let memory = model.graph_memory();
    println!("8 threads' graphs: {memory:?}");
    assert!(memory.graphs >= 8, "{memory:?}");
    assert_eq!(live_objects().graphs, graphs_at_start + memory.graphs);
    drop(model);
    assert_eq!(live_objects().graphs, graphs_at_start);
    assert_eq!(rt.allocator().stats().allocated_bytes, baseline);
}
