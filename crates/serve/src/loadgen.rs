//! An HTTP load driver: [`run_load`] keeps `connections` HTTP/1.1 keep-alive connections busy for a
//! bounded time, each sending one request after another (a closed loop: the next request leaves when
//! the last response is read), every request `per_request` sentences of a corpus, to `POST /embed`
//! (TEI) or `POST /v1/embeddings` (OpenAI). It reports requests, sequences, failures and each
//! request's latency ([`LoadReport`]).
//!
//! With `expected` (each sentence's embedding from a single call), every response is parsed and
//! checked: one embedding per sentence sent, in order, each with cosine ≥ [`MATCH_COSINE`] to the
//! sentence's own — so a lost, duplicated or mixed-up result is a failure naming the sentence.
//! Without it (benchmarks), only the status is checked and the body is read but not parsed.
//!
//! Hand-written on hyper's client connection rather than taken from a load-testing crate: the ones
//! on crates.io (oha, goose) are programs with large dependency trees, not libraries a test can call,
//! and a closed loop of one connection per task is a few dozen lines. Loopback use only: it connects
//! to the address it is given, which callers take from a server they started.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// The least cosine between a response's embedding and the sentence's single-call embedding.
pub const MATCH_COSINE: f64 = 0.99999;

/// Failures kept word for word in a report (the rest are counted).
const KEPT_FAILURES: usize = 8;

/// Which API a load speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// TEI's `POST /embed`.
    Tei,
    /// OpenAI's `POST /v1/embeddings`.
    OpenAi,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Self::Tei => "/embed",
            Self::OpenAi => "/v1/embeddings",
        }
    }

    fn body(self, texts: &[&str]) -> Value {
        match self {
            Self::Tei => json!({ "inputs": texts }),
            Self::OpenAi => json!({ "input": texts, "model": "braid", "encoding_format": "float" }),
        }
    }

    /// The embeddings in a response body, in order.
    fn embeddings(self, body: &[u8]) -> Result<Vec<Vec<f32>>, String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
        let rows = match self {
            Self::Tei => value,
            Self::OpenAi => Value::Array(
                value["data"]
                    .as_array()
                    .ok_or("no `data` list")?
                    .iter()
                    .map(|item| item["embedding"].clone())
                    .collect(),
            ),
        };
        serde_json::from_value(rows).map_err(|e| format!("embeddings of the wrong shape: {e}"))
    }
}

/// What a load run does.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// The server (a loopback address).
    pub addr: SocketAddr,
    /// The API.
    pub route: Route,
    /// Concurrent connections, each with one request in flight at a time.
    pub connections: usize,
    /// How long requests keep being sent (the last ones finish after it).
    pub duration: Duration,
    /// The sentences requests are made of (cycled; each connection starts elsewhere).
    pub sentences: Arc<Vec<String>>,
    /// Sentences per request.
    pub per_request: usize,
    /// A Bearer key to send.
    pub api_key: Option<String>,
    /// Each sentence's expected embedding: check every response (module doc).
    pub expected: Option<Arc<HashMap<String, Vec<f32>>>>,
}

/// What a load run measured.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Requests answered 200 (and, when checked, correct).
    pub requests: u64,
    /// Sentences in them.
    pub sequences: u64,
    /// Requests that failed: a connection error, a status other than 200, a wrong result.
    pub failed: u64,
    /// The first few failures, word for word.
    pub failures: Vec<String>,
    /// Each successful request's latency, sorted.
    pub latencies: Vec<Duration>,
    /// From the first request to the last response.
    pub elapsed: Duration,
}

impl LoadReport {
    /// Sentences per second.
    pub fn sequences_per_second(&self) -> f64 {
        self.sequences as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile latency (`p` in 0..=100); zero when nothing succeeded.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p / 100.0 * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)]
    }

    fn fail(&mut self, failure: String) {
        self.failed += 1;
        if self.failures.len() < KEPT_FAILURES {
            self.failures.push(failure);
        }
    }

    fn merge(&mut self, other: Self) {
        self.requests += other.requests;
        self.sequences += other.sequences;
        self.failed += other.failed;
        let room = KEPT_FAILURES.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
        self.latencies.extend(other.latencies);
    }
}

/// Runs `spec` (module doc) and reports.
pub async fn run_load(spec: &LoadSpec) -> LoadReport {
    let start = Instant::now();
    let deadline = start + spec.duration;
    let tasks: Vec<_> = (0..spec.connections)
        .map(|index| tokio::spawn(connection(spec.clone(), index, deadline)))
        .collect();
    let mut report = LoadReport::default();
    for task in tasks {
        match task.await {
            Ok(part) => report.merge(part),
            Err(error) => report.fail(format!("a client task failed: {error}")),
        }
    }
    report.elapsed = start.elapsed();
    report.latencies.sort_unstable();
    report
}

