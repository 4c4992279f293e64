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
//! - Small batches on a device that can capture replay a CUDA graph per (batch, tokens) bucket
//!   ([`crate::graphs`]); the forward is split for it into uploading the inputs, the device-only
//!   forward (what a graph captures) and the download.
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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use braid_runtime::ops::{Gelu, Ops};
use braid_runtime::{DType, PackedSequences, Runtime, RuntimeError, Tensor};

use crate::batch::{PackedBatch, PaddedBatch, TokenBatch};
use crate::config::{Activation, BertConfig};
use crate::error::{ModelError, Result};
use crate::graphs::GraphCache;
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

/// The environment variable that turns packed batches off (`0`, `off`, `false`; read at load).
pub const PACKED_BATCHES_ENV: &str = "BRAID_PACKED_BATCHES";

/// A batch's inputs on the device, as the forward reads them: padded (`[batch * seq]` token rows) or
/// packed (`[tokens]`, with `sequences`).
pub(crate) struct DeviceInputs<D: Ops> {
    /// Token ids, `[batch * seq]` u32.
    pub(crate) ids: Tensor<D>,
    /// Position ids, `[batch * seq]` u32.
    pub(crate) positions: Tensor<D>,
    /// Token type ids, `[batch * seq]` u32.
    pub(crate) type_ids: Tensor<D>,
    /// The attention mask, `[batch, seq]` f32 (packed: `[tokens]`, all ones).
    pub(crate) mask: Tensor<D>,
    /// A packed batch's sequences; `None` for a padded batch.
    pub(crate) sequences: Option<PackedSequences<D>>,
    /// CLS pooling only: each row's first token, `[batch]` u32.
    pub(crate) cls_rows: Option<Tensor<D>>,
    /// Sequences.
    pub(crate) batch: usize,
    /// Tokens per sequence (packed: the longest).
    pub(crate) seq: usize,
}

/// A sentence-embedding model whose weights live on a runtime's device. `Sync`: share it (by
/// reference or `Arc`) among every thread that embeds.
pub struct BertModel<D: Ops> {
    /// Declared first, so dropped before the weights its graphs read (after `Drop` waited for them).
    graphs: GraphCache<D>,
    /// Whether `prepare` packs uneven batches (see [`BertModel::set_packed_batches`]).
    packed_batches: AtomicBool,
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
            graphs: GraphCache::new(&runtime)?,
            packed_batches: AtomicBool::new(
                runtime.device().prefers_packed()
                    && crate::switch::on_unless_off(
                        PACKED_BATCHES_ENV,
                        "1, on or true (pack uneven batches where the device prefers it: the \
                         default); 0, off or false (always pad)",
                    )?,
            ),
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

