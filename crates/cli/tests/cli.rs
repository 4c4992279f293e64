//! The `braid` binary end to end on the default model: embed (arguments, stdin, table), bench (JSON
//! figures, no leaked slots) and the errors a user sees.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn braid(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("braid starts");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "braid failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn embed_prints_one_normalised_embedding_per_input_in_order() {
    let texts = ["A man is eating food.", "", "Ünïcödé and 中文 and 🙂"];
    let from_args = json_lines(&stdout_of(&braid(
        &["embed", "--batch", "2", texts[0], texts[1], texts[2]],
        None,
    )));
    assert_eq!(from_args.len(), 3);
    for (i, line) in from_args.iter().enumerate() {
        assert_eq!(line["index"], i);
        assert_eq!(line["text"], texts[i]);
        let embedding: Vec<f64> = serde_json::from_value(line["embedding"].clone()).unwrap();
        assert_eq!(embedding.len(), 384);
        let norm = embedding.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    // The same inputs as stdin lines give the same output.
    let from_stdin = json_lines(&stdout_of(&braid(&["embed"], Some(&texts.join("\n")))));
    assert_eq!(from_stdin, from_args);

    let table = stdout_of(&braid(&["embed", "--format", "table", texts[0]], None));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].contains("tokens") && lines[1].contains(texts[0]),
        "{table}"
    );
}

#[test]
fn bench_writes_figures_and_leaks_no_slot() {
    let json = std::env::temp_dir().join(format!("braid-bench-{}.json", std::process::id()));
    let out = stdout_of(&braid(
        &[
            "bench",
            "--threads",
            "1,2",
            "--batch",
            "2",
            "--seconds",
            "0.3",
            "--json",
            json.to_str().unwrap(),
        ],
        None,
    ));
    assert_eq!(
        out.lines().count(),
        5,
        "a header and two rows per mode (direct, engine): {out}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).ok();
    let points = report["points"].as_array().unwrap();
    assert_eq!(points.len(), 4);
    let expected = [(1, "direct"), (1, "engine"), (2, "direct"), (2, "engine")];
    for (point, (threads, mode)) in points.iter().zip(expected) {
        assert_eq!(point["threads"], threads);
        assert_eq!(point["mode"], mode);
        assert!(point["mean_batch"].as_f64().unwrap() >= 1.0, "{point}");
        assert_eq!(point["batch"], 2);
        assert!(point["sequences"].as_u64().unwrap() >= 2, "{point}");
        assert_eq!(point["leaked_slots"], 0, "{point}");
        assert!(point["p99_ms"].as_f64().unwrap() >= point["p50_ms"].as_f64().unwrap());
    }

    // Synthetic inputs of a fixed length, as the PyTorch anchors use.
    let out = stdout_of(&braid(
        &[
            "bench",
            "--threads",
            "1",
            "--batch",
            "1",
            "--seconds",
            "0.2",
            "--seq",
            "32",
        ],
        None,
    ));
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[6], "32.0", "mean tokens per sequence: {out}");
}

