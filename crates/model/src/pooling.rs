//! The sentence-transformers layer of a model directory: which modules run after the encoder
//! (`modules.json`), how token states become one vector (`1_Pooling/config.json`), and the
//! tokenizer settings sentence-transformers applies (`sentence_bert_config.json`).
//!
//! Promises:
//! - A pipeline braid cannot reproduce is refused, never approximated: `modules.json` must list a
//!   `Transformer`, then a `Pooling`, then optionally a `Normalize`, and nothing else (a `Dense`
//!   projection, for example, is refused); the pooling config must select exactly one of CLS, mean
//!   or max pooling.
//! - A directory without `modules.json` is a plain Hugging Face BERT checkpoint and gets what
//!   sentence-transformers gives one: mean pooling, no normalisation (`PoolingConfig::default`).
//! - Without `sentence_bert_config.json`, `max_seq_length` is `min(512, max_position_embeddings)`
//!   and `do_lower_case` is false.
//! - A module path in `modules.json` is relative and has no `..` component, so it names a
//!   directory inside the model directory (`ModelDir::open` also refuses one that a symbolic link
//!   leads outside): a model directory from elsewhere cannot make braid read other files.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::config::BertConfig;
use crate::error::{read_json, ModelError, Result};

/// How the token states of one sequence become its embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps.
    Mean,
    /// The state of the first token (`[CLS]`).
    Cls,
    /// Element-wise maximum over the kept tokens. Parsed so that it can be named in an error;
    /// a forward may refuse it.
    Max,
}

/// Pooling and post-processing of the encoder output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolingConfig {
    /// The pooling mode.
    pub mode: Pooling,
    /// Whether the pooled vector is L2-normalised (a `Normalize` module follows the pooling).
    pub normalize: bool,
}

impl Default for PoolingConfig {
    /// What a plain BERT checkpoint (no `modules.json`) gets: mean pooling, no normalisation.
    fn default() -> Self {
        Self {
            mode: Pooling::Mean,
            normalize: false,
        }
    }
}

/// The module pipeline listed in `modules.json`, checked to be one braid can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modules {
    /// Directory of the `Transformer` module, relative to the model directory ("" for the root);
    /// never absolute, never with a `..` component.
    pub transformer: PathBuf,
    /// Directory of the `Pooling` module, relative to the model directory; never absolute, never
    /// with a `..` component.
    pub pooling: PathBuf,
    /// Whether a `Normalize` module follows the pooling.
    pub normalize: bool,
}

#[derive(Deserialize)]
struct RawModule {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

impl Modules {
    /// Reads `modules.json`; it must list Transformer, Pooling and optionally Normalize, at
    /// relative paths that stay inside the directory holding `modules.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let raw: Vec<RawModule> = read_json(
            path,
            "a sentence-transformers modules.json (a list of modules)",
        )?;
        // The last path component of the Python class, e.g. "sentence_transformers.models.Pooling".
        let kinds: Vec<&str> = raw
            .iter()
            .map(|m| m.kind.rsplit('.').next().unwrap_or(&m.kind))
            .collect();
        match kinds.as_slice() {
            ["Transformer", "Pooling"] | ["Transformer", "Pooling", "Normalize"] => Ok(Self {
                transformer: module_path(path, &raw[0].path)?,
                pooling: module_path(path, &raw[1].path)?,
                normalize: kinds.len() == 3,
            }),
            _ => Err(ModelError::UnsupportedConfig {
                path: path.to_owned(),
                field: "module list",
                value: format!("{kinds:?}"),
                allowed: "braid runs Transformer, then Pooling, then optionally Normalize; \
                          other modules (e.g. Dense) are not supported"
                    .to_owned(),
            }),
        }
    }
}

/// A module path from `modules.json` (the file at `file`), refused when it is absolute or has a
/// `..` component: either could name a directory outside the model directory.
fn module_path(file: &Path, value: &str) -> Result<PathBuf> {
    let path = PathBuf::from(value);
    let why = path.components().find_map(|component| match component {
        Component::Normal(_) | Component::CurDir => None,
        Component::ParentDir => Some("it has a `..` component"),
        Component::RootDir | Component::Prefix(_) => Some("it is an absolute path"),
    });
    match why {
        None => Ok(path),
        Some(why) => Err(ModelError::ModulePathOutsideModelDir {
            file: file.to_owned(),
            value: value.to_owned(),
            model_dir: file.parent().unwrap_or(Path::new("")).to_owned(),
            why: why.to_owned(),
        }),
    }
}

