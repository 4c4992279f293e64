//! The engine on CUDA GPU 0 (the GPU machine): the golden fixture through the batched engine in f32,
//! and 16 callers' results equal to single calls. Skips, saying so, where there is no CUDA driver;
//! with `BRAID_REQUIRE_CUDA=1` a missing driver fails instead.

mod common;

use std::sync::Arc;

use braid_engine::{Engine, EngineConfig, Mode};
use braid_model::default_model_dir;
use braid_model::load::{load, DeviceChoice, Embedder, LoadOptions};
use braid_runtime::DType;
use common::{assert_close, golden_cases, references, sentences};

fn cuda_model() -> Option<Arc<dyn Embedder>> {
    let options = LoadOptions {
        device: DeviceChoice::Cuda { ordinal: 0 },
        dtype: DType::F32,
        callers: 16,
        ..LoadOptions::new(default_model_dir())
    };
    match load(&options) {
        Ok(model) => Some(model),
        Err(e) if std::env::var_os("BRAID_REQUIRE_CUDA").is_none() => {
            eprintln!("skipped: no CUDA driver ({e})");
            None
        }
        Err(e) => panic!("BRAID_REQUIRE_CUDA is set but CUDA is not usable: {e}"),
    }
}

#[test]
fn golden_and_sixteen_callers_through_the_engine_on_cuda() {
    let Some(model) = cuda_model() else { return };
    let engine = Engine::new(
        model.clone(),
        EngineConfig {
            mode: Mode::Batched,
            ..EngineConfig::for_backend(model.backend())
        },
    )
    .unwrap();
    let cases = golden_cases();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let mut worst = 1.0f64;
    for (case, got) in cases.iter().zip(engine.embed(&texts).unwrap()) {
        let dot: f64 = got
            .iter()
            .zip(&case.embedding)
            .map(|(&a, &b)| a as f64 * b)
            .sum();
        let norm: f64 = got.iter().map(|&a| a as f64 * a as f64).sum::<f64>().sqrt()
            * case.embedding.iter().map(|b| b * b).sum::<f64>().sqrt();
        worst = worst.min(dot / norm);
    }
    assert!(worst >= 0.99999, "golden min cosine {worst}");
    let sentences = sentences();
    let want = references(&model, &sentences);
    std::thread::scope(|s| {
        for t in 0..16 {
            let (engine, sentences, want) = (&engine, &sentences, &want);
            s.spawn(move || {
                for round in 0..20 {
                    let i = (t * 11 + round * 7) % sentences.len();
                    let got = engine.embed(&[sentences[i].as_str()]).unwrap();
                    assert_close(&got[0], &want[i], &format!("text {i}"));
                }
            });
        }
    });
    eprintln!("golden min cosine {worst:.9}; {:?}", engine.stats());
}
