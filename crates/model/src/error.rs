//! `ModelError`: everything that can go wrong while loading a model directory.
//!
//! One enum for the crate (STYLE.md, "Applied to braid" 11). Every message names the file it is
//! about, says what was wrong, and says what is allowed or how to fix it, so that a user who points
//! braid at the wrong directory learns what to do from the message alone. An input longer than the
//! model's `max_seq_length` tokens is not an error: the tokenizer truncates it, as
//! sentence-transformers does; one longer than `MAX_INPUT_BYTES` bytes is
//! ([`ModelError::InputTooLong`]). An embedding that comes out NaN or infinite is an error too
//! ([`ModelError::NonFiniteEmbedding`]), never a silently wrong vector. The two file readers here
//! attach the file's path to I/O and JSON failures, so that every config file is read the same way.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// How to get a usable model directory; appended to "not found" messages.
pub(crate) const FETCH_HINT: &str = "fetch the default model with `braid fetch-model` or \
     pass --model DIR / set BRAID_MODEL";

/// An error while loading a model: its directory, config, pooling, tokenizer or weights.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model directory does not exist or is not a directory.
    #[error("model directory {} not found: {FETCH_HINT}", .path.display())]
    ModelDirNotFound {
        /// The directory that was looked for.
        path: PathBuf,
    },

    /// A file the model directory must (or, per another file, should) contain is absent.
    #[error("model file {} not found: {why}; {FETCH_HINT}", .path.display())]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
        /// Why it is needed.
        why: &'static str,
    },

    /// A file exists but could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file could not be parsed into what braid expects of it.
    #[error("cannot parse {} ({what}): {source}", .path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What the file was expected to hold, e.g. "a BERT config.json".
        what: &'static str,
        /// serde's message, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// A config file parsed, but one of its values is one braid does not support.
    #[error("{}: unsupported {field} = {value}: {allowed}", .path.display())]
    UnsupportedConfig {
        /// The file holding the value.
        path: PathBuf,
        /// The field (or module) that is unsupported.
        field: &'static str,
        /// The value found.
        value: String,
        /// What is allowed instead.
        allowed: String,
    },

    /// The safetensors file is unreadable: truncated, corrupt, or not safetensors at all.
    #[error(
        "cannot read safetensors file {}: {source}; the file may be truncated or corrupt \
         (re-fetch the model)",
        .path.display()
    )]
    Safetensors {
        /// The weights file.
        path: PathBuf,
        /// The safetensors crate's error.
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// A tensor the config calls for is absent from the weights file.
    #[error(
        "{}: tensor `{name}` not found; a BERT checkpoint for this config.json needs it \
         (tensor names may carry a `bert.` prefix or none)",
        .path.display()
    )]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor name looked for, with the detected prefix.
        name: String,
    },

    /// The weights file holds more encoder layers than config.json declares.
    #[error(
        "{}: tensor `{name}` belongs to a layer beyond num_hidden_layers = {layers} in \
         config.json; the config and the weights do not belong together",
        .path.display()
    )]
    ExtraLayer {
        /// The weights file.
        path: PathBuf,
        /// A tensor of the first layer past the configured count.
        name: String,
        /// `num_hidden_layers` from the config.
        layers: usize,
    },

    /// A tensor's shape disagrees with the config.
    #[error(
        "{}: tensor `{name}` has shape {found:?}, but config.json implies {expected:?}; \
         the config and the weights do not belong together",
        .path.display()
    )]
    TensorShape {
        /// The weights file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// A tensor is stored in a dtype braid does not convert.
    #[error(
        "{}: tensor `{name}` is stored as {dtype}; braid reads F32, F16 and BF16 weights",
        .path.display()
    )]
    UnsupportedDtype {
        /// The weights file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The dtype in the file.
        dtype: String,
    },

    /// tokenizer.json could not be loaded or configured.
    #[error(
        "cannot load tokenizer {}: {message}; it must be a Hugging Face `tokenizers` JSON file",
        .path.display()
    )]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The tokenizers crate's message.
        message: String,
    },

    /// The model loaded, but the forward pass cannot compute it (yet).
    #[error("the forward pass does not support {what}; supported: {allowed}")]
    UnsupportedForward {
        /// What the model asks for.
        what: String,
        /// What is supported instead.
        allowed: &'static str,
    },

    /// A padded batch handed to the forward is inconsistent with itself or with the model.
    #[error("invalid batch: {detail}")]
    InvalidBatch {
        /// What is wrong and what is allowed.
        detail: String,
    },

    /// The runtime failed: out of device memory, no stream slot, a failed stream, a device error.
    #[error(transparent)]
    Runtime(#[from] braid_runtime::RuntimeError),

    /// Tokenizing an input failed.
    #[error("tokenizing the input failed: {message}")]
    Encode {
        /// The tokenizers crate's message.
        message: String,
    },

    /// `modules.json` names a module directory outside the model directory.
    #[error(
        "{}: module path {value:?} leads outside the model directory {} ({why}); module paths \
         must be relative paths that stay inside the model directory",
        .file.display(),
        .model_dir.display()
    )]
    ModulePathOutsideModelDir {
        /// The `modules.json` file.
        file: PathBuf,
        /// The path as written in the file.
        value: String,
        /// The model directory.
        model_dir: PathBuf,
        /// What is wrong with it: an absolute path, a `..` component, or where a symlink leads.
        why: String,
    },

    /// An input is longer than braid tokenizes; it is refused before any tokenization.
    #[error(
        "input {index} is {bytes} bytes long, over the limit of {limit} bytes (MAX_INPUT_BYTES); \
         only its first max_seq_length tokens would be embedded, so pass a shorter prefix of it \
         or split it into several inputs"
    )]
    InputTooLong {
        /// The input's index in the call (0 for a single input).
        index: usize,
        /// Its length in bytes (UTF-8).
        bytes: usize,
        /// The limit, [`crate::MAX_INPUT_BYTES`].
        limit: usize,
    },

    /// An embedding came out with a NaN or infinite component.
    #[error(
        "the embedding of input {index} (of {batch} in this call) has a non-finite value ({value}); \
         likely causes: NaN or infinite values in the model's weights (check the checkpoint), or \
         an overflow of f16 compute (compute in f32 or bf16 instead)"
    )]
    NonFiniteEmbedding {
        /// The index, in the call's inputs, of the first input whose embedding is not finite.
        index: usize,
        /// How many inputs the call embedded.
        batch: usize,
        /// The first non-finite value in that embedding (NaN, inf or -inf).
        value: f32,
    },
}

/// Reads a text file; a failure names the file.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads and parses a JSON file; a failure names the file and `what` it should hold.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T> {
    serde_json::from_str(&read_text(path)?).map_err(|source| ModelError::Json {
        path: path.to_owned(),
        what,
        source,
    })
}