/// One connection's closed loop until `deadline`; reconnects after a connection error.
async fn connection(spec: LoadSpec, index: usize, deadline: Instant) -> LoadReport {
    let mut report = LoadReport::default();
    let corpus = spec.sentences.len().max(1);
    let mut next = index.wrapping_mul(7919) % corpus;
    let mut sender = None;
    while Instant::now() < deadline {
        let texts: Vec<&str> = (0..spec.per_request)
            .map(|i| spec.sentences[(next + i) % corpus].as_str())
            .collect();
        next = (next + spec.per_request) % corpus;
        if sender.is_none() {
            match connect(spec.addr).await {
                Ok(connected) => sender = Some(connected),
                Err(error) => {
                    report.fail(format!("cannot connect: {error}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(client) = sender.as_mut() else {
            continue;
        };
        let start = Instant::now();
        match send(client, &spec, &texts).await {
            Ok((status, body)) => {
                let latency = start.elapsed();
                match check(&spec, status, &body, &texts) {
                    Ok(()) => {
                        report.requests += 1;
                        report.sequences += texts.len() as u64;
                        report.latencies.push(latency);
                    }
                    Err(failure) => report.fail(failure),
                }
            }
            Err(error) => {
                report.fail(format!("request failed: {error}"));
                sender = None;
            }
        }
    }
    report
}

/// Waits until `GET /health` at `addr` answers 200, polling every 50 ms, for at most `limit`.
pub async fn wait_ready(addr: SocketAddr, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    let mut last = String::from("no answer yet");
    while start.elapsed() < limit {
        match health(addr).await {
            Ok(StatusCode::OK) => return Ok(()),
            Ok(status) => last = format!("status {status}"),
            Err(error) => last = error,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "the server at {addr} was not ready after {limit:?} ({last})"
    ))
}

async fn health(addr: SocketAddr) -> Result<StatusCode, String> {
    let mut client = connect(addr).await?;
    let request = Request::builder()
        .uri("/health")
        .header(header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = client
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status())
}

async fn connect(addr: SocketAddr) -> Result<http1::SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn send(
    client: &mut http1::SendRequest<Full<Bytes>>,
    spec: &LoadSpec,
    texts: &[&str],
) -> Result<(StatusCode, Bytes), String> {
    let body = serde_json::to_vec(&spec.route.body(texts)).map_err(|e| e.to_string())?;
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(spec.route.path())
        .header(header::HOST, spec.addr.to_string())
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = &spec.api_key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    client.ready().await.map_err(|e| e.to_string())?;
    let response = client
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("the body broke off: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// A response's status, and when `expected` is given its embeddings (module doc).
fn check(spec: &LoadSpec, status: StatusCode, body: &[u8], texts: &[&str]) -> Result<(), String> {
    if status != StatusCode::OK {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    let Some(expected) = &spec.expected else {
        return Ok(());
    };
    let embeddings = spec.route.embeddings(body)?;
    if embeddings.len() != texts.len() {
        return Err(format!(
            "{} embeddings for {} sentences",
            embeddings.len(),
            texts.len()
        ));
    }
    for (text, embedding) in texts.iter().zip(&embeddings) {
        let want = expected
            .get(*text)
            .ok_or_else(|| format!("no expected embedding for {text:?}"))?;
        let similarity = cosine(want, embedding);
        if similarity.is_nan() || similarity < MATCH_COSINE {
            return Err(format!(
                "the embedding for {text:?} has cosine {similarity} to its single-call result \
                 (at least {MATCH_COSINE} expected)"
            ));
        }
    }
    Ok(())
}

/// The cosine of two vectors (0 when their lengths differ or one is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        0.0
    } else {
        dot / denominator
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_cosines() {
        let report = LoadReport {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            ..LoadReport::default()
        };
        assert_eq!(report.percentile(50.0), Duration::from_millis(51));
        assert_eq!(report.percentile(99.0), Duration::from_millis(99));
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn both_apis_bodies_parse_to_embeddings() {
        let tei = br#"[[0.5, 1.0], [2.0, 3.0]]"#;
        assert_eq!(Route::Tei.embeddings(tei).unwrap()[1], [2.0, 3.0]);
        let openai = br#"{"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [1.0]}]}"#;
        assert_eq!(Route::OpenAi.embeddings(openai).unwrap(), [[1.0]]);
    }
}
