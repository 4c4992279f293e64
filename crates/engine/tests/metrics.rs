//! The engine's metrics reach an installed recorder (its own test binary: the recorder is global).

mod common;

use braid_engine::{Engine, EngineConfig, EngineError, Mode};
use common::minilm;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[test]
fn batches_queue_and_errors_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("no other recorder in this binary");

    let (_runtime, model) = minilm();
    let engine = Engine::new(
        model,
        EngineConfig {
            mode: Mode::Batched,
            max_batch_tokens: 64,
            max_queued_tokens: 64,
            executors: 1,
            ..EngineConfig::for_backend("cpu")
        },
    )
    .unwrap();
    engine.embed(&["one sentence", "and another one"]).unwrap();
    // One executor busy with A, B waiting in the queue: C does not fit and is refused.
    let long = "word ".repeat(100);
    let a = engine.embed_async(&[long.as_str(); 4]);
    while engine.queued_tokens() > 0 {
        std::thread::yield_now();
    }
    let b = engine.embed_async(&[long.as_str()]);
    let refused = matches!(
        engine.embed(&[long.as_str()]),
        Err(EngineError::Overloaded { .. })
    );
    drop((a, b));

    let snapshot = snapshotter.snapshot().into_vec();
    let has = |name: &str| snapshot.iter().any(|(key, ..)| key.key().name() == name);
    for name in [
        "braid_engine_batch_size",
        "braid_engine_batch_tokens",
        "braid_engine_padding_share",
        "braid_engine_queue_wait_seconds",
        "braid_engine_forward_seconds",
        "braid_engine_queued_tokens",
        "braid_engine_device_healthy",
        "braid_engine_device_inflight_tokens",
        "braid_engine_device_batches_total",
        "braid_engine_device_sequences_total",
    ] {
        assert!(has(name), "{name} was not recorded");
    }
    let batches: usize = snapshot
        .iter()
        .filter(|(key, ..)| key.key().name() == "braid_engine_batch_size")
        .map(|(.., value)| match value {
            DebugValue::Histogram(values) => values.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(
        batches as u64,
        engine.stats().batches,
        "one sample per batch"
    );
    assert!(refused, "C found B queued and was refused");
    let device_batches: u64 = snapshot
        .iter()
        .filter(|(key, ..)| {
            key.key().name() == "braid_engine_device_batches_total"
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == "device" && l.value() == "cpu")
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum();
    assert_eq!(
        device_batches,
        engine.stats().batches,
        "per device, labelled"
    );
    assert!(snapshot.iter().any(|(key, ..)| {
        key.key().name() == "braid_engine_errors_total"
            && key.key().labels().any(|l| l.value() == "overloaded")
    }));
}