/// `1_Pooling/config.json` as sentence-transformers writes it.
#[derive(Deserialize)]
struct RawPooling {
    #[serde(default)]
    word_embedding_dimension: Option<usize>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

impl PoolingConfig {
    /// Reads a Pooling module's `config.json`; `normalize` says whether a `Normalize` module
    /// follows, and `hidden_size` is checked against the file's `word_embedding_dimension`.
    pub fn load(path: &Path, normalize: bool, hidden_size: usize) -> Result<Self> {
        let raw: RawPooling = read_json(path, "a sentence-transformers Pooling config")?;
        let unsupported = |field, value: String, allowed: &str| ModelError::UnsupportedConfig {
            path: path.to_owned(),
            field,
            value,
            allowed: allowed.to_owned(),
        };
        if let Some(dim) = raw.word_embedding_dimension {
            if dim != hidden_size {
                return Err(unsupported(
                    "word_embedding_dimension",
                    dim.to_string(),
                    &format!("it must equal hidden_size = {hidden_size} from config.json"),
                ));
            }
        }
        let selected: Vec<&'static str> = [
            ("cls_token", raw.pooling_mode_cls_token),
            ("mean_tokens", raw.pooling_mode_mean_tokens),
            ("max_tokens", raw.pooling_mode_max_tokens),
            (
                "mean_sqrt_len_tokens",
                raw.pooling_mode_mean_sqrt_len_tokens,
            ),
            ("weightedmean_tokens", raw.pooling_mode_weightedmean_tokens),
            ("lasttoken", raw.pooling_mode_lasttoken),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        let mode = match selected.as_slice() {
            ["cls_token"] => Pooling::Cls,
            ["mean_tokens"] => Pooling::Mean,
            ["max_tokens"] => Pooling::Max,
            _ => {
                return Err(unsupported(
                    "pooling mode",
                    format!("{selected:?}"),
                    "exactly one of pooling_mode_cls_token, pooling_mode_mean_tokens or \
                     pooling_mode_max_tokens must be true",
                ))
            }
        };
        Ok(Self { mode, normalize })
    }
}

/// Tokenizer settings sentence-transformers applies on top of tokenizer.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentenceBertConfig {
    /// Longest token sequence, `[CLS]` and `[SEP]` included; longer inputs are truncated.
    pub max_seq_length: usize,
    /// Whether input text is lower-cased before tokenizing.
    pub do_lower_case: bool,
}

