//! `braid serve` end to end on the default model (f32, CPU): both APIs give the golden fixture's
//! vectors and the same vectors as each other; every kind of bad input gets a 4xx in its API's error
//! shape, and the server keeps serving after each; a client that sends its headers slowly and stops
//! loses its connection after `--header-timeout`.

mod serve_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use braid_serve::loadgen::cosine;
use serde_json::{json, Value};
use serve_support::{golden, post_json, request, Server};

const KEY: &str = "test-key-0123";

/// The least cosine to the float64 golden vectors (f32 on the CPU).
const GOLDEN_COSINE: f64 = 0.99999;

fn floats(value: &Value) -> Vec<f32> {
    serde_json::from_value(value.clone()).expect("a list of numbers")
}

#[test]
fn both_apis_return_the_golden_vectors_and_agree() {
    // The fixture's longest text is over max_seq_length: sentence-transformers truncates it.
    let server = Server::start(&["--api-key", KEY, "--auto-truncate"]);
    let cases = golden();
    for chunk in cases.chunks(16) {
        let texts: Vec<&str> = chunk.iter().map(|c| c.0.as_str()).collect();
        let (status, tei) = post_json(
            server.addr,
            "/embed",
            &json!({ "inputs": texts }),
            Some(KEY),
        );
        assert_eq!(status, 200, "{tei}");
        let (status, openai) = post_json(
            server.addr,
            "/v1/embeddings",
            &json!({ "input": texts, "model": "all-MiniLM-L6-v2" }),
            Some(KEY),
        );
        assert_eq!(status, 200, "{openai}");
        let ids: Vec<&Vec<u32>> = chunk.iter().map(|c| &c.1).collect();
        let (status, by_ids) = post_json(
            server.addr,
            "/v1/embeddings",
            &json!({ "input": ids }),
            Some(KEY),
        );
        assert_eq!(status, 200, "{by_ids}");
        let tokens: usize = chunk.iter().map(|c| c.1.len()).sum();
        assert_eq!(openai["usage"]["prompt_tokens"], tokens);
        for (i, (text, _, want)) in chunk.iter().enumerate() {
            let from_tei = floats(&tei[i]);
            let from_openai = floats(&openai["data"][i]["embedding"]);
            let from_ids = floats(&by_ids["data"][i]["embedding"]);
            assert_eq!(openai["data"][i]["index"], i);
            for (api, got) in [
                ("tei", &from_tei),
                ("openai", &from_openai),
                ("ids", &from_ids),
            ] {
                let similarity = cosine(want, got);
                assert!(
                    similarity >= GOLDEN_COSINE,
                    "{api} {text:?}: cosine {similarity}"
                );
            }
            assert!(
                cosine(&from_tei, &from_openai) >= 0.999_999,
                "{text:?}: the APIs differ"
            );
        }
    }
    // /tokenize gives the fixture's ids, which embed as the text does.
    let (status, tokens) = post_json(
        server.addr,
        "/tokenize",
        &json!({ "inputs": [cases[0].0] }),
        Some(KEY),
    );
    assert_eq!(status, 200, "{tokens}");
    let ids: Vec<u32> = tokens[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, cases[0].1);
    // base64 and dimensions: the same vector, as little-endian f32; shortened ones renormalised.
    let (status, b64) = post_json(
        server.addr,
        "/v1/embeddings",
        &json!({ "input": cases[0].0, "encoding_format": "base64", "dimensions": 8 }),
        Some(KEY),
    );
    assert_eq!(status, 200, "{b64}");
    let encoded = b64["data"][0]["embedding"].as_str().unwrap();
    assert_eq!(encoded.len(), 44, "8 f32 values: 32 bytes of base64");
    let (_, info) = (
        0,
        request(
            server.addr,
            "GET",
            "/info",
            &[("Authorization", &format!("Bearer {KEY}"))],
            b"",
        )
        .unwrap(),
    );
    let info: Value = serde_json::from_slice(&info.1).unwrap();
    assert_eq!(
        (info["dimension"].clone(), info["max_input_length"].clone()),
        (json!(384), json!(256))
    );
}

/// One bad request and what it must get back.
struct Case {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    body: Vec<u8>,
    key: Option<&'static str>,
    status: u16,
}