    /// The model's config.
    pub(crate) fn config(&self) -> &BertConfig {
        &self.config
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
    /// run faster ([`Ops::prefers_packed`], unless [`PACKED_BATCHES_ENV`] or
    /// [`BertModel::set_packed_batches`] turned them off) and the lengths differ, unless a graph serves
    /// the padded batch (a replay beats launching the packed forward); else padded.
    pub fn prepare(&self, encodings: &[Encoding]) -> TokenBatch {
        let longest = encodings.iter().map(Encoding::len).max().unwrap_or(0);
        let graphed = (self.graphs).serves(
            encodings.len(),
            longest,
            self.config.max_position_embeddings,
        );
        let packed = self.packed_batches.load(Ordering::Relaxed) && !graphed;
        TokenBatch::new(encodings, self.config.pad_token_id, packed)
    }

    /// Embeddings of a prepared batch, copied to the host (waits for the current stream).
    pub fn embed_prepared(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        match batch {
            TokenBatch::Padded(batch) => self.embed_batch(batch),
            TokenBatch::Packed(batch) => self.embed_packed(batch),
        }
    }

    /// Embeddings of a padded batch, copied to the host (waits for the current stream). Small
    /// batches replay a captured graph where the device has them (see [`crate::graphs`]); the result
    /// is the plain forward's, up to rounding.
    pub fn embed_batch(&self, batch: &PaddedBatch) -> Result<Vec<Vec<f32>>> {
        if batch.batch == 0 {
            return Ok(Vec::new());
        }
        self.check_batch(batch)?;
        let flat = match self.graphs.embed(self, batch)? {
            Some(flat) => flat,
            None => {
                let pooled = self.forward_device(&self.upload_inputs(batch)?)?;
                self.runtime.to_vec_f32(&pooled)?
            }
        };
        self.rows(flat)
    }

    /// Embeddings of a packed batch, copied to the host (waits for the current stream).
    pub fn embed_packed(&self, batch: &PackedBatch) -> Result<Vec<Vec<f32>>> {
        if batch.sequences() == 0 {
            return Ok(Vec::new());
        }
        let pooled = self.forward_packed(batch)?;
        self.rows(self.runtime.to_vec_f32(&pooled)?)
    }

    /// The pooled embeddings, checked finite, one vector per row.
    fn rows(&self, flat: Vec<f32>) -> Result<Vec<Vec<f32>>> {
        crate::finite::check_embeddings(&flat, self.dim())?;
        Ok(flat.chunks(self.dim()).map(<[f32]>::to_vec).collect())
    }

    /// Turns packed batches on or off for [`BertModel::prepare`] from now on (it starts on where the
    /// device prefers them, unless [`PACKED_BATCHES_ENV`] is `0`); on a device that does not prefer
    /// them, they stay off. For measuring one layout against the other.
    pub fn set_packed_batches(&self, on: bool) {
        // Relaxed: a switch read once per call; nothing else is ordered by it.
        let on = on && self.runtime.device().prefers_packed();
        self.packed_batches.store(on, Ordering::Relaxed);
    }

    /// Turns graph replay on or off for this model from now on (it starts as `BRAID_CUDA_GRAPHS`
    /// says: on unless `0`); graphs already captured are kept. Has no effect on a backend that cannot
    /// capture.
    pub fn set_graphs(&self, on: bool) {
        self.graphs.set_enabled(on);
    }

    /// Whether `embed_batch` replays graphs (the device can capture and they are on).
    pub fn graphs_enabled(&self) -> bool {
        self.graphs.enabled()
    }

    /// Graphs captured so far and the bytes of device memory they keep (their pools, inputs and
    /// outputs).
    pub fn graph_memory(&self) -> crate::graphs::GraphMemory {
        self.graphs.memory()
    }

    /// The forward pass: `[batch, hidden]` pooled (and, if the model says so, L2-normalised)
    /// embeddings on the device, encoded on the current stream. Does not wait for the device.
    pub fn forward(&self, batch: &PaddedBatch) -> Result<Tensor<D>> {
        self.check_batch(batch)?;
        self.forward_device(&self.upload_inputs(batch)?)
    }

    /// [`BertModel::forward`] of a packed batch: no padded token is computed; the same embeddings.
    pub fn forward_packed(&self, batch: &PackedBatch) -> Result<Tensor<D>> {
        self.check_packed(batch)?;
        let rt = &*self.runtime;
        let rows = batch.rows();
        let sequences = rt.packed_sequences(&batch.offsets, rows)?;
        let cls_rows = match self.pooling.mode {
            Pooling::Cls => {
                let starts = &batch.offsets[..batch.sequences()];
                Some(rt.from_u32(starts, &[starts.len()])?)
            }
            _ => None,
        };
        let inputs = DeviceInputs {
            ids: rt.from_u32(&batch.ids, &[rows])?,
            positions: rt.from_u32(&batch.positions, &[rows])?,
            type_ids: rt.from_u32(&batch.type_ids, &[rows])?,
            mask: rt.full(&[rows], 1.0)?,
            cls_rows,
            batch: sequences.sequences(),
            seq: sequences.longest(),
            sequences: Some(sequences),
        };
        self.forward_device(&inputs)
    }

    /// Uploads a (checked) batch's ids, positions, type ids and mask (and, for CLS pooling, the row
    /// starts) on the current stream.
    fn upload_inputs(&self, batch: &PaddedBatch) -> Result<DeviceInputs<D>> {
        let rt = &*self.runtime;
        let (b, s) = (batch.batch, batch.seq);
        let tokens = b * s;
        Ok(DeviceInputs {
            ids: rt.from_u32(&batch.ids, &[tokens])?,
            positions: rt.from_u32(&batch.positions, &[tokens])?,
            type_ids: rt.from_u32(&batch.type_ids, &[tokens])?,
            mask: rt.from_f32(&batch.mask, &[b, s])?,
            sequences: None,
            cls_rows: self.cls_rows(b, s)?,
            batch: b,
            seq: s,
        })
    }

    /// For CLS pooling, the index of each row's first token (`[batch]` u32); `None` otherwise.
    pub(crate) fn cls_rows(&self, batch: usize, seq: usize) -> Result<Option<Tensor<D>>> {
        if self.pooling.mode != Pooling::Cls {
            return Ok(None);
        }
        let first_tokens: Vec<u32> = (0..batch).map(|r| (r * seq) as u32).collect();
        Ok(Some(self.runtime.from_u32(&first_tokens, &[batch])?))
    }

    /// The forward on inputs already on the device: device work only — no copy from or to the host,
    /// no wait — so a graph can capture it.
    pub(crate) fn forward_device(&self, inputs: &DeviceInputs<D>) -> Result<Tensor<D>> {
        let rt = &*self.runtime;
        let (b, s) = (inputs.batch, inputs.seq);
        let mut x = self.embed_tokens(inputs)?;
        for layer in &self.layers {
            x = self.encoder_layer(layer, x, inputs)?;
        }
        let mut pooled = match (self.pooling.mode, &inputs.cls_rows) {
            (Pooling::Cls, Some(rows)) => rt
                .gather_rows(&x, rows, None)?
                .expect("gather_rows without an accumulator returns a tensor"),
            (Pooling::Cls, None) => {
                return Err(ModelError::InvalidBatch {
                    detail: "CLS pooling needs the rows' first tokens (this is a bug)".into(),
                })
            }
            (Pooling::Mean, _) => match &inputs.sequences {
                None => rt.mean_pool(&x.reshape(&[b, s, self.dim()])?, &inputs.mask)?,
                Some(sequences) => rt.mean_pool_packed(&x, &inputs.mask, sequences)?,
            },
            (Pooling::Max, _) => unreachable!("refused by check_supported"),
        };
        if self.pooling.normalize {
            rt.l2_normalize(&mut pooled)?;
        }
        Ok(pooled)
    }

    /// Word + position + token-type embeddings, then LayerNorm: `[tokens, hidden]`.
    fn embed_tokens(&self, inputs: &DeviceInputs<D>) -> Result<Tensor<D>> {
        let rt = &*self.runtime;
        let e = &self.embeddings;
        let mut x = rt
            .gather_rows(&e.word, &inputs.ids, None)?
            .expect("gather_rows without an accumulator returns a tensor");
        rt.gather_rows(&e.position, &inputs.positions, Some(&mut x))?;
        rt.gather_rows(&e.token_type, &inputs.type_ids, Some(&mut x))?;
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
        inputs: &DeviceInputs<D>,
    ) -> Result<Tensor<D>> {
        let rt = &*self.runtime;
        let eps = self.config.layer_norm_eps as f32;
        let qkv = rt.linear(&x, &layer.qkv_weight, Some(&layer.qkv_bias))?;
        let (mask, heads) = (&inputs.mask, self.config.num_attention_heads);
        let context = match &inputs.sequences {
            None => rt.attention(&qkv, mask, heads)?,
            Some(sequences) => rt.attention_packed(&qkv, mask, sequences, heads)?,
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

    /// A packed batch the model can run: offsets from 0 to at most the row count, rising, so no
    /// empty sequence, every sequence within the position table, ids within the vocabulary.
    fn check_packed(&self, batch: &PackedBatch) -> Result<()> {
        let rows = batch.rows();
        let invalid = |detail: String| Err(ModelError::InvalidBatch { detail });
        let offsets = &batch.offsets;
        if offsets.first() != Some(&0)
            || offsets.last().is_none_or(|&t| t as usize > rows)
            || offsets.windows(2).any(|w| w[0] >= w[1])
        {
            return invalid(format!(
                "packed offsets must rise from 0, at most to the {rows} rows, every sequence \
                 non-empty; got {} offsets",
                offsets.len()
            ));
        }
        if batch.type_ids.len() != rows || batch.positions.len() != rows {
            return invalid(format!(
                "a packed batch of {rows} rows needs {rows} type ids and positions"
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
