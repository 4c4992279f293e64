//! [`BertModel`]: a BERT-family sentence-embedding model on a braid [`Runtime`] — weights on the
//! device, and the forward pass from a [`PaddedBatch`] to one pooled vector per input.
//!
//! # What it promises
//!
//! - Every op runs on the calling thread's current stream (its leased slot), so many threads run
//!   forwards at once with no lock between them; the weights are shared read-only.
//! - Every intermediate comes from the runtime's caching allocator and is dropped as soon as it is
//!   dead (each layer keeps at most the residual, the op's inputs and its output alive), so the next
//!   op reuses its memory on the same stream without a host sync.
//! - Padding never changes a sentence's embedding: attention masks padded keys out, positions restart
//!   in every row, and pooling skips padded tokens.
//! - A batch runs padded ([`BertModel::forward`]) or packed ([`BertModel::forward_packed`]: the tokens
//!   of all sequences in one `[tokens, hidden]` matrix, so no linear layer computes padding; attention
//!   and pooling take the sequences' offsets). Both give the same embeddings (bit for bit on the CPU);
//!   [`BertModel::prepare`] picks the layout the device prefers.
//! - The compute dtype is a parameter; a backend that lacks it for an op reports a clear
//!   `Unsupported` error (the CPU backend computes in f32).
//!
//! # Layout of one encoder layer
//!
//! Tokens are the rows of a `[batch * seq, hidden]` matrix. Q, K and V come from one fused linear
//! (`[tokens, 3 * hidden]`, Q | K | V); [`Runtime::attention`] reads each head straight out of that
//! matrix (one fused kernel on CUDA; strided batched GEMMs around a softmax on the CPU) and writes the
//! context into `[tokens, hidden]` with heads interleaved — no transposes. Post-LayerNorm, as in BERT:
//! `x = LN(x + Attn(x))`, `x = LN(x + FFN(x))`, each LayerNorm also adding the bias of the linear
//! before it. On CUDA a layer is 8 launches: 4 GEMMs (the QKV bias in the first one's cuBLASLt
//! epilogue), attention, bias+GELU and 2 LayerNorms.

use std::sync::Arc;

use braid_runtime::ops::{Gelu, Ops};
use braid_runtime::{DType, PackedSequences, Runtime, RuntimeError, Tensor};

use crate::batch::{PackedBatch, PaddedBatch, TokenBatch};
use crate::config::{Activation, BertConfig};
use crate::error::{ModelError, Result};
use crate::model_dir::{ModelDir, ModelSpec};
use crate::pooling::{Pooling, PoolingConfig};
use crate::tokenizer::Encoding;
use crate::weights::{BertWeights, HostTensor, LayerWeights};

/// One encoder layer's weights on the device.
struct DeviceLayer<D: Ops> {
    qkv_weight: Tensor<D>,
    qkv_bias: Tensor<D>,
    attn_out_weight: Tensor<D>,
    attn_out_bias: Tensor<D>,
    attn_ln_gamma: Tensor<D>,
    attn_ln_beta: Tensor<D>,
    ffn_in_weight: Tensor<D>,
    ffn_in_bias: Tensor<D>,
    ffn_out_weight: Tensor<D>,
    ffn_out_bias: Tensor<D>,
    ffn_ln_gamma: Tensor<D>,
    ffn_ln_beta: Tensor<D>,
}

/// The embedding tables and their LayerNorm on the device.
struct DeviceEmbeddings<D: Ops> {
    word: Tensor<D>,
    position: Tensor<D>,
    token_type: Tensor<D>,
    ln_gamma: Tensor<D>,
    ln_beta: Tensor<D>,
}

/// What the layers and the pooling need of a batch beside its token states: the mask, and the
/// layout's shape (padded) or where each sequence lies (packed; its mask is all ones).
enum Layout<D: Ops> {
    Padded {
        mask: Tensor<D>,
        batch: usize,
        seq: usize,
    },
    Packed {
        mask: Tensor<D>,
        sequences: PackedSequences<D>,
    },
}

