//! all-MiniLM-L6-v2 on the GPU against the golden fixture's float64 reference: fp32 single and batched
//! (cosine ≥ 0.99999, max abs ≤ 1e-4), 16 threads at once bit-identical to one thread (fp32 without
//! TF32), and fp16 / bf16 single and batched (cosine ≥ 0.999). Skips with a line saying so on a machine
//! without a CUDA driver.
//!
//! On a GPU machine without the repository around it, `BRAID_GOLDEN` names the fixture file and
//! `BRAID_MODEL` the model directory.

mod common;

use std::sync::Arc;

use braid_cuda::CudaDevice;
use braid_model::{default_model_dir, BertModel, ModelDir};
use braid_runtime::{DType, Runtime, RuntimeConfig, StreamPoolConfig};
use serde::Deserialize;

const MIN_COSINE: f64 = 0.99999;
const MAX_ABS_DIFF: f64 = 1e-4;
const MIN_COSINE_HALF: f64 = 0.999;
const THREADS: usize = 16;

#[derive(Deserialize)]
struct Case {
    text: String,
    embedding: Vec<f64>,
}

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

fn golden() -> Vec<Case> {
    let path = std::env::var("BRAID_GOLDEN").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../model/tests/fixtures/minilm-golden.json"
        )
        .into()
    });
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden fixture {path}: {e} (set BRAID_GOLDEN)"));
    serde_json::from_str::<Golden>(&text).unwrap().cases
}

fn minilm(device: CudaDevice, dtype: DType) -> BertModel<CudaDevice> {
    let config = RuntimeConfig {
        streams: StreamPoolConfig {
            worker_slots: THREADS + 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let runtime = Arc::new(Runtime::new(device, config).unwrap());
    let dir = ModelDir::open(default_model_dir()).expect("the model (set BRAID_MODEL)");
    BertModel::load(runtime, &dir, dtype).unwrap()
}

/// Cosine and largest absolute difference against the reference.
fn compare(got: &[f32], want: &[f64]) -> (f64, f64) {
    let (mut dot, mut gg, mut ww, mut max_abs) = (0f64, 0f64, 0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        let g = g as f64;
        dot += g * w;
        gg += g * g;
        ww += w * w;
        max_abs = max_abs.max((g - w).abs());
    }
    (dot / (gg.sqrt() * ww.sqrt()), max_abs)
}

#[test]
fn golden_embeddings_single_and_batched_and_sixteen_threads() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let model = Arc::new(minilm(device, DType::F32));
    let cases = Arc::new(golden());
    let single: Vec<Vec<f32>> = cases
        .iter()
        .map(|c| model.embed(&[c.text.as_str()]).unwrap().remove(0))
        .collect();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let batched = model.embed(&texts).unwrap();
    let (mut worst_cos, mut worst_abs) = (1f64, 0f64);
    for ((case, one), many) in cases.iter().zip(&single).zip(&batched) {
        for (label, got) in [("single", one), ("batched", many)] {
            let (cos, abs) = compare(got, &case.embedding);
            assert!(
                cos >= MIN_COSINE && abs <= MAX_ABS_DIFF,
                "{label} {:?}: cosine {cos:.8}, max abs {abs:.2e}",
                case.text
            );
            worst_cos = worst_cos.min(cos);
            worst_abs = worst_abs.max(abs);
        }
    }
    println!("fp32 on CUDA: min cosine {worst_cos:.9}, max abs diff {worst_abs:.2e} over 34 cases, single and batched");

    let single = Arc::new(single);
    // The test's own thread holds a lease from the runs above; the 16 threads' leases must all come back.
    let leased_before = model.runtime().streams().leased_slots();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (model, cases, single) = (model.clone(), cases.clone(), single.clone());
            std::thread::spawn(move || {
                (0..cases.len())
                    .map(|i| (i + t) % cases.len())
                    .filter(|&i| {
                        let got = model.embed(&[cases[i].text.as_str()]).unwrap().remove(0);
                        got.iter()
                            .map(|v| v.to_bits())
                            .ne(single[i].iter().map(|v| v.to_bits()))
                    })
                    .count()
            })
        })
        .collect();
    let differing: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(
        differing, 0,
        "embeddings differing from the single-thread run"
    );
    assert_eq!(
        model.runtime().streams().leased_slots(),
        leased_before,
        "every thread's slot came back"
    );
}

#[test]
fn golden_embeddings_in_fp16_and_bf16() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let cases = golden();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    for dtype in [DType::F16, DType::BF16] {
        let model = minilm(device.clone(), dtype);
        assert_eq!(model.dtype(), dtype);
        let batched = model.embed(&texts).unwrap();
        let (mut worst_cos, mut worst_abs) = (1f64, 0f64);
        for (case, many) in cases.iter().zip(&batched) {
            let one = model.embed(&[case.text.as_str()]).unwrap().remove(0);
            for (label, got) in [("single", &one), ("batched", many)] {
                let (cos, abs) = compare(got, &case.embedding);
                assert!(
                    cos >= MIN_COSINE_HALF,
                    "{dtype} {label} {:?}: cosine {cos:.6}, max abs {abs:.2e}",
                    case.text
                );
                worst_cos = worst_cos.min(cos);
                worst_abs = worst_abs.max(abs);
            }
        }
        println!("{dtype} on CUDA: min cosine {worst_cos:.6}, max abs diff {worst_abs:.2e} over 34 cases, single and batched");
    }
}