#[test]
fn user_errors_say_what_is_wrong() {
    let missing = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("no-such-model");
    let output = braid(&["embed", "--model", missing.to_str().unwrap(), "x"], None);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no-such-model") && stderr.contains("braid fetch-model"),
        "{stderr}"
    );

    let output = braid(&["bench", "--threads", "0"], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("at least 1"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = braid(&["bench", "--threads", "65"], None);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("at most 64 worker slots"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = braid(&["embed", "--batch", "0", "x"], None);
    assert_eq!(output.status.code(), Some(2), "clap refuses the value");
}

#[test]
fn bench_draws_the_plot() {
    let svg_path = std::env::temp_dir().join(format!("braid-bench-{}.svg", std::process::id()));
    let output = braid(
        &[
            "bench",
            "--device",
            "cpu",
            "--threads",
            "1,2",
            "--batch",
            "1",
            "--seconds",
            "0.2",
            "--plot",
            svg_path.to_str().unwrap(),
        ],
        None,
    );
    stdout_of(&output);
    let svg = std::fs::read_to_string(&svg_path).expect("the plot was written");
    std::fs::remove_file(&svg_path).ok();
    assert!(svg.starts_with("<svg"), "{}", &svg[..200.min(svg.len())]);
    assert!(svg.trim_end().ends_with("</svg>"), "the SVG is complete");
    assert_eq!(
        svg.matches("<text").count(),
        svg.matches("</text>").count(),
        "every text element is closed"
    );
    for label in [
        "Throughput: sequences per second",
        "Tail latency: p99 per call",
        "seq/s",
        "p99 latency (ms)",
        "caller threads",
        "all-MiniLM-L6-v2",
    ] {
        assert!(svg.contains(label), "the plot lacks {label:?}");
    }
    // One legend entry per series: batch 1 in both modes.
    for series in ["batch 1, direct", "batch 1, engine"] {
        assert_eq!(svg.matches(series).count(), 1, "legend entry {series:?}");
    }
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("plot drawn to"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_bad_plot_file_fails_before_the_run() {
    let assert_refused = |args: &[&str], needle: &str| {
        let output = braid(args, None);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
        // The run announces itself ("braid bench: <model> … s per point") before the first point.
        assert!(!stderr.contains("per point"), "the run started: {stderr}");
        assert!(output.stdout.is_empty(), "no table: {stderr}");
    };
    let missing_dir = std::env::temp_dir()
        .join(format!("braid-no-such-dir-{}", std::process::id()))
        .join("plot.svg");
    let missing_dir = missing_dir.to_str().unwrap();
    let bench = ["bench", "--device", "cpu", "--threads", "1", "--batch", "1"];
    assert_refused(
        &[&bench[..], &["--seconds", "0.2", "--plot", missing_dir]].concat(),
        "cannot create the --plot file",
    );
    assert_refused(
        &[&bench[..], &["--plot", "figures.png"]].concat(),
        "must end in .svg",
    );
    assert!(!PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("figures.png")
        .exists());

    let both = std::env::temp_dir().join(format!("braid-both-{}.svg", std::process::id()));
    let both = both.to_str().unwrap();
    assert_refused(
        &[&bench[..], &["--json", both, "--plot", both]].concat(),
        "name the same file",
    );
    assert!(
        !std::path::Path::new(both).exists(),
        "a file the failed run created is removed"
    );
}

/// `--device wgpu` end to end: the same embeddings as the CPU's within f32 rounding, and an adapter
/// that does not exist is an error naming BRAID_WGPU_ADAPTER, not a panic. Skips with a line saying so
/// without a wgpu adapter (CI installs lavapipe and sets BRAID_REQUIRE_WGPU=1).
#[test]
fn embed_on_wgpu_matches_the_cpu_and_a_missing_adapter_is_an_error() {
    let texts = [
        "A man is eating food.",
        "A cheetah chases its prey across a field.",
    ];
    let wgpu = braid(&["embed", "--device", "wgpu", texts[0], texts[1]], None);
    if !wgpu.status.success() && std::env::var("BRAID_REQUIRE_WGPU").is_err() {
        let stderr = String::from_utf8_lossy(&wgpu.stderr);
        assert!(stderr.contains("no wgpu adapter"), "{stderr}");
        println!("skipped: no wgpu adapter ({})", stderr.trim());
        return;
    }
    let cpu = json_lines(&stdout_of(&braid(
        &["embed", "--device", "cpu", texts[0], texts[1]],
        None,
    )));
    let wgpu = json_lines(&stdout_of(&wgpu));
    assert_eq!(wgpu.len(), cpu.len());
    for (w, c) in wgpu.iter().zip(&cpu) {
        let w: Vec<f64> = serde_json::from_value(w["embedding"].clone()).unwrap();
        let c: Vec<f64> = serde_json::from_value(c["embedding"].clone()).unwrap();
        let worst = w
            .iter()
            .zip(&c)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        assert!(worst < 1e-5, "largest difference from the CPU {worst:e}");
    }

    let output = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["embed", "--device", "wgpu", "x"])
        .env("BRAID_WGPU_ADAPTER", "no such adapter")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("BRAID_WGPU_ADAPTER"), "{stderr}");
}
