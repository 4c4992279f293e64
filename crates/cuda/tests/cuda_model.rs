//! all-MiniLM-L6-v2 on the GPU against the golden fixture's float64 reference: fp32 single, in one
//! packed batch and in one padded batch (cosine ≥ 0.99999, max abs ≤ 1e-4; packed within 1e-6 of
//! padded; single cases replay CUDA graphs), 16 threads at once, on graphs, bit-identical to one thread
//! (fp32 without TF32), and fp16 / bf16 the same three ways (cosine ≥ 0.999). Skips with a line saying
//! so on a machine
//! without a CUDA driver.
//!
//! On a GPU machine without the repository around it, `BRAID_GOLDEN` names the fixture file and
//! `BRAID_MODEL` the model directory.

mod common;
#[path = "../../model/tests/common/mod.rs"]
mod model_common;

use std::sync::Arc;

use braid_cuda::CudaDevice;
use braid_model::load::Embedder;
use braid_model::{default_model_dir, pack_batch, pad_batch, BertModel, ModelDir};
use braid_runtime::{DType, Runtime, RuntimeConfig, StreamPoolConfig};
use model_common::{assert_near_golden, differing_across_threads, golden_cases};

const MIN_COSINE: f64 = 0.99999;
const MAX_ABS_DIFF: f64 = 1e-4;
const MIN_COSINE_HALF: f64 = 0.999;
const THREADS: usize = 16;

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

/// Each case alone, then all of them in one packed batch and in one padded batch.
fn single_packed_padded(model: &dyn Embedder, texts: &[&str]) -> [Vec<Vec<f32>>; 3] {
    let single = (texts.iter())
        .map(|t| model.embed(&[t]).unwrap().remove(0))
        .collect();
    let encodings = model.spec().tokenizer.encode_batch(texts).unwrap();
    let pad = model.spec().config.pad_token_id;
    [
        single,
        model.embed_packed(&pack_batch(&encodings, pad)).unwrap(),
        model.embed_batch(&pad_batch(&encodings, pad)).unwrap(),
    ]
}

/// The largest |a - b| over every element of two sets of embeddings.
fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn golden_embeddings_single_and_batched_and_sixteen_threads() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let graphed = Arc::new(minilm(device, DType::F32));
    let model: Arc<dyn Embedder> = graphed.clone();
    let cases = Arc::new(golden_cases());
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let [single, packed, padded] = single_packed_padded(&*model, &texts);
    let (mut worst_cos, mut worst_abs) = (1f64, 0f64);
    for (label, got) in [
        ("single", &single),
        ("packed", &packed),
        ("padded", &padded),
    ] {
        let (cos, abs) = assert_near_golden(label, got, &cases, MIN_COSINE, MAX_ABS_DIFF);
        (worst_cos, worst_abs) = (worst_cos.min(cos), worst_abs.max(abs));
    }
    let layouts = max_abs_diff(&packed, &padded);
    assert!(
        layouts <= 1e-6,
        "packed vs padded: max abs diff {layouts:.2e}"
    );
    println!("fp32 on CUDA: min cosine {worst_cos:.9}, max abs diff {worst_abs:.2e} over 34 cases, single, packed and padded; packed vs padded {layouts:.2e}");
    // One case at a time is batch 1: those ran as CUDA graphs (the batches of 34 did not).
    assert!(
        graphed.graph_memory().graphs > 0,
        "single cases replay graphs"
    );
    // Every thread embeds every case, one at a time, each starting at its own.
    let per_thread = cases.len();
    let differing = differing_across_threads(model, cases, Arc::new(single), THREADS, per_thread);
    assert_eq!(
        differing, 0,
        "embeddings differing from the single-thread run"
    );
    println!("16 threads: {:?}", graphed.graph_memory());
    assert!(
        graphed.graph_memory().graphs > THREADS,
        "every thread replayed graphs of its own"
    );
}

#[test]
fn golden_embeddings_in_fp16_and_bf16() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let cases = golden_cases();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    for dtype in [DType::F16, DType::BF16] {
        let model = minilm(device.clone(), dtype);
        assert_eq!(model.dtype(), dtype);
        let [single, packed, padded] = single_packed_padded(&model, &texts);
        let (mut worst_cos, mut worst_abs) = (1f64, 0f64);
        for (label, got) in [
            ("single", &single),
            ("packed", &packed),
            ("padded", &padded),
        ] {
            let label = format!("{dtype} {label}");
            let (cos, abs) =
                assert_near_golden(&label, got, &cases, MIN_COSINE_HALF, f64::INFINITY);
            (worst_cos, worst_abs) = (worst_cos.min(cos), worst_abs.max(abs));
        }
        println!("{dtype} on CUDA: min cosine {worst_cos:.6}, max abs diff {worst_abs:.2e} over 34 cases, single, packed and padded");
    }
}
