//! `braid serve --device cpu --devices 0,1`: one server, one engine over two CPU runtimes (each with
//! its own copy of the weights). `/health` and `/metrics` list each device's state; requests from
//! many clients spread over both devices and give the golden fixture's vectors, in batched and in
//! direct mode.

mod serve_support;

use braid_serve::loadgen::cosine;
use serde_json::{json, Value};
use serve_support::{golden, post_json, request, Server};

fn health(server: &Server) -> (u16, Value) {
    let (status, body) = request(server.addr, "GET", "/health", &[], b"").unwrap();
    (
        status,
        serde_json::from_slice(&body).expect("/health is JSON"),
    )
}

/// Embeds the golden fixture's texts from 8 clients at once; every vector matches.
fn embed_from_many_clients(server: &Server) {
    let cases = golden();
    std::thread::scope(|s| {
        for client in 0..8 {
            let cases = &cases;
            s.spawn(move || {
                for (text, _, want) in cases.iter().skip(client).step_by(8).take(3) {
                    let (status, body) = post_json(
                        server.addr,
                        "/embed",
                        &json!({ "inputs": text, "truncate": true }),
                        None,
                    );
                    assert_eq!(status, 200, "{body}");
                    let got: Vec<f32> = serde_json::from_value(body[0].clone()).unwrap();
                    assert!(cosine(want, &got) >= 0.99999, "{text:?}");
                }
            });
        }
    });
}

#[test]
fn health_and_metrics_list_both_cpu_devices() {
    for mode in ["batched", "direct"] {
        let server = Server::start(&["--devices", "0,1", "--mode", mode]);
        let (status, body) = health(&server);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "ok");
        let names: Vec<&str> = body["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["device"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["cpu:0", "cpu:1"], "{body}");
        embed_from_many_clients(&server);

        let (status, body) = health(&server);
        assert_eq!(status, 200);
        let devices = body["devices"].as_array().unwrap();
        for device in devices {
            assert_eq!(device["healthy"], true, "{device}");
            assert_eq!(device["failure"], Value::Null, "{device}");
            assert_eq!(device["backend"], "cpu");
        }
        let sequences: u64 = devices
            .iter()
            .map(|d| d["sequences"].as_u64().unwrap())
            .sum();
        assert!(
            sequences >= 24,
            "{mode}: every request ran on a device: {body}"
        );
        assert!(
            devices.iter().all(|d| d["batches"].as_u64().unwrap() > 0),
            "{mode}: both devices took work: {body}"
        );

        let (_, info) = request(server.addr, "GET", "/info", &[], b"").unwrap();
        let info: Value = serde_json::from_slice(&info).unwrap();
        assert_eq!(info["devices"], json!(["cpu:0", "cpu:1"]));

        let metrics =
            String::from_utf8(request(server.addr, "GET", "/metrics", &[], b"").unwrap().1)
                .unwrap();
        for device in ["cpu:0", "cpu:1"] {
            for series in [
                format!("braid_engine_device_healthy{{device=\"{device}\"}} 1"),
                format!("braid_engine_device_batches_total{{device=\"{device}\"}}"),
                format!("braid_engine_device_sequences_total{{device=\"{device}\"}}"),
                format!("braid_engine_device_inflight_tokens{{device=\"{device}\"}}"),
                format!("braid_engine_device_reserved_bytes{{device=\"{device}\"}}"),
            ] {
                assert!(metrics.contains(&series), "{mode}: /metrics lacks {series}");
            }
        }
        assert!(
            server.log().contains("cpu:0,cpu:1"),
            "the log names the devices: {}",
            server.log()
        );
    }
}

#[test]
fn a_bad_devices_value_is_a_clear_error() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_braid"))
        .args([
            "serve",
            "--device",
            "wgpu",
            "--devices",
            "0,1",
            "--port",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("wgpu drives one adapter") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
