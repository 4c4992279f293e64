//! `braid serve` under load on loopback, bounded in time: 256 concurrent clients, every response
//! checked against its sentences' single-call results (nothing lost, duplicated or mixed up); then
//! SIGTERM with requests in flight: each gets a full response or a clean connection error, never a
//! truncated body, and the server exits 0.

mod serve_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use braid_serve::loadgen::{run_load, LoadReport, LoadSpec, Route};
use serde_json::json;
use serve_support::{post_json, Server};

/// The bench corpus: real sentences of 7–60 tokens.
const SENTENCES: &str = include_str!("../data/sentences.txt");

fn sentences() -> Arc<Vec<String>> {
    Arc::new(
        SENTENCES
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// Each sentence's embedding from a request of its own.
fn single_calls(server: &Server, sentences: &[String]) -> Arc<HashMap<String, Vec<f32>>> {
    Arc::new(
        sentences
            .iter()
            .map(|text| {
                let (status, body) =
                    post_json(server.addr, "/embed", &json!({ "inputs": text }), None);
                assert_eq!(status, 200, "{body}");
                (
                    text.clone(),
                    serde_json::from_value(body[0].clone()).unwrap(),
                )
            })
            .collect(),
    )
}

fn load(spec: &LoadSpec) -> LoadReport {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_load(spec))
}

#[test]
fn many_concurrent_clients_each_get_exactly_their_own_embeddings() {
    let server = Server::start(&[]);
    let sentences = sentences();
    let expected = single_calls(&server, &sentences);
    for (route, per_request) in [(Route::Tei, 3), (Route::OpenAi, 2)] {
        let report = load(&LoadSpec {
            addr: server.addr,
            route,
            connections: 256,
            duration: Duration::from_secs(2),
            sentences: sentences.clone(),
            per_request,
            api_key: None,
            expected: Some(expected.clone()),
        });
        assert_eq!(report.failed, 0, "{route:?}: {:?}", report.failures);
        assert!(
            report.requests >= 256,
            "{route:?}: only {} requests",
            report.requests
        );
        println!(
            "{route:?}: {} requests of {per_request} sentences, {:.0} seq/s, p99 {:?}",
            report.requests,
            report.sequences_per_second(),
            report.percentile(99.0)
        );
    }
}

#[test]
fn sigterm_with_requests_in_flight_ends_each_cleanly_and_exits_0() {
    let mut server = Server::start(&[]);
    let sentences = sentences();
    let expected = single_calls(&server, &sentences);
    let spec = LoadSpec {
        addr: server.addr,
        route: Route::Tei,
        connections: 64,
        duration: Duration::from_secs(4),
        sentences,
        per_request: 4,
        api_key: None,
        expected: Some(expected),
    };
    let loader = std::thread::spawn(move || load(&spec));
    std::thread::sleep(Duration::from_millis(1500));
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(60));
    let report = loader.join().expect("the load thread does not panic");
    assert!(status.success(), "exit status {status:?}: {}", server.log());
    assert!(report.requests > 0, "nothing was served before the signal");
    // Allowed: a connection refused or closed between requests, or a 503 from a request that came in
    // as the server stopped. Not allowed: a body cut short, or a wrong result.
    for failure in &report.failures {
        let clean = failure.starts_with("cannot connect")
            || (failure.starts_with("request failed") && !failure.contains("body broke off"))
            || failure.starts_with("status 503");
        assert!(clean, "not a clean ending: {failure}");
    }
    println!(
        "{} requests served, {} ended by the shutdown, e.g. {:?}",
        report.requests,
        report.failed,
        report.failures.first()
    );
    assert!(server.log().contains("SIGTERM"), "{}", server.log());
}