fn case(what: &'static str, path: &'static str, body: impl Into<Vec<u8>>, status: u16) -> Case {
    Case {
        what,
        method: "POST",
        path,
        body: body.into(),
        key: Some(KEY),
        status,
    }
}

#[test]
fn bad_input_gets_a_4xx_in_its_apis_shape_and_the_server_keeps_serving() {
    let server = Server::start(&[
        "--api-key",
        KEY,
        "--max-client-batch-size",
        "4",
        "--payload-limit",
        "4096",
        "--max-input-tokens",
        "64",
    ]);
    let long = "word ".repeat(100);
    let mut cases = Vec::new();
    for (path, field) in [("/v1/embeddings", "input"), ("/embed", "inputs")] {
        cases.extend([
            case(
                "malformed JSON",
                path,
                format!("{{\"{field}\": [\"a\""),
                400,
            ),
            case("not JSON at all", path, "hello", 400),
            case(
                "a number for the input",
                path,
                format!("{{\"{field}\": 5}}"),
                422,
            ),
            case(
                "an object in the list",
                path,
                format!("{{\"{field}\": [\"a\", {{}}]}}"),
                422,
            ),
            case(
                "a negative token id",
                path,
                format!("{{\"{field}\": [[101, -1]]}}"),
                422,
            ),
            case("no input field", path, "{}", 422),
            case(
                "an empty string",
                path,
                format!("{{\"{field}\": \"\"}}"),
                400,
            ),
            case("an empty list", path, format!("{{\"{field}\": []}}"), 400),
            case(
                "an empty token list",
                path,
                format!("{{\"{field}\": [[]]}}"),
                400,
            ),
            case(
                "too many inputs",
                path,
                format!("{{\"{field}\": [\"a\",\"b\",\"c\",\"d\",\"e\"]}}"),
                413,
            ),
            case(
                "too long an input",
                path,
                format!("{{\"{field}\": \"{long}\"}}"),
                413,
            ),
            case(
                "too many token ids",
                path,
                format!("{{\"{field}\": [{}]}}", vec!["7592"; 65].join(",")),
                413,
            ),
            case(
                "a token id out of the vocabulary",
                path,
                format!("{{\"{field}\": [101, 30522, 102]}}"),
                422,
            ),
            case(
                "a body over the limit",
                path,
                format!("{{\"{field}\": \"{}\"}}", "a".repeat(5000)),
                413,
            ),
            case(
                "not UTF-8",
                path,
                [b"{\"".as_slice(), field.as_bytes(), b"\": \"caf\xe9\"}"].concat(),
                400,
            ),
            Case {
                key: None,
                ..case("no API key", path, format!("{{\"{field}\": \"a\"}}"), 401)
            },
            Case {
                key: Some("wrong"),
                ..case(
                    "a wrong API key",
                    path,
                    format!("{{\"{field}\": \"a\"}}"),
                    401,
                )
            },
            Case {
                method: "GET",
                ..case("the wrong method", path, "", 405)
            },
        ]);
    }
    cases.extend([
        case(
            "a wrong encoding_format",
            "/v1/embeddings",
            r#"{"input": "a", "encoding_format": "hex"}"#,
            422,
        ),
        case(
            "dimensions 0",
            "/v1/embeddings",
            r#"{"input": "a", "dimensions": 0}"#,
            422,
        ),
        case(
            "dimensions past the model's",
            "/v1/embeddings",
            r#"{"input": "a", "dimensions": 385}"#,
            422,
        ),
        case(
            "normalize not a boolean",
            "/embed",
            r#"{"inputs": "a", "normalize": "yes"}"#,
            422,
        ),
        case(
            "an unknown truncation direction",
            "/embed",
            r#"{"inputs": "a", "truncation_direction": "up"}"#,
            422,
        ),
        case(
            "a prompt name",
            "/embed",
            r#"{"inputs": "a", "prompt_name": "query"}"#,
            422,
        ),
        case(
            "token ids to /tokenize",
            "/tokenize",
            r#"{"inputs": [101, 102]}"#,
            422,
        ),
        case("an unknown route", "/embeddings/v2", "{}", 404),
        case("an unknown OpenAI route", "/v1/chat/completions", "{}", 404),
    ]);
    let auth = format!("Bearer {KEY}");
    for case in &cases {
        let mut headers = vec![("Content-Type", "application/json")];
        let given = case.key.map(|k| format!("Bearer {k}"));
        if let Some(given) = &given {
            headers.push(("Authorization", given.as_str()));
        }
        let (status, body) = request(server.addr, case.method, case.path, &headers, &case.body)
            .unwrap_or_else(|e| panic!("{}: no answer: {e}", case.what));
        let body: Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
            panic!(
                "{}: not JSON: {}",
                case.what,
                String::from_utf8_lossy(&body)
            )
        });
        assert_eq!(
            status, case.status,
            "{} on {}: {body}",
            case.what, case.path
        );
        if case.path.starts_with("/v1/") {
            let error = &body["error"];
            for field in ["message", "type", "code"] {
                assert!(
                    error[field].as_str().is_some_and(|s| !s.is_empty()),
                    "{}: {body}",
                    case.what
                );
            }
        } else {
            assert!(
                body["error"].as_str().is_some_and(|s| !s.is_empty()),
                "{}: {body}",
                case.what
            );
            assert!(
                body["error_type"].as_str().is_some(),
                "{}: {body}",
                case.what
            );
        }
        // Still serving.
        let (status, ok) = post_json(
            server.addr,
            "/embed",
            &json!({ "inputs": "still here" }),
            Some(KEY),
        );
        assert_eq!(status, 200, "after {}: {ok}", case.what);
    }
    // Messages name the limit.
    let (_, body) = post_json(server.addr, "/embed", &json!({ "inputs": long }), Some(KEY));
    assert!(
        body["error"].as_str().unwrap().contains("64 tokens"),
        "{body}"
    );
    // Truncation on request: over-long inputs are cut and said so.
    let (status, _) = post_json(
        server.addr,
        "/embed",
        &json!({ "inputs": long, "truncate": true }),
        Some(KEY),
    );
    assert_eq!(status, 200);
    // Probes are open without a key; /info is not.
    for path in ["/health", "/metrics"] {
        assert_eq!(
            request(server.addr, "GET", path, &[], b"").unwrap().0,
            200,
            "{path}"
        );
    }
    assert_eq!(
        request(server.addr, "GET", "/info", &[], b"").unwrap().0,
        401
    );
    assert_eq!(
        request(
            server.addr,
            "GET",
            "/info",
            &[("Authorization", &auth)],
            b""
        )
        .unwrap()
        .0,
        200
    );
    let metrics =
        String::from_utf8(request(server.addr, "GET", "/metrics", &[], b"").unwrap().1).unwrap();
    for series in [
        "braid_serve_requests_total{route=\"/embed\",status=\"413\"}",
        "braid_serve_phase_seconds_bucket",
        "braid_allocator_reserved_bytes",
        "braid_stream_pool_leased_slots",
    ] {
        assert!(metrics.contains(series), "/metrics lacks {series}");
    }
}

