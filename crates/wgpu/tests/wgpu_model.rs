//! all-MiniLM-L6-v2 on wgpu, loaded through `braid_model::load` with `--device wgpu`'s choice, against
//! the golden fixture's float64 reference: f32 single and batched (cosine ≥ 0.99999, max abs ≤ 1e-4),
//! and 16 threads at once bit-identical to one thread; f16 batched (cosine ≥ 0.999) where the adapter
//! has `SHADER_F16`. Batches are the cases by length, eight at a
//! time (lavapipe computes on 2 CI cores: one batch padded to the longest case would take minutes),
//! and each of the 16 threads embeds [`PER_THREAD`] cases. Skips with a line saying so without an
//! adapter.

mod common;
#[path = "../../model/tests/common/mod.rs"]
mod model_common;

use std::sync::Arc;

use braid_model::load::{load, DeviceChoice, Embedder, LoadOptions};
use braid_runtime::ops::Ops;
use braid_runtime::DType;
use model_common::{assert_near_golden, differing_across_threads, golden_cases, minilm_dir, Case};

const MIN_COSINE: f64 = 0.99999;
const MAX_ABS_DIFF: f64 = 1e-4;
const MIN_COSINE_HALF: f64 = 0.999;
const THREADS: usize = 16;
/// Cases each of the 16 threads embeds.
const PER_THREAD: usize = 3;
/// Cases per batch, taken in order of length.
const BATCH: usize = 8;

/// Every case's embedding, the cases embedded [`BATCH`] at a time in order of length.
fn embed_by_length(model: &dyn Embedder, cases: &[Case]) -> Vec<Vec<f32>> {
    let mut by_length: Vec<usize> = (0..cases.len()).collect();
    by_length.sort_by_key(|&i| cases[i].ids.len());
    let mut batched = vec![Vec::new(); cases.len()];
    for chunk in by_length.chunks(BATCH) {
        let texts: Vec<&str> = chunk.iter().map(|&i| cases[i].text.as_str()).collect();
        for (&i, embedding) in chunk.iter().zip(model.embed(&texts).unwrap()) {
            batched[i] = embedding;
        }
    }
    batched
}

fn options(dtype: DType) -> LoadOptions {
    LoadOptions {
        device: DeviceChoice::Wgpu,
        dtype,
        callers: THREADS + 1,
        ..LoadOptions::new(minilm_dir().path())
    }
}

#[test]
fn golden_embeddings_single_and_batched_and_sixteen_threads() {
    if common::device_or_skip().is_none() {
        return;
    }
    let model: Arc<dyn Embedder> = load(&options(DType::F32)).unwrap();
    assert_eq!(model.backend(), "wgpu");
    let cases = Arc::new(golden_cases());
    let single: Vec<Vec<f32>> = cases
        .iter()
        .map(|c| model.embed(&[c.text.as_str()]).unwrap().remove(0))
        .collect();
    let batched = embed_by_length(&*model, &cases);
    let (mut worst_cos, mut worst_abs) = (1f64, 0f64);
    for (label, got) in [("single", &single), ("batched", &batched)] {
        let (cos, abs) = assert_near_golden(label, got, &cases, MIN_COSINE, MAX_ABS_DIFF);
        (worst_cos, worst_abs) = (worst_cos.min(cos), worst_abs.max(abs));
    }
    println!(
        "f32 on {}: min cosine {worst_cos:.9}, max abs diff {worst_abs:.2e} over {} cases, single and batched",
        model.device_description(),
        cases.len()
    );
    let differing = differing_across_threads(model, cases, Arc::new(single), THREADS, PER_THREAD);
    assert_eq!(
        differing, 0,
        "embeddings differing from the single-thread run"
    );
}

#[test]
fn golden_embeddings_in_fp16() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    if !device.compute_dtypes().contains(&DType::F16) {
        println!("f16 not checked: the adapter has no SHADER_F16");
        return;
    }
    let model = load(&options(DType::F16)).unwrap();
    assert_eq!(model.dtype(), DType::F16);
    let cases = golden_cases();
    let batched = embed_by_length(&*model, &cases);
    let (worst_cos, worst_abs) = assert_near_golden(
        "f16 batched",
        &batched,
        &cases,
        MIN_COSINE_HALF,
        f64::INFINITY,
    );
    println!(
        "f16 on {}: min cosine {worst_cos:.6}, max abs diff {worst_abs:.2e} over {} cases, batched",
        model.device_description(),
        cases.len()
    );
}