/// A sentence-embedding model whose weights live on a runtime's device. `Sync`: share it (by
/// reference or `Arc`) among every thread that embeds.
pub struct BertModel<D: Ops> {
    runtime: Arc<Runtime<D>>,
    config: BertConfig,
    pooling: PoolingConfig,
    spec: ModelSpec,
    dtype: DType,
    embeddings: DeviceEmbeddings<D>,
    layers: Vec<DeviceLayer<D>>,
}

impl<D: Ops> BertModel<D> {
    /// Loads the model in `dir` (spec, tokenizer and weights) onto `runtime`'s device.
    pub fn load(runtime: Arc<Runtime<D>>, dir: &ModelDir, dtype: DType) -> Result<Self> {
        let spec = dir.load_spec()?;
        let weights = dir.load_weights(&spec.config)?;
        Self::new(runtime, spec, &weights, dtype)
    }

    /// Uploads `weights` (which must match `spec.config`) and checks that the forward supports the
    /// model's activation, pooling and `dtype`.
    pub fn new(
        runtime: Arc<Runtime<D>>,
        spec: ModelSpec,
        weights: &BertWeights,
        dtype: DType,
    ) -> Result<Self> {
        let config = spec.config.clone();
        let pooling = spec.pooling;
        check_supported(&config, pooling, dtype, runtime.device())?;
        // Uploaded on the default stream and synchronised: every worker stream then reads the weights
        // with no event, and `Drop` synchronises all streams before the buffers go back.
        let _on_default = runtime
            .streams()
            .set_current_stream(runtime.streams().default_stream());
        let upload = |t: &HostTensor| runtime.from_f32_as(&t.data, &t.shape, dtype);
        let e = &weights.embeddings;
        let embeddings = DeviceEmbeddings {
            word: upload(&e.word)?,
            position: upload(&e.position)?,
            token_type: upload(&e.token_type)?,
            ln_gamma: upload(&e.ln_gamma)?,
            ln_beta: upload(&e.ln_beta)?,
        };
        let layers = weights
            .layers
            .iter()
            .map(|l: &LayerWeights| {
                Ok(DeviceLayer {
                    qkv_weight: upload(&l.qkv_weight)?,
                    qkv_bias: upload(&l.qkv_bias)?,
                    attn_out_weight: upload(&l.attn_out_weight)?,
                    attn_out_bias: upload(&l.attn_out_bias)?,
                    attn_ln_gamma: upload(&l.attn_ln_gamma)?,
                    attn_ln_beta: upload(&l.attn_ln_beta)?,
                    ffn_in_weight: upload(&l.ffn_in_weight)?,
                    ffn_in_bias: upload(&l.ffn_in_bias)?,
                    ffn_out_weight: upload(&l.ffn_out_weight)?,
                    ffn_out_bias: upload(&l.ffn_out_bias)?,
                    ffn_ln_gamma: upload(&l.ffn_ln_gamma)?,
                    ffn_ln_beta: upload(&l.ffn_ln_beta)?,
                })
            })
            .collect::<std::result::Result<Vec<_>, RuntimeError>>()?;
        runtime.synchronize()?;
        Ok(Self {
            runtime,
            config,
            pooling,
            spec,
            dtype,
            embeddings,
            layers,
        })
    }

    /// The runtime the model runs on.
    pub fn runtime(&self) -> &Arc<Runtime<D>> {
        &self.runtime
    }

    /// The model's config, pooling, sequence limit and tokenizer.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Width of an embedding.
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Embeddings of `texts`, one vector per input in input order, computed as one batch (in the
    /// layout the device prefers, [`TokenBatch::new`]) on the calling thread's current stream.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let encodings = self.spec.tokenizer.encode_batch(texts)?;
        self.embed_prepared(&self.prepare(&encodings))
    }