#[test]
fn a_client_that_sends_headers_slowly_and_stops_is_disconnected() {
    let server = Server::start(&["--header-timeout", "1"]);
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(b"POST /embed HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let start = Instant::now();
    let mut rest = Vec::new();
    let outcome = slow.read_to_end(&mut rest);
    let waited = start.elapsed();
    assert!(
        outcome.is_ok(),
        "the connection was not closed: {outcome:?}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "closed after {waited:?}, expected about 1 s"
    );
    let (status, _) = post_json(
        server.addr,
        "/embed",
        &json!({ "inputs": "after a slow client" }),
        None,
    );
    assert_eq!(status, 200);
}

#[test]
fn one_request_past_the_concurrency_limit_gets_429_and_a_stalled_one_408() {
    let server = Server::start(&["--max-concurrent-requests", "1", "--request-timeout", "2"]);
    // A request whose body never finishes holds the only permit (admission comes before the body).
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled
        .write_all(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"inputs\": ")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = post_json(
        server.addr,
        "/v1/embeddings",
        &json!({ "input": "x" }),
        None,
    );
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-concurrent-requests"));
    // The stalled request times out with a 408 in TEI's shape, and its permit comes back.
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut response = Vec::new();
    let _ = stalled.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.contains("\"error_type\":\"timeout\""),
        "{response}"
    );
    let (status, _) = post_json(server.addr, "/embed", &json!({ "inputs": "x" }), None);
    assert_eq!(status, 200);
}
