//! `BertWeights`: a BERT checkpoint's tensors, read from `model.safetensors` into host memory as
//! f32, grouped the way a forward uses them.
//!
//! Loading memory-maps the file (memmap2), parses it with the safetensors crate, and copies each
//! tensor it needs into an owned `HostTensor`, converting F32, F16 and BF16 to f32; the map is
//! dropped before `load` returns. Tensors it does not need (the I64 `embeddings.position_ids`
//! buffer, the optional pooler, MLM heads) are never read, whatever their dtype.
//!
//! Names: transformers' `BertModel` layout, with the prefix detected from where
//! `embeddings.word_embeddings.weight` sits (none for all-MiniLM-L6-v2, `bert.` for checkpoints
//! saved from `BertFor*` heads); LayerNorm parameters are read as `weight`/`bias` or, in old
//! TensorFlow-converted files, `gamma`/`beta`.
//!
//! Promises: every tensor has the shape the config implies (checked before conversion; a mismatch
//! names the tensor and both shapes), the file has no encoder layer beyond `num_hidden_layers`, and
//! `LayerWeights::qkv_weight` is query, key and value stacked along rows, in that order, so one
//! GEMM against it yields `[q | k | v]` per token. Matrices keep PyTorch's `nn.Linear` layout,
//! `[out_features, in_features]`, row-major.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::config::BertConfig;
use crate::error::{ModelError, Result};

/// A dense row-major f32 tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` elements, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor of `shape` holding `data`; panics if the element count disagrees.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "invariant violated: a HostTensor of shape {shape:?} needs as many elements"
        );
        Self { shape, data }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// The embedding block: three tables summed, then a LayerNorm.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingWeights {
    /// `[vocab_size, hidden]`.
    pub word: HostTensor,
    /// `[max_position_embeddings, hidden]`.
    pub position: HostTensor,
    /// `[type_vocab_size, hidden]`.
    pub token_type: HostTensor,
    /// LayerNorm scale, `[hidden]`.
    pub ln_gamma: HostTensor,
    /// LayerNorm shift, `[hidden]`.
    pub ln_beta: HostTensor,
}

/// One encoder layer: self-attention then feed-forward, each followed by residual + LayerNorm.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// Query, key and value weights stacked along rows: `[3 * hidden, hidden]`.
    pub qkv_weight: HostTensor,
    /// Query, key and value biases concatenated: `[3 * hidden]`.
    pub qkv_bias: HostTensor,
    /// Attention output projection, `[hidden, hidden]`.
    pub attn_out_weight: HostTensor,
    /// `[hidden]`.
    pub attn_out_bias: HostTensor,
    /// LayerNorm after attention, scale `[hidden]`.
    pub attn_ln_gamma: HostTensor,
    /// LayerNorm after attention, shift `[hidden]`.
    pub attn_ln_beta: HostTensor,
    /// Feed-forward up projection, `[intermediate, hidden]`.
    pub ffn_in_weight: HostTensor,
    /// `[intermediate]`.
    pub ffn_in_bias: HostTensor,
    /// Feed-forward down projection, `[hidden, intermediate]`.
    pub ffn_out_weight: HostTensor,
    /// `[hidden]`.
    pub ffn_out_bias: HostTensor,
    /// LayerNorm after the feed-forward, scale `[hidden]`.
    pub ffn_ln_gamma: HostTensor,
    /// LayerNorm after the feed-forward, shift `[hidden]`.
    pub ffn_ln_beta: HostTensor,
}

/// All weights a BERT encoder forward needs.
#[derive(Debug, Clone, PartialEq)]
pub struct BertWeights {
    /// The embedding block.
    pub embeddings: EmbeddingWeights,
    /// `num_hidden_layers` encoder layers, first to last.
    pub layers: Vec<LayerWeights>,
}

impl BertWeights {
    /// Reads `model.safetensors` at `path`, checking every tensor against `config`.
    pub fn load(path: &Path, config: &BertConfig) -> Result<Self> {
        let io = |source| ModelError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this call: every tensor is copied out of it
        // before `load` returns, and no reference into it escapes. Like every file-backed map it
        // assumes no other process truncates or rewrites the file meanwhile; model files are
        // written once (by `braid fetch-model` or a download) and only read afterwards.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let tensors = SafeTensors::deserialize(&map).map_err(|source| ModelError::Safetensors {
            path: path.to_owned(),
            source,
        })?;
        Checkpoint::new(path, tensors)?.read_all(config)
    }
}

/// A parsed safetensors file and the name prefix its BERT tensors carry.
struct Checkpoint<'a> {
    path: &'a Path,
    tensors: SafeTensors<'a>,
    prefix: String,
}

/// The tensor whose position reveals the prefix.
const ANCHOR: &str = "embeddings.word_embeddings.weight";

