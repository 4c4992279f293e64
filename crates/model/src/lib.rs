//! braid-model: loading BERT-family sentence-embedding models (all-MiniLM-L6-v2 first) into host
//! memory, up to token ids and f32 weights. The forward pass lives above the runtime; this crate
//! does not depend on it.
//!
//! Vocabulary:
//! - **ModelDir**: a Hugging Face / sentence-transformers model directory whose required files
//!   exist; `default_model_dir` says where braid looks when none is given.
//! - **ModelSpec**: everything but the weights: `BertConfig`, `PoolingConfig`, `max_seq_length`
//!   and the `Tokenizer`.
//! - **BertConfig**: the encoder's validated hyper-parameters (`config.json`).
//! - **PoolingConfig**: how token states become one vector (`Pooling`) and whether it is
//!   L2-normalised (`modules.json`, `1_Pooling/config.json`).
//! - **Tokenizer** / **Encoding**: text to unpadded ids, truncated at `max_seq_length`.
//! - **PaddedBatch**: encodings padded into one row-major rectangle with mask and positions.
//! - **BertWeights**: the checkpoint's tensors as `HostTensor`s (f32), Q, K and V fused per layer.
//! - **ModelError**: every loading failure, with the file and the fix in its message.
//!
//! ```no_run
//! use braid_model::{default_model_dir, pad_batch, ModelDir};
//!
//! let dir = ModelDir::open(default_model_dir())?;
//! let spec = dir.load_spec()?;
//! let weights = dir.load_weights(&spec.config)?;
//! let encodings = spec.tokenizer.encode_batch(&["hello world", "A man is eating food."])?;
//! let batch = pad_batch(&encodings, spec.config.pad_token_id);
//! assert_eq!(weights.layers.len(), spec.config.num_hidden_layers);
//! # let _ = batch;
//! # Ok::<(), braid_model::ModelError>(())
//! ```

mod batch;
mod config;
mod error;
mod model_dir;
mod pooling;
mod tokenizer;
mod weights;

pub use batch::{pad_batch, PaddedBatch};
pub use config::{Activation, BertConfig};
pub use error::{ModelError, Result};
pub use model_dir::{
    default_model_dir, ModelDir, ModelSpec, DEFAULT_MODEL_NAME, MODELS_DIR_ENV, MODEL_ENV,
};
pub use pooling::{Modules, Pooling, PoolingConfig, SentenceBertConfig};
pub use tokenizer::{Encoding, Tokenizer};
pub use weights::{BertWeights, EmbeddingWeights, HostTensor, LayerWeights};