    /// `encodings` as a batch in the layout this model's device prefers: packed where packed batches
    /// run faster ([`Ops::prefers_packed`]) and the lengths differ, else padded.
    pub fn prepare(&self, encodings: &[Encoding]) -> TokenBatch {
        let packed = self.runtime.device().prefers_packed();
        TokenBatch::new(encodings, self.config.pad_token_id, packed)
    }

    /// Embeddings of a prepared batch, copied to the host (waits for the current stream).
    pub fn embed_prepared(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        match batch {
            TokenBatch::Padded(batch) => self.embed_batch(batch),
            TokenBatch::Packed(batch) => self.embed_packed(batch),
        }
    }

    /// Embeddings of a padded batch, copied to the host (waits for the current stream).
    pub fn embed_batch(&self, batch: &PaddedBatch) -> Result<Vec<Vec<f32>>> {
        if batch.batch == 0 {
            return Ok(Vec::new());
        }
        let pooled = self.forward(batch)?;
        self.download(&pooled)
    }

    /// Embeddings of a packed batch, copied to the host (waits for the current stream).
    pub fn embed_packed(&self, batch: &PackedBatch) -> Result<Vec<Vec<f32>>> {
        if batch.sequences() == 0 {
            return Ok(Vec::new());
        }
        let pooled = self.forward_packed(batch)?;
        self.download(&pooled)
    }

    /// The pooled embeddings on the host, one vector per row, checked finite.
    fn download(&self, pooled: &Tensor<D>) -> Result<Vec<Vec<f32>>> {
        let flat = self.runtime.to_vec_f32(pooled)?;
        crate::finite::check_embeddings(&flat, self.dim())?;
        Ok(flat.chunks(self.dim()).map(<[f32]>::to_vec).collect())
    }

    /// The forward pass: `[batch, hidden]` pooled (and, if the model says so, L2-normalised)
    /// embeddings on the device, encoded on the current stream. Does not wait for the device.
    pub fn forward(&self, batch: &PaddedBatch) -> Result<Tensor<D>> {
        self.check_batch(batch)?;
        let (b, s) = (batch.batch, batch.seq);
        let layout = Layout::Padded {
            mask: self.runtime.from_f32(&batch.mask, &[b, s])?,
            batch: b,
            seq: s,
        };
        let x = self.embed_tokens(&batch.ids, &batch.positions, &batch.type_ids)?;
        self.encode(x, &layout)
    }

    /// [`BertModel::forward`] of a packed batch: no padded token is computed; the same embeddings.
    pub fn forward_packed(&self, batch: &PackedBatch) -> Result<Tensor<D>> {
        self.check_packed(batch)?;
        let rt = &*self.runtime;
        let layout = Layout::Packed {
            mask: rt.full(&[batch.tokens()], 1.0)?,
            sequences: rt.packed_sequences(&batch.offsets)?,
        };
        let x = self.embed_tokens(&batch.ids, &batch.positions, &batch.type_ids)?;
        self.encode(x, &layout)
    }

    /// The encoder layers on the embedded tokens `x`, then pooling (and normalisation).
    fn encode(&self, mut x: Tensor<D>, layout: &Layout<D>) -> Result<Tensor<D>> {
        let rt = &*self.runtime;
        for layer in &self.layers {
            x = self.encoder_layer(layer, x, layout)?;
        }
        let mut pooled = match (self.pooling.mode, layout) {
            (Pooling::Mean, Layout::Padded { mask, batch, seq }) => {
                rt.mean_pool(&x.reshape(&[*batch, *seq, self.dim()])?, mask)?
            }
            (Pooling::Mean, Layout::Packed { mask, sequences }) => {
                rt.mean_pool_packed(&x, mask, sequences)?
            }
            (Pooling::Cls, layout) => {
                let first_tokens: Vec<u32> = match layout {
                    Layout::Padded { batch, seq, .. } => {
                        (0..batch * seq).step_by(*seq).map(|t| t as u32).collect()
                    }
                    Layout::Packed { sequences, .. } => {
                        let offsets = sequences.offsets();
                        offsets[..offsets.len() - 1].to_vec()
                    }
                };
                let ids = rt.from_u32(&first_tokens, &[first_tokens.len()])?;
                rt.gather_rows(&x, &ids, None)?
                    .expect("gather_rows without an accumulator returns a tensor")
            }
            (Pooling::Max, _) => unreachable!("refused by check_supported"),
        };
        if self.pooling.normalize {
            rt.l2_normalize(&mut pooled)?;
        }
        Ok(pooled)
    }

