//! The engine on the CPU with the real model: golden fixture, results equal to single calls, faults
//! (bad input in a batch, out of memory mid-run), cancellation, overload and shutdown with requests
//! in flight.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use braid_engine::{Engine, EngineConfig, EngineError, Mode};
use braid_model::Encoding;
use braid_runtime::MemoryLimit;
use common::{assert_same, golden_cases, minilm, references, sentences};

fn config(mode: Mode) -> EngineConfig {
    EngineConfig {
        mode,
        ..EngineConfig::for_backend("cpu")
    }
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y).sum();
    let na: f64 = a.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn golden_fixture_through_the_engine_in_both_modes() {
    let (_runtime, model) = minilm();
    let cases = golden_cases();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    for mode in [Mode::Batched, Mode::Direct] {
        let engine = Engine::new(model.clone(), config(mode)).unwrap();
        assert_eq!(engine.mode(), mode);
        let embeddings = engine.embed(&texts).unwrap();
        for (case, embedding) in cases.iter().zip(&embeddings) {
            let cos = cosine(embedding, &case.embedding);
            assert!(cos >= 0.99999, "{mode}: cosine {cos} for {:?}", case.text);
        }
    }
}

#[test]
fn results_equal_single_calls_from_many_threads() {
    let (_runtime, model) = minilm();
    let texts = sentences();
    let want = references(&model, &texts);
    let engine = Engine::new(model, config(Mode::Batched)).unwrap();
    let barrier = Barrier::new(16);
    std::thread::scope(|s| {
        for t in 0..16 {
            let (engine, texts, want, barrier) = (&engine, &texts, &want, &barrier);
            s.spawn(move || {
                barrier.wait();
                for round in 0..4 {
                    let picks: Vec<usize> = (0..1 + (t + round) % 4)
                        .map(|k| (t * 7 + round * 5 + k * 3) % texts.len())
                        .collect();
                    let request: Vec<&str> = picks.iter().map(|&i| texts[i].as_str()).collect();
                    let got = engine.embed(&request).unwrap();
                    for (&i, embedding) in picks.iter().zip(&got) {
                        assert_same(embedding, &want[i], &format!("text {i}"));
                    }
                }
            });
        }
    });
    let stats = engine.stats();
    assert!(
        stats.mean_batch_size() > 1.0,
        "callers were batched: {stats:?}"
    );
}

#[test]
fn an_invalid_input_in_a_batch_fails_only_its_own_request() {
    let (_runtime, model) = minilm();
    let texts = sentences();
    let want = references(&model, &texts[..8]);
    let engine = Engine::new(
        model.clone(),
        EngineConfig {
            executors: 1,
            ..config(Mode::Batched)
        },
    )
    .unwrap();
    let tokenizer = &model.spec().tokenizer;
    let bad = Encoding {
        ids: vec![101, 999_999, 102],
        type_ids: vec![0; 3],
    };
    // Submit valid and invalid requests at once so they share batches.
    let futures: Vec<_> = (0..8)
        .map(|i| {
            let mut encodings = vec![tokenizer.encode(&texts[i]).unwrap()];
            if i == 3 {
                encodings.push(bad.clone());
            }
            engine.embed_encodings_async(encodings)
        })
        .collect();
    for (i, future) in futures.into_iter().enumerate() {
        let result = block_on(future);
        if i == 3 {
            let err = result.unwrap_err();
            assert!(err.to_string().contains("vocab_size"), "{err}");
        } else {
            assert_same(&result.unwrap()[0], &want[i], &format!("request {i}"));
        }
    }
}

