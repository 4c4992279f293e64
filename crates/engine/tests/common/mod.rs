//! Helpers shared by the engine's tests: the real model on a CPU runtime the test can reach (for its
//! memory limit), the golden fixture, and a pool of test sentences of mixed lengths.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use braid_model::load::Embedder;
use braid_model::{default_model_dir, BertModel, ModelDir};
use braid_runtime::cpu::CpuDevice;
use braid_runtime::{DType, ExhaustionPolicy, Runtime, RuntimeConfig, StreamPoolConfig};
use serde::Deserialize;

/// MiniLM on a CPU runtime with 64 worker slots (waiting for one when all are leased), and the
/// runtime itself.
pub fn minilm() -> (Arc<Runtime<CpuDevice>>, Arc<dyn Embedder>) {
    let dir = ModelDir::open(default_model_dir()).unwrap_or_else(|e| {
        panic!(
            "these tests need all-MiniLM-L6-v2 ({e}); run `cargo run --release -p braid-cli -- \
             fetch-model` from the repository root first"
        )
    });
    let config = RuntimeConfig {
        streams: StreamPoolConfig {
            worker_slots: 64,
            exhaustion: ExhaustionPolicy::Wait(Duration::from_secs(60)),
            ..Default::default()
        },
        ..Default::default()
    };
    let runtime = Arc::new(Runtime::new(CpuDevice::new(), config).unwrap());
    let model = BertModel::load(runtime.clone(), &dir, DType::F32).unwrap();
    (runtime, Arc::new(model))
}

/// One case of the golden fixture.
#[derive(Deserialize)]
pub struct Case {
    pub text: String,
    pub embedding: Vec<f64>,
}

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

/// The golden fixture's cases (shipped in crates/model/tests/fixtures; `BRAID_GOLDEN` names another
/// copy, for test binaries run away from the source tree).
pub fn golden_cases() -> Vec<Case> {
    let path = std::env::var("BRAID_GOLDEN").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../model/tests/fixtures/minilm-golden.json"
        )
        .to_string()
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str::<Golden>(&text).unwrap().cases
}

/// Test sentences of mixed lengths (3 to ~200 tokens): the fixture's texts and longer repeats.
pub fn sentences() -> Vec<String> {
    let mut texts: Vec<String> = golden_cases().into_iter().map(|c| c.text).collect();
    let short: Vec<String> = texts.iter().take(8).cloned().collect();
    for (i, text) in short.iter().enumerate() {
        texts.push(format!("{text} ").repeat(2 + i * 2));
    }
    texts
}

/// The single-call embedding of every text (direct, one text per call): what every engine result
/// must equal.
pub fn references(model: &Arc<dyn Embedder>, texts: &[String]) -> Vec<Vec<f32>> {
    texts
        .iter()
        .map(|t| model.embed(&[t.as_str()]).unwrap().remove(0))
        .collect()
}

/// xorshift64*: a deterministic per-thread choice generator.
pub fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Asserts `got` equals the single-call `want` bit for bit: on the CPU a sequence's embedding does not
/// depend on the batch it ran in (the CPU GEMM gives every element the same arithmetic whatever the
/// product's shape), so batching across callers changes nothing.
pub fn assert_same(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: component {i} is {} where its single call gave {}",
            got[i], want[i]
        );
    }
}

/// Asserts `got` equals the single-call `want` within 1e-6 per component: on CUDA, cuBLAS picks its
/// kernels (and so its summation order) by the product's shape, so a sequence's last bits follow the
/// batch it ran in.
pub fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-6,
        "{what}: differs from its single call by {worst}"
    );
}