    /// Word + position + token-type embeddings, then LayerNorm: `[tokens, hidden]`.
    fn embed_tokens(&self, ids: &[u32], positions: &[u32], type_ids: &[u32]) -> Result<Tensor<D>> {
        let rt = &*self.runtime;
        let e = &self.embeddings;
        let tokens = ids.len();
        let ids = rt.from_u32(ids, &[tokens])?;
        let mut x = rt
            .gather_rows(&e.word, &ids, None)?
            .expect("gather_rows without an accumulator returns a tensor");
        drop(ids);
        let positions = rt.from_u32(positions, &[tokens])?;
        rt.gather_rows(&e.position, &positions, Some(&mut x))?;
        drop(positions);
        let type_ids = rt.from_u32(type_ids, &[tokens])?;
        rt.gather_rows(&e.token_type, &type_ids, Some(&mut x))?;
        drop(type_ids);
        let eps = self.config.layer_norm_eps as f32;
        Ok(rt.layer_norm(&x, None, None, &e.ln_gamma, &e.ln_beta, eps)?)
    }

    /// One post-LN encoder layer on `x [tokens, hidden]`; consumes `x` so it is freed once dead. The
    /// biases of the attention output and FFN output linears are added by the LayerNorm after them
    /// (one pass instead of two).
    fn encoder_layer(
        &self,
        layer: &DeviceLayer<D>,
        x: Tensor<D>,
        layout: &Layout<D>,
    ) -> Result<Tensor<D>> {
        let rt = &*self.runtime;
        let eps = self.config.layer_norm_eps as f32;
        let qkv = rt.linear(&x, &layer.qkv_weight, Some(&layer.qkv_bias))?;
        let heads = self.config.num_attention_heads;
        let context = match layout {
            Layout::Padded { mask, .. } => rt.attention(&qkv, mask, heads)?,
            Layout::Packed { mask, sequences } => {
                rt.attention_packed(&qkv, mask, sequences, heads)?
            }
        };
        drop(qkv);
        let attn_out = rt.linear(&context, &layer.attn_out_weight, None)?;
        drop(context);
        let x_attended = rt.layer_norm(
            &attn_out,
            Some(&layer.attn_out_bias),
            Some(&x),
            &layer.attn_ln_gamma,
            &layer.attn_ln_beta,
            eps,
        )?;
        drop((x, attn_out));
        let x = x_attended;
        let mut hidden = rt.linear(&x, &layer.ffn_in_weight, None)?;
        let gelu = match self.config.hidden_act {
            Activation::GeluTanh => Gelu::Tanh,
            // `check_supported` refused every other activation at load.
            _ => Gelu::Erf,
        };
        rt.bias_gelu(&mut hidden, &layer.ffn_in_bias, gelu)?;
        let ffn_out = rt.linear(&hidden, &layer.ffn_out_weight, None)?;
        drop(hidden);
        Ok(rt.layer_norm(
            &ffn_out,
            Some(&layer.ffn_out_bias),
            Some(&x),
            &layer.ffn_ln_gamma,
            &layer.ffn_ln_beta,
            eps,
        )?)
    }

