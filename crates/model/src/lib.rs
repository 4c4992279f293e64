//! braid-model: BERT-family sentence-embedding models (all-MiniLM-L6-v2 first) on the braid runtime:
//! loading a model directory into host memory (token ids, f32 weights), then the forward pass on the
//! calling thread's stream.
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
//! - **PaddedBatch**: encodings padded into one row-major rectangle with mask and positions;
//!   **PackedBatch**: the same tokens one sequence after another, no padding, with offsets;
//!   **TokenBatch**: either, in the layout the device prefers.
//! - **BertWeights**: the checkpoint's tensors as `HostTensor`s (f32), Q, K and V fused per layer.
//! - **BertModel**: the weights on a runtime's device and the forward pass (`embed`, `forward`);
//!   small batches replay a CUDA graph per (batch, tokens) bucket (`graphs`).
//! - **ModelError**: every loading failure, with the file and the fix in its message, and every
//!   forward failure (unsupported model, invalid batch, runtime error, an input over
//!   `MAX_INPUT_BYTES`, a non-finite embedding).
//!
//! ```no_run
//! use std::sync::Arc;
//! use braid_model::{default_model_dir, BertModel, ModelDir};
//! use braid_runtime::{cpu::CpuDevice, DType, Runtime, RuntimeConfig};
//!
//! let runtime = Arc::new(Runtime::new(CpuDevice::new(), RuntimeConfig::from_env()?)?);
//! let model = BertModel::load(runtime, &ModelDir::open(default_model_dir())?, DType::F32)?;
//! let embeddings = model.embed(&["hello world", "A man is eating food."])?;
//! assert_eq!(embeddings[0].len(), model.dim());
//! # Ok::<(), braid_model::ModelError>(())
//! ```

mod batch;
mod config;
mod encoder;
mod error;
mod finite;
pub mod graphs;
pub mod load;
mod model_dir;
mod pooling;
mod switch;
mod tokenizer;
mod weights;

pub use batch::{pack_batch, pad_batch, PackedBatch, PaddedBatch, TokenBatch, PACKED_ROW_MULTIPLE};
pub use config::{Activation, BertConfig};
pub use encoder::{BertModel, PACKED_BATCHES_ENV};
pub use error::{ModelError, Result};
pub use model_dir::{
    default_model_dir, ModelDir, ModelSpec, DEFAULT_MODEL_NAME, MODELS_DIR_ENV, MODEL_ENV,
};
pub use pooling::{Modules, Pooling, PoolingConfig, SentenceBertConfig};
pub use tokenizer::{Bounded, Encoding, Token, Tokenizer, TruncationSide, MAX_INPUT_BYTES};
pub use weights::{BertWeights, EmbeddingWeights, HostTensor, LayerWeights};
