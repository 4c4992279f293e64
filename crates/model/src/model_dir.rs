//! `ModelDir`: a Hugging Face / sentence-transformers model directory on disk, and where braid
//! looks for one by default.
//!
//! Layout (all-MiniLM-L6-v2's): `config.json`, `model.safetensors` and `tokenizer.json` are
//! required; `modules.json` (with the `1_Pooling/config.json` it points to) and
//! `sentence_bert_config.json` are optional, and their absence means a plain BERT checkpoint: mean
//! pooling, no normalisation, `max_seq_length = min(512, max_position_embeddings)` (see
//! `pooling`). When `modules.json` puts the Transformer module in a subdirectory (older
//! sentence-transformers layouts, e.g. `0_Transformer/`), the three required files and
//! `sentence_bert_config.json` are looked for there.
//!
//! Promise: `ModelDir::open` succeeds only when every file the directory needs is present (so a
//! missing file is reported before anything slow happens); it parses nothing but `modules.json`.
//! The module directories `modules.json` names stay inside the model directory: an absolute path,
//! a `..` component or a symbolic link that resolves outside it is refused
//! (`ModelError::ModulePathOutsideModelDir`). Files themselves may be symbolic links (a Hugging Face
//! cache snapshot links every file into its blob store).
//! `load_spec` parses and validates the small files; `load_weights` reads the tensors.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::pooling::{Modules, PoolingConfig, SentenceBertConfig};
use crate::tokenizer::Tokenizer;
use crate::weights::BertWeights;

/// Directory name of the default model under a models directory.
pub const DEFAULT_MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// Environment variable naming a model directory; wins over everything else.
pub const MODEL_ENV: &str = "BRAID_MODEL";

/// Environment variable naming the directory that holds `all-MiniLM-L6-v2/` (the same variable
/// `braid fetch-model` writes into).
pub const MODELS_DIR_ENV: &str = "BRAID_MODELS_DIR";

/// The default model directory:
/// 1. `$BRAID_MODEL` if set (and not empty);
/// 2. else `$BRAID_MODELS_DIR/all-MiniLM-L6-v2` if `BRAID_MODELS_DIR` is set;
/// 3. else the first `models/all-MiniLM-L6-v2` directory found walking up from the current
///    directory (so it works from the repository root and any directory below it);
/// 4. else `./models/all-MiniLM-L6-v2`, which may not exist: `ModelDir::open` then says how to
///    fetch it.
pub fn default_model_dir() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    resolve_model_dir(
        std::env::var_os(MODEL_ENV),
        std::env::var_os(MODELS_DIR_ENV),
        &cwd,
    )
}

/// `default_model_dir` with the environment and current directory passed in.
fn resolve_model_dir(model: Option<OsString>, models_dir: Option<OsString>, cwd: &Path) -> PathBuf {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(model) = set(model) {
        return model;
    }
    if let Some(models_dir) = set(models_dir) {
        return models_dir.join(DEFAULT_MODEL_NAME);
    }
    let relative = Path::new("models").join(DEFAULT_MODEL_NAME);
    cwd.ancestors()
        .map(|dir| dir.join(&relative))
        .find(|candidate| candidate.is_dir())
        .unwrap_or(relative)
}

/// `root.join(rel)` for a module directory named in `modules.json` (already known to be relative
/// with no `..`), refused when symbolic links make it resolve outside `root`. A directory that does
/// not exist is returned as is: the file looked for in it is then reported missing.
fn module_dir(root: &Path, rel: &Path, modules_json: &Path) -> Result<PathBuf> {
    let dir = root.join(rel);
    let Ok(resolved) = dir.canonicalize() else {
        return Ok(dir);
    };
    let resolved_root = root.canonicalize().map_err(|source| ModelError::Io {
        path: root.to_owned(),
        source,
    })?;
    if resolved.starts_with(&resolved_root) {
        return Ok(dir);
    }
    Err(ModelError::ModulePathOutsideModelDir {
        file: modules_json.to_owned(),
        value: rel.display().to_string(),
        model_dir: root.to_owned(),
        why: format!("a symbolic link makes it {}", resolved.display()),
    })
}

/// A model directory whose required files all exist.
#[derive(Debug, Clone)]
pub struct ModelDir {
    root: PathBuf,
    config: PathBuf,
    weights: PathBuf,
    tokenizer: PathBuf,
    /// `sentence_bert_config.json`, when present.
    sentence_bert_config: Option<PathBuf>,
    /// The Pooling module's config.json and whether Normalize follows, when modules.json exists.
    pooling: Option<(PathBuf, bool)>,
}