#[derive(Deserialize)]
struct RawSentenceBert {
    #[serde(default)]
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

impl SentenceBertConfig {
    /// Reads `sentence_bert_config.json` if there is one (`path` is `None` otherwise) and checks
    /// `max_seq_length` against the encoder's position table.
    pub fn load(path: Option<&Path>, config: &BertConfig) -> Result<Self> {
        let raw = match path {
            Some(path) => read_json(path, "a sentence_bert_config.json")?,
            None => RawSentenceBert {
                max_seq_length: None,
                do_lower_case: false,
            },
        };
        let limit = config.max_position_embeddings;
        let max_seq_length = raw.max_seq_length.unwrap_or(limit.min(512));
        // [CLS] and [SEP] take two positions; a position past the table has no embedding.
        if !(2..=limit).contains(&max_seq_length) {
            return Err(ModelError::UnsupportedConfig {
                path: path.map_or_else(
                    || PathBuf::from("sentence_bert_config.json (absent)"),
                    Path::to_owned,
                ),
                field: "max_seq_length",
                value: max_seq_length.to_string(),
                allowed: format!(
                    "it must be between 2 and max_position_embeddings = {limit} from config.json"
                ),
            });
        }
        Ok(Self {
            max_seq_length,
            do_lower_case: raw.do_lower_case,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file under the system temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("braid-model-pooling-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn config(max_position_embeddings: usize) -> BertConfig {
        let json = format!(
            r#"{{"vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16,
            "max_position_embeddings": {max_position_embeddings}}}"#
        );
        BertConfig::parse(&json, Path::new("config.json")).unwrap()
    }

    fn module(kind: &str, path: &str) -> String {
        format!(
            r#"{{"idx": 0, "name": "0", "path": "{path}", "type": "sentence_transformers.models.{kind}"}}"#
        )
    }

    #[test]
    fn modules_transformer_pooling_normalize() {
        let json = format!(
            "[{}, {}, {}]",
            module("Transformer", ""),
            module("Pooling", "1_Pooling"),
            module("Normalize", "2_Normalize")
        );
        let f = TempFile::new("modules3.json", &json);
        let m = Modules::load(&f.0).unwrap();
        assert_eq!(m.transformer, PathBuf::from(""));
        assert_eq!(m.pooling, PathBuf::from("1_Pooling"));
        assert!(m.normalize);

        let json = format!(
            "[{}, {}]",
            module("Transformer", ""),
            module("Pooling", "1_Pooling")
        );
        let f = TempFile::new("modules2.json", &json);
        assert!(!Modules::load(&f.0).unwrap().normalize);
    }

    #[test]
    fn modules_with_dense_or_without_pooling_are_refused() {
        let json = format!(
            "[{}, {}, {}]",
            module("Transformer", ""),
            module("Pooling", "1_Pooling"),
            module("Dense", "2_Dense")
        );
        let f = TempFile::new("modules-dense.json", &json);
        let err = Modules::load(&f.0).unwrap_err();
        assert!(err.to_string().contains("Dense"), "{err}");

        let f = TempFile::new(
            "modules-nopool.json",
            &format!("[{}]", module("Transformer", "")),
        );
        assert!(matches!(
            Modules::load(&f.0),
            Err(ModelError::UnsupportedConfig { .. })
        ));
    }

    #[test]
    fn module_paths_outside_the_model_directory_are_refused() {
        for (path, why) in [
            ("/etc", "absolute"),
            ("../1_Pooling", "`..`"),
            ("1_Pooling/../../x", "`..`"),
        ] {
            let json = format!(
                "[{}, {}]",
                module("Transformer", ""),
                module("Pooling", path)
            );
            let f = TempFile::new("modules-outside.json", &json);
            let err = Modules::load(&f.0).unwrap_err();
            assert!(
                matches!(err, ModelError::ModulePathOutsideModelDir { ref value, .. } if value == path),
                "{path}: {err:?}"
            );
            assert!(err.to_string().contains(why), "{path}: {err}");
        }
        let json = format!(
            "[{}, {}]",
            module("Transformer", "./0_T"),
            module("Pooling", "a/b")
        );
        let f = TempFile::new("modules-inside.json", &json);
        let m = Modules::load(&f.0).unwrap();
        assert_eq!((m.transformer, m.pooling), ("./0_T".into(), "a/b".into()));
    }

    #[test]
    fn pooling_modes() {
        for (field, mode) in [
            ("pooling_mode_mean_tokens", Pooling::Mean),
            ("pooling_mode_cls_token", Pooling::Cls),
            ("pooling_mode_max_tokens", Pooling::Max),
        ] {
            let f = TempFile::new(
                field,
                &format!(r#"{{"word_embedding_dimension": 8, "{field}": true}}"#),
            );
            let p = PoolingConfig::load(&f.0, true, 8).unwrap();
            assert_eq!(
                p,
                PoolingConfig {
                    mode,
                    normalize: true
                }
            );
        }
    }

    #[test]
    fn pooling_refuses_none_several_or_unsupported_modes() {
        for (name, json) in [
            ("none", r#"{"pooling_mode_mean_tokens": false}"#),
            (
                "two",
                r#"{"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true}"#,
            ),
            ("sqrt", r#"{"pooling_mode_mean_sqrt_len_tokens": true}"#),
            (
                "dim",
                r#"{"word_embedding_dimension": 9, "pooling_mode_mean_tokens": true}"#,
            ),
        ] {
            let f = TempFile::new(name, json);
            let err = PoolingConfig::load(&f.0, false, 8).unwrap_err();
            assert!(
                matches!(err, ModelError::UnsupportedConfig { .. }),
                "{name}: {err:?}"
            );
        }
    }

    #[test]
    fn sentence_bert_defaults_and_limits() {
        let absent = SentenceBertConfig::load(None, &config(512)).unwrap();
        assert_eq!(
            absent,
            SentenceBertConfig {
                max_seq_length: 512,
                do_lower_case: false
            }
        );
        assert_eq!(
            SentenceBertConfig::load(None, &config(1024))
                .unwrap()
                .max_seq_length,
            512
        );
        assert_eq!(
            SentenceBertConfig::load(None, &config(64))
                .unwrap()
                .max_seq_length,
            64
        );

        let f = TempFile::new(
            "sbert.json",
            r#"{"max_seq_length": 128, "do_lower_case": true}"#,
        );
        let c = SentenceBertConfig::load(Some(&f.0), &config(512)).unwrap();
        assert_eq!(
            c,
            SentenceBertConfig {
                max_seq_length: 128,
                do_lower_case: true
            }
        );

        let f = TempFile::new("sbert-long.json", r#"{"max_seq_length": 600}"#);
        let err = SentenceBertConfig::load(Some(&f.0), &config(512)).unwrap_err();
        assert!(
            err.to_string().contains("max_position_embeddings = 512"),
            "{err}"
        );
    }
}
