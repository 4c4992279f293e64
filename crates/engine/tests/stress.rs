//! 64 callers of mixed request sizes and lengths for 10 s, plus callers created and ending all along:
//! every result of every request is checked against the single call for its text — nothing lost,
//! duplicated or mixed up.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use braid_engine::{Engine, EngineConfig, Mode};
use common::{assert_same, minilm, next, references, sentences};

const CALLERS: usize = 64;
const SECONDS: u64 = 10;

#[test]
fn sixty_four_callers_and_churn_get_exactly_their_own_results() {
    let (_runtime, model) = minilm();
    let texts = sentences();
    let want = references(&model, &texts);
    let engine = Engine::new(
        model,
        EngineConfig {
            mode: Mode::Batched,
            executors: 2,
            ..EngineConfig::for_backend("cpu")
        },
    )
    .unwrap();
    let stop = AtomicBool::new(false);
    let (requests, sequences, churned) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    // One caller's loop: requests of 1 to 4 texts, chosen by its own generator, each result checked.
    let caller = |seed: u64, rounds: Option<usize>| {
        let mut rng = seed | 1;
        let mut round = 0;
        while !stop.load(Ordering::Relaxed) && rounds.is_none_or(|r| round < r) {
            let count = 1 + next(&mut rng) as usize % 4;
            let picks: Vec<usize> = (0..count)
                .map(|_| next(&mut rng) as usize % texts.len())
                .collect();
            let request: Vec<&str> = picks.iter().map(|&i| texts[i].as_str()).collect();
            let got = engine.embed(&request).unwrap();
            assert_eq!(got.len(), picks.len(), "one result per text");
            for (&i, embedding) in picks.iter().zip(&got) {
                assert_same(embedding, &want[i], &format!("text {i}"));
            }
            requests.fetch_add(1, Ordering::Relaxed);
            sequences.fetch_add(count, Ordering::Relaxed);
            round += 1;
        }
    };
    std::thread::scope(|s| {
        for t in 0..CALLERS {
            let caller = &caller;
            s.spawn(move || caller(t as u64 * 0x9E37_79B9, None));
        }
        // Churn: short-lived callers, a few requests each, started all along.
        let (caller, stop, churned) = (&caller, &stop, &churned);
        s.spawn(move || {
            let mut seed = 1u64;
            while !stop.load(Ordering::Relaxed) {
                seed += 1;
                std::thread::spawn(move || seed).join().unwrap();
                std::thread::scope(|inner| {
                    inner.spawn(move || caller(seed * 7919, Some(2)));
                });
                churned.fetch_add(1, Ordering::Relaxed);
            }
        });
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(SECONDS) {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let stats = engine.stats();
    let sequences = sequences.load(Ordering::Relaxed) as u64;
    assert_eq!(
        stats.sequences, sequences,
        "every sequence ran exactly once: {stats:?}"
    );
    assert_eq!(stats.failed_batches, 0);
    assert!(churned.load(Ordering::Relaxed) > 0, "callers were churned");
    assert!(
        stats.mean_batch_size() > 1.5,
        "callers were batched: {stats:?}"
    );
    assert_eq!(engine.queued_tokens(), 0);
    eprintln!(
        "{} requests, {sequences} sequences in {} batches (mean {:.1}, padding {:.0} %), {} churned callers",
        requests.load(Ordering::Relaxed),
        stats.batches,
        stats.mean_batch_size(),
        stats.padding_share() * 100.0,
        churned.load(Ordering::Relaxed)
    );
}
