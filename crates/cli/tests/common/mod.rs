//! Running the built `braid` binary from the integration tests: a command set up as a user would run
//! it (from the crate folder, every stream piped), stdin fed from a thread (braid may stop reading
//! early, and that must not fail the test), and the check that a failure is a clean one.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// `braid ARGS`, run from the crate folder, stdin, stdout and stderr piped.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_braid"));
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs `command` with `stdin` as its standard input; write errors (braid stopped reading) are ignored.
pub fn run(mut command: Command, stdin: &[u8]) -> Output {
    let mut child = command.spawn().expect("braid starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("braid runs");
    feeder.join().expect("the stdin feeder does not panic");
    output
}

/// `braid ARGS` with empty stdin.
pub fn braid(args: &[&str]) -> Output {
    run(command(args), b"")
}

/// A writable handle on `/dev/full`: every write to it fails with "no space left on device".
pub fn dev_full() -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full exists (Linux)")
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts that braid exited with `code` through its error path (no panic) and that stderr holds
/// every one of `needles`; returns stderr.
pub fn assert_fails(output: &Output, code: i32, needles: &[&str]) -> String {
    let stderr = stderr_of(output);
    assert!(!stderr.contains("panicked"), "braid panicked: {stderr}");
    assert_eq!(
        output.status.code(),
        Some(code),
        "exit status; stderr: {stderr}"
    );
    for needle in needles {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    }
    stderr
}

/// Asserts success; returns stdout.
pub fn assert_succeeds(output: &Output) -> String {
    assert!(
        output.status.success(),
        "braid failed ({:?}): {}",
        output.status,
        stderr_of(output)
    );
    stdout_of(output)
}

/// A fresh folder for one test under cargo's per-target temp dir, removed first if a previous run
/// left it behind.
pub fn scratch(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("braid-cli-{name}"));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).expect("create a scratch folder");
    path
}

/// A model directory that does not exist, so that a command fails at loading unless it refused its
/// arguments first.
pub fn missing_model() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("no-such-model")
        .display()
        .to_string()
}