    /// A batch the model can run: consistent vectors, sequences within the position table, ids
    /// within the vocabulary (a bad id would otherwise read outside the embedding table).
    fn check_batch(&self, batch: &PaddedBatch) -> Result<()> {
        let tokens = batch.batch * batch.seq;
        let invalid = |detail: String| Err(ModelError::InvalidBatch { detail });
        if [
            batch.ids.len(),
            batch.type_ids.len(),
            batch.mask.len(),
            batch.positions.len(),
        ]
        .iter()
        .any(|&n| n != tokens)
        {
            return invalid(format!(
                "a batch of {} x {} needs {tokens} ids, type ids, mask entries and positions",
                batch.batch, batch.seq
            ));
        }
        if batch.seq > self.config.max_position_embeddings {
            return invalid(format!(
                "sequence length {} exceeds the model's {} positions",
                batch.seq, self.config.max_position_embeddings
            ));
        }
        self.check_ids(&batch.ids, &batch.type_ids, &batch.positions)
    }

    /// A packed batch the model can run: offsets from 0 to the token count, never decreasing, no
    /// empty sequence, every sequence within the position table, ids within the vocabulary.
    fn check_packed(&self, batch: &PackedBatch) -> Result<()> {
        let tokens = batch.ids.len();
        let invalid = |detail: String| Err(ModelError::InvalidBatch { detail });
        let offsets = &batch.offsets;
        if offsets.first() != Some(&0)
            || offsets.last().map(|&t| t as usize) != Some(tokens)
            || offsets.windows(2).any(|w| w[0] >= w[1])
        {
            return invalid(format!(
                "packed offsets must rise from 0 to the {tokens} tokens, every sequence non-empty; \
                 got {} offsets",
                offsets.len()
            ));
        }
        if batch.type_ids.len() != tokens || batch.positions.len() != tokens {
            return invalid(format!(
                "a packed batch of {tokens} tokens needs {tokens} type ids and positions"
            ));
        }
        if batch.longest() > self.config.max_position_embeddings {
            return invalid(format!(
                "sequence length {} exceeds the model's {} positions",
                batch.longest(),
                self.config.max_position_embeddings
            ));
        }
        self.check_ids(&batch.ids, &batch.type_ids, &batch.positions)
    }

    /// Ids within the vocabulary, type ids and positions within their tables (a bad id would otherwise
    /// read outside an embedding table).
    fn check_ids(&self, ids: &[u32], type_ids: &[u32], positions: &[u32]) -> Result<()> {
        let in_range = |ids: &[u32], limit: usize| ids.iter().all(|&i| (i as usize) < limit);
        if !in_range(ids, self.config.vocab_size)
            || !in_range(type_ids, self.config.type_vocab_size)
            || !in_range(positions, self.config.max_position_embeddings)
        {
            return Err(ModelError::InvalidBatch {
                detail: format!(
                    "ids must be < vocab_size {}, type ids < {}, positions < {}",
                    self.config.vocab_size,
                    self.config.type_vocab_size,
                    self.config.max_position_embeddings
                ),
            });
        }
        Ok(())
    }
}

impl<D: Ops> Drop for BertModel<D> {
    fn drop(&mut self) {
        // Worker streams may still read the weights: wait for them before the buffers are reused.
        if let Err(e) = self.runtime.streams().synchronize_all() {
            tracing::warn!(error = %e, "a stream failed before the model's weights were freed");
        }
    }
}

/// Refuses, before any upload, what the forward cannot compute.
fn check_supported<D: Ops>(
    config: &BertConfig,
    pooling: PoolingConfig,
    dtype: DType,
    device: &D,
) -> Result<()> {
    if config.hidden_act == Activation::Relu {
        return Err(ModelError::UnsupportedForward {
            what: "hidden_act = relu".into(),
            allowed: "gelu, gelu_new, gelu_pytorch_tanh",
        });
    }
    if pooling.mode == Pooling::Max {
        return Err(ModelError::UnsupportedForward {
            what: "max pooling (1_Pooling/config.json)".into(),
            allowed: "mean or CLS pooling",
        });
    }
    if !device.compute_dtypes().contains(&dtype) {
        return Err(ModelError::UnsupportedForward {
            what: format!("compute dtype {dtype} on the {} backend", device.backend()),
            allowed: "f32 on every backend; f16 and bf16 on CUDA; f16 on wgpu where the adapter has SHADER_F16",
        });
    }
    Ok(())
}