impl<'a> Checkpoint<'a> {
    fn new(path: &'a Path, tensors: SafeTensors<'a>) -> Result<Self> {
        // The shortest prefix wins: "" over "bert.", should a file hold both.
        let prefix = tensors
            .names()
            .into_iter()
            .filter_map(|name| name.strip_suffix(ANCHOR))
            .filter(|prefix| prefix.is_empty() || prefix.ends_with('.'))
            .min_by_key(|prefix| prefix.len())
            .map(str::to_owned)
            .ok_or_else(|| ModelError::MissingTensor {
                path: path.to_owned(),
                name: ANCHOR.to_owned(),
            })?;
        Ok(Self {
            path,
            tensors,
            prefix,
        })
    }

    fn read_all(&self, config: &BertConfig) -> Result<BertWeights> {
        let h = config.hidden_size;
        let (ln_gamma, ln_beta) = self.layer_norm("embeddings.LayerNorm", h)?;
        let embeddings = EmbeddingWeights {
            word: self.read("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position: self.read(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            token_type: self.read(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, h],
            )?,
            ln_gamma,
            ln_beta,
        };

        let beyond = format!("{}encoder.layer.{}.", self.prefix, config.num_hidden_layers);
        if let Some(name) = self
            .tensors
            .names()
            .into_iter()
            .find(|n| n.starts_with(&beyond))
        {
            return Err(ModelError::ExtraLayer {
                path: self.path.to_owned(),
                name: name.to_owned(),
                layers: config.num_hidden_layers,
            });
        }
        let layers = (0..config.num_hidden_layers)
            .map(|i| self.read_layer(&format!("encoder.layer.{i}"), config))
            .collect::<Result<_>>()?;
        Ok(BertWeights { embeddings, layers })
    }

    fn read_layer(&self, base: &str, config: &BertConfig) -> Result<LayerWeights> {
        let (h, ff) = (config.hidden_size, config.intermediate_size);
        let mut qkv_weight = Vec::with_capacity(3 * h * h);
        let mut qkv_bias = Vec::with_capacity(3 * h);
        for part in ["query", "key", "value"] {
            let attn = format!("{base}.attention.self.{part}");
            qkv_weight.extend(self.read(&format!("{attn}.weight"), &[h, h])?.data);
            qkv_bias.extend(self.read(&format!("{attn}.bias"), &[h])?.data);
        }
        let (attn_ln_gamma, attn_ln_beta) =
            self.layer_norm(&format!("{base}.attention.output.LayerNorm"), h)?;
        let (ffn_ln_gamma, ffn_ln_beta) =
            self.layer_norm(&format!("{base}.output.LayerNorm"), h)?;
        Ok(LayerWeights {
            qkv_weight: HostTensor::new(vec![3 * h, h], qkv_weight),
            qkv_bias: HostTensor::new(vec![3 * h], qkv_bias),
            attn_out_weight: self
                .read(&format!("{base}.attention.output.dense.weight"), &[h, h])?,
            attn_out_bias: self.read(&format!("{base}.attention.output.dense.bias"), &[h])?,
            attn_ln_gamma,
            attn_ln_beta,
            ffn_in_weight: self.read(&format!("{base}.intermediate.dense.weight"), &[ff, h])?,
            ffn_in_bias: self.read(&format!("{base}.intermediate.dense.bias"), &[ff])?,
            ffn_out_weight: self.read(&format!("{base}.output.dense.weight"), &[h, ff])?,
            ffn_out_bias: self.read(&format!("{base}.output.dense.bias"), &[h])?,
            ffn_ln_gamma,
            ffn_ln_beta,
        })
    }

    /// A LayerNorm's (scale, shift), named `weight`/`bias` or, in old files, `gamma`/`beta`.
    fn layer_norm(&self, base: &str, h: usize) -> Result<(HostTensor, HostTensor)> {
        let old = self.has(&format!("{base}.gamma")) && !self.has(&format!("{base}.weight"));
        let (scale, shift) = if old {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        Ok((
            self.read(&format!("{base}.{scale}"), &[h])?,
            self.read(&format!("{base}.{shift}"), &[h])?,
        ))
    }

    fn has(&self, name: &str) -> bool {
        self.tensors
            .tensor(&format!("{}{name}", self.prefix))
            .is_ok()
    }

    /// Reads tensor `name` (without prefix) as f32 after checking its shape is `shape`.
    fn read(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let full = format!("{}{name}", self.prefix);
        let view = self
            .tensors
            .tensor(&full)
            .map_err(|_| ModelError::MissingTensor {
                path: self.path.to_owned(),
                name: full.clone(),
            })?;
        if view.shape() != shape {
            return Err(ModelError::TensorShape {
                path: self.path.to_owned(),
                name: full,
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        // safetensors checked at parse time that each tensor's bytes match its shape and dtype.
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: self.path.to_owned(),
                    name: full,
                    dtype: other.to_string(),
                })
            }
        };
        Ok(HostTensor::new(shape.to_vec(), data))
    }
}