/// Everything about a model except its weights: enough to tokenize and to size a forward.
#[derive(Debug)]
pub struct ModelSpec {
    /// The encoder's hyper-parameters.
    pub config: BertConfig,
    /// Pooling mode and normalisation.
    pub pooling: PoolingConfig,
    /// Longest token sequence (special tokens included); the tokenizer truncates to it.
    pub max_seq_length: usize,
    /// The tokenizer, configured for `max_seq_length` and no padding.
    pub tokenizer: Tokenizer,
}

impl ModelDir {
    /// Checks that `path` is a model directory with every file it needs.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let root = path.as_ref().to_owned();
        if !root.is_dir() {
            return Err(ModelError::ModelDirNotFound { path: root });
        }
        let modules_path = root.join("modules.json");
        let modules = if modules_path.is_file() {
            Some(Modules::load(&modules_path)?)
        } else {
            None
        };
        let transformer = match &modules {
            Some(m) => module_dir(&root, &m.transformer, &modules_path)?,
            None => root.clone(),
        };
        let require = |path: PathBuf, why: &'static str| {
            if path.is_file() {
                Ok(path)
            } else {
                Err(ModelError::MissingFile { path, why })
            }
        };
        let config = require(
            transformer.join("config.json"),
            "it holds the encoder's hyper-parameters",
        )?;
        let weights = require(
            transformer.join("model.safetensors"),
            "it holds the weights (braid reads safetensors, not pytorch_model.bin)",
        )?;
        let tokenizer = require(
            transformer.join("tokenizer.json"),
            "it holds the tokenizer (braid reads tokenizer.json, not vocab.txt)",
        )?;
        let pooling = match &modules {
            Some(m) => Some((
                require(
                    module_dir(&root, &m.pooling, &modules_path)?.join("config.json"),
                    "modules.json lists a Pooling module, whose settings live here",
                )?,
                m.normalize,
            )),
            None => None,
        };
        let sentence_bert_config =
            Some(transformer.join("sentence_bert_config.json")).filter(|p| p.is_file());
        Ok(Self {
            root,
            config,
            weights,
            tokenizer,
            sentence_bert_config,
            pooling,
        })
    }

    /// The directory this was opened from.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The `model.safetensors` file.
    pub fn weights_path(&self) -> &Path {
        &self.weights
    }

    /// Reads and validates config.json.
    pub fn load_config(&self) -> Result<BertConfig> {
        BertConfig::load(&self.config)
    }

    /// Reads config, pooling and sentence-transformers settings and loads the tokenizer.
    pub fn load_spec(&self) -> Result<ModelSpec> {
        let config = self.load_config()?;
        let pooling = match &self.pooling {
            Some((path, normalize)) => PoolingConfig::load(path, *normalize, config.hidden_size)?,
            None => PoolingConfig::default(),
        };
        let sentence = SentenceBertConfig::load(self.sentence_bert_config.as_deref(), &config)?;
        let tokenizer = Tokenizer::from_file(
            &self.tokenizer,
            sentence.max_seq_length,
            sentence.do_lower_case,
        )?;
        Ok(ModelSpec {
            config,
            pooling,
            max_seq_length: sentence.max_seq_length,
            tokenizer,
        })
    }

    /// Reads the weights, checking them against `config` (from `load_config` or `load_spec`).
    pub fn load_weights(&self, config: &BertConfig) -> Result<BertWeights> {
        BertWeights::load(&self.weights, config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_model_wins_then_models_dir() {
        let cwd = Path::new("/nonexistent/braid");
        let dir = resolve_model_dir(Some("/m/x".into()), Some("/models".into()), cwd);
        assert_eq!(dir, PathBuf::from("/m/x"));
        let dir = resolve_model_dir(None, Some("/models".into()), cwd);
        assert_eq!(dir, PathBuf::from("/models/all-MiniLM-L6-v2"));
        // Empty variables count as unset.
        let dir = resolve_model_dir(Some("".into()), Some("".into()), cwd);
        assert_eq!(dir, PathBuf::from("models/all-MiniLM-L6-v2"));
    }

    #[test]
    fn walks_up_from_the_current_directory() {
        let root = std::env::temp_dir().join(format!("braid-model-walk-{}", std::process::id()));
        let model = root.join("models").join(DEFAULT_MODEL_NAME);
        let deep = root.join("crates").join("model");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(resolve_model_dir(None, None, &deep), model);
        assert_eq!(resolve_model_dir(None, None, &root), model);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
