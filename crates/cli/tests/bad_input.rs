//! Bad input found when braid was tried as a new user (issue 8): each is refused or reported with a
//! clear message and exit code, never a panic. `bench` and `embed` here; `fetch-model` in
//! fetch_model.rs. Uses the default model.

mod common;

use common::{
    assert_fails, assert_succeeds, braid, command, dev_full, missing_model, run, scratch, stdout_of,
};

#[test]
fn bench_refuses_seconds_outside_a_sane_range() {
    for seconds in ["inf", "1e20", "nan", "-1", "0", "3601"] {
        let output = braid(&[
            "bench",
            "--threads",
            "1",
            "--batch",
            "1",
            &format!("--seconds={seconds}"),
        ]);
        assert_fails(&output, 1, &["--seconds", "3600"]);
    }
}

#[test]
fn bench_bounds_batch_and_threads_before_loading_the_model() {
    let model = missing_model();
    let output = braid(&["bench", "--model", &model, "--batch", "4097"]);
    assert_fails(&output, 1, &["--batch", "4096"]);
    let output = braid(&["bench", "--model", &model, "--threads", "1,100000"]);
    assert_fails(&output, 1, &["--threads", "at most 64"]);
}

#[test]
fn bench_checks_its_json_file_before_running() {
    let dir = scratch("bench-json");
    let bad = dir.join("no-such-folder").join("figures.json");
    let output = braid(&[
        "bench",
        "--threads",
        "1",
        "--batch",
        "1",
        "--seconds",
        "0.1",
        "--json",
        bad.to_str().unwrap(),
    ]);
    assert_fails(&output, 1, &["--json", "no-such-folder/figures.json"]);
    assert_eq!(stdout_of(&output), "", "nothing ran");

    // A file the run created is removed again when the run fails.
    let fresh = dir.join("fresh.json");
    let output = braid(&[
        "bench",
        "--threads",
        "1",
        "--batch",
        "1",
        "--seconds",
        "0.1",
        "--seq",
        "100000",
        "--json",
        fresh.to_str().unwrap(),
    ]);
    assert_fails(&output, 1, &["--seq"]);
    assert!(!fresh.exists(), "the failed run left {}", fresh.display());
}

#[test]
fn write_errors_on_stdout_are_clean_errors() {
    let mut bench = command(&[
        "bench",
        "--threads",
        "1",
        "--batch",
        "1",
        "--seconds",
        "0.1",
    ]);
    bench.stdout(dev_full());
    assert_fails(&run(bench, b""), 1, &["stdout"]);

    for format in ["json", "table"] {
        let mut embed = command(&["embed", "--format", format, "hello"]);
        embed.stdout(dev_full());
        assert_fails(&run(embed, b""), 1, &["stdout"]);
    }
    let mut embed = command(&["embed"]);
    embed.stdout(dev_full());
    assert_fails(&run(embed, b"one\ntwo\n"), 1, &["stdout"]);
}

#[test]
fn table_output_escapes_control_characters() {
    let text =
        "red \u{1b}[31mALERT\u{1b}[0m\nsecond line\r\tand a bell\u{7} \u{202e}reversed \\ end";
    let table = assert_succeeds(&braid(&["embed", "--format", "table", text]));
    assert_eq!(table.lines().count(), 2, "a header and one row: {table:?}");
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n') && !table.contains('\u{202e}'),
        "raw control characters in {table:?}"
    );
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.contains(r"red \u{1b}[31mALERT\u{1b}[0m\nsecond line\r\tand a bell\u{7} \u{202e}rever"),
        "{row}"
    );
}

#[test]
fn stdin_lines_have_a_documented_limit() {
    let help = assert_succeeds(&braid(&["embed", "--help"]));
    assert!(help.contains("1 MiB"), "{help}");

    let limit = 1 << 20;
    let mut input = b"a short line\n".to_vec();
    input.extend(std::iter::repeat_n(b'a', limit + 1));
    input.extend(b"\nanother line\n");
    let output = run(command(&["embed"]), &input);
    assert_fails(&output, 1, &["line 2", "1 MiB"]);

    // A line of exactly the limit is fine, with or without its line ending.
    let mut input = vec![b'a'; limit];
    input.extend(b"\r\n");
    input.extend(vec![b'b'; limit]);
    let out = assert_succeeds(&run(command(&["embed"]), &input));
    assert_eq!(out.lines().count(), 2);
}