#[test]
fn out_of_memory_mid_run_splits_batches_and_loses_nothing() {
    let (runtime, model) = minilm();
    // The longest test texts (100 to 256 tokens): batches of them need far more than the limit below.
    let mut texts = sentences();
    let tokenizer = &model.spec().tokenizer;
    texts.sort_by_key(|t| std::cmp::Reverse(tokenizer.encode(t).unwrap().ids.len()));
    texts.truncate(8);
    let want = references(&model, &texts);
    let engine = Engine::new(model, config(Mode::Batched)).unwrap();
    runtime.allocator().empty_cache().unwrap();
    // Room for the weights (~91 MB) and one or two long sequences' activations, not for a batch of 8.
    let weights = runtime.allocator().stats().allocated_bytes as u64;
    runtime
        .allocator()
        .set_memory_limit(MemoryLimit::Bytes(weights + (16 << 20)));
    let (ok, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for t in 0..8 {
            let (engine, texts, want, ok, failed) = (&engine, &texts, &want, &ok, &failed);
            s.spawn(move || {
                for round in 0..3 {
                    let picks: Vec<usize> = (0..6)
                        .map(|k| (t * 5 + round + k * 7) % texts.len())
                        .collect();
                    let request: Vec<&str> = picks.iter().map(|&i| texts[i].as_str()).collect();
                    match engine.embed(&request) {
                        Ok(got) => {
                            for (&i, embedding) in picks.iter().zip(&got) {
                                assert_same(embedding, &want[i], &format!("text {i}"));
                            }
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert!(e.is_out_of_memory(), "{e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    assert_eq!(
        ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed),
        24,
        "none lost"
    );
    assert!(ok.load(Ordering::Relaxed) > 0, "split batches succeeded");
    let stats = engine.stats();
    assert!(
        stats.split_batches > 0,
        "the limit forced splits: {stats:?}"
    );
    // The limit lifted, the engine serves everything again.
    runtime.allocator().set_memory_limit(MemoryLimit::None);
    let all: Vec<&str> = texts.iter().map(String::as_str).collect();
    for (i, (got, want)) in engine.embed(&all).unwrap().iter().zip(&want).enumerate() {
        assert_same(got, want, &format!("text {i} after the limit is lifted"));
    }
}

#[test]
fn a_dropped_future_costs_no_work_that_has_not_started() {
    let (_runtime, model) = minilm();
    let engine = Engine::new(
        model.clone(),
        EngineConfig {
            executors: 1,
            ..config(Mode::Batched)
        },
    )
    .unwrap();
    let long = "a long sentence keeps the one executor busy for a while ".repeat(20);
    let busy = engine.embed_async(&[long.as_str(); 32]);
    // Wait until the executor has taken the busy batch (the queue is empty again).
    while engine.queued_tokens() > 0 {
        std::thread::yield_now();
    }
    let cancelled = engine.embed_async(&["never run"; 5]);
    drop(cancelled);
    block_on(busy).unwrap();
    engine.embed(&["after"]).unwrap();
    let stats = engine.stats();
    assert_eq!(
        stats.sequences, 33,
        "the 5 cancelled sequences never ran: {stats:?}"
    );
}

#[test]
fn overload_is_a_clear_error_and_loses_no_accepted_request() {
    let (_runtime, model) = minilm();
    let texts = sentences();
    let want = references(&model, &texts);
    let engine = Engine::new(
        model,
        EngineConfig {
            executors: 1,
            max_batch_tokens: 256,
            max_queued_tokens: 600,
            ..config(Mode::Batched)
        },
    )
    .unwrap();
    let (ok, overloaded) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for t in 0..16 {
            let (engine, texts, want, ok, overloaded) = (&engine, &texts, &want, &ok, &overloaded);
            s.spawn(move || {
                let picks: Vec<usize> = (0..4).map(|k| (t * 3 + k * 11) % texts.len()).collect();
                let request: Vec<&str> = picks.iter().map(|&i| texts[i].as_str()).collect();
                match engine.embed(&request) {
                    Ok(got) => {
                        for (&i, embedding) in picks.iter().zip(&got) {
                            assert_same(embedding, &want[i], &format!("text {i}"));
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(EngineError::Overloaded { limit, .. }) => {
                        assert_eq!(limit, 600);
                        overloaded.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            });
        }
    });
    assert_eq!(
        ok.load(Ordering::Relaxed) + overloaded.load(Ordering::Relaxed),
        16
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(engine.queued_tokens(), 0);
}

#[test]
fn shutdown_finishes_accepted_requests_and_refuses_new_ones() {
    let (_runtime, model) = minilm();
    let texts = sentences();
    let want = references(&model, &texts);
    let engine = Arc::new(Engine::new(model, config(Mode::Batched)).unwrap());
    let (done, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let callers: Vec<_> = (0..12)
        .map(|t| {
            let (engine, texts, want) = (engine.clone(), texts.clone(), want.clone());
            let (done, refused) = (done.clone(), refused.clone());
            std::thread::spawn(move || {
                for round in 0..50 {
                    let i = (t * 13 + round * 7) % texts.len();
                    match engine.embed(&[texts[i].as_str()]) {
                        Ok(got) => {
                            assert_same(&got[0], &want[i], &format!("text {i}"));
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(EngineError::ShutDown) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    engine.shutdown();
    for caller in callers {
        caller.join().unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 0);
    assert!(matches!(
        engine.embed(&["late"]),
        Err(EngineError::ShutDown)
    ));
    assert_eq!(
        engine.queued_tokens(),
        0,
        "nothing accepted was left behind"
    );
}

#[test]
fn a_bad_configuration_is_refused_with_its_name() {
    let (_runtime, model) = minilm();
    let err = Engine::new(
        model,
        EngineConfig {
            executors: 0,
            ..config(Mode::Batched)
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("executors"), "{err}");
    assert!("sideways"
        .parse::<Mode>()
        .unwrap_err()
        .to_string()
        .contains("direct"));
}

/// Polls a future to completion on this thread (the tests need no async runtime).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}
