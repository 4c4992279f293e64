//! Prometheus metrics: the process-wide recorder ([`install`]: `metrics-exporter-prometheus`, with no
//! listener of its own) and the text `GET /metrics` renders ([`render`]).
//!
//! What it exports (besides the engine's own `braid_engine_*` series: queue wait and forward time per
//! batch, batch sizes and padded tokens, queued tokens, errors):
//!
//! - `braid_serve_requests_total{route,status}` and `braid_serve_request_duration_seconds{route}`
//!   (recorded for every request by `observe`);
//! - `braid_serve_phase_seconds{route,phase}`: per request, `tokenize` (the server's tokenization)
//!   and `embed` (from submission to the engine until the embeddings are back: the queue wait and
//!   the forward, which the engine's `braid_engine_queue_wait_seconds` and
//!   `braid_engine_forward_seconds` split per batch);
//! - `braid_serve_inputs_per_request{route}`, `braid_serve_truncated_inputs_total{route}`;
//! - gauges set at each scrape: `braid_serve_requests_in_flight`, `braid_serve_ready`, the
//!   allocator's statistics (`braid_allocator_*`) and the stream pool's slots
//!   (`braid_stream_pool_worker_slots`, `braid_stream_pool_leased_slots`), and the engine's totals
//!   (`braid_engine_batches`, `braid_engine_sequences`, `braid_engine_tokens`); per device
//!   (`device` label), its allocator's `braid_engine_device_reserved_bytes` (the unlabelled
//!   allocator series are the first device's), besides the engine's own per-device series
//!   (`braid_engine_device_healthy`, `_inflight_tokens`, `_batches_total`, `_sequences_total`,
//!   `_requeued_sequences_total`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

/// Histogram buckets for durations: 100 µs to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Histogram buckets for counts (batch sizes, inputs per request, tokens).
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

/// A part of a request's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Tokenizing and checking the inputs.
    Tokenize,
    /// Waiting for the engine: queue and forward.
    Embed,
}

/// Records `elapsed` for `route`'s `phase`.
pub fn record_phase(route: &'static str, phase: Phase, elapsed: Duration) {
    let phase = match phase {
        Phase::Tokenize => "tokenize",
        Phase::Embed => "embed",
    };
    metrics::histogram!("braid_serve_phase_seconds", "route" => route, "phase" => phase)
        .record(elapsed.as_secs_f64());
}

/// The process's Prometheus recorder, installed on the first call. `None` when another recorder was
/// installed first (then `/metrics` says so).
pub fn install() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("braid_engine_batch_size".into()), COUNT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("braid_engine_batch_tokens".into()), COUNT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("braid_serve_inputs_per_request".into()),
                        COUNT_BUCKETS,
                    )
                });
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                Err(error) => {
                    tracing::error!(%error, "cannot configure the metrics exporter (this is a bug)");
                    return None;
                }
            };
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "another metrics recorder is installed; /metrics is empty");
                    None
                }
            }
        })
        .as_ref()
}

/// The Prometheus text for `state`: its gauges set now, then every series.
pub fn render(state: &AppState) -> String {
    let Some(handle) = install() else {
        return "# another metrics recorder was installed in this process; nothing to export\n"
            .into();
    };
    let in_flight =
        state.config.max_concurrent_requests - state.request_permits.available_permits();
    metrics::gauge!("braid_serve_requests_in_flight").set(in_flight as f64);
    let loaded = state.loaded_even_if_closing();
    metrics::gauge!("braid_serve_ready").set(if state.loaded().is_ok() { 1.0 } else { 0.0 });
    if let Some(loaded) = loaded {
        let model = &loaded.model;
        let alloc = model.allocator_stats();
        for (name, value) in [
            (
                "braid_allocator_allocated_bytes",
                alloc.allocated_bytes as f64,
            ),
            (
                "braid_allocator_reserved_bytes",
                alloc.reserved_bytes as f64,
            ),
            (
                "braid_allocator_peak_reserved_bytes",
                alloc.peak_reserved_bytes as f64,
            ),
            (
                "braid_allocator_thread_cached_bytes",
                alloc.thread_cached_bytes as f64,
            ),
            ("braid_allocator_allocs", alloc.allocs as f64),
            ("braid_allocator_frees", alloc.frees as f64),
            ("braid_allocator_raw_allocs", alloc.raw_allocs as f64),
            ("braid_allocator_raw_frees", alloc.raw_frees as f64),
            ("braid_allocator_hit_rate", alloc.hit_rate()),
            (
                "braid_stream_pool_worker_slots",
                model.worker_slots() as f64,
            ),
            (
                "braid_stream_pool_leased_slots",
                model.leased_slots() as f64,
            ),
        ] {
            metrics::gauge!(name).set(value);
        }
        let stats = loaded.engine.stats();
        for (name, value) in [
            ("braid_engine_batches", stats.batches),
            ("braid_engine_sequences", stats.sequences),
            ("braid_engine_tokens", stats.tokens),
            ("braid_engine_padded_tokens", stats.padded_tokens),
        ] {
            metrics::gauge!(name).set(value as f64);
        }
        metrics::gauge!("braid_engine_queued_tokens").set(loaded.engine.queued_tokens() as f64);
        for device in loaded.engine.devices() {
            if let Some(model) = loaded.engine.device_model(device.index) {
                metrics::gauge!("braid_engine_device_reserved_bytes", "device" => device.name)
                    .set(model.allocator_stats().reserved_bytes as f64);
            }
        }
    }
    handle.run_upkeep();
    handle.render()
}
