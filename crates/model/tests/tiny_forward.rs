//! The forward pass is right for BERT-family checkpoints other than all-MiniLM-L6-v2: random
//! checkpoints written in the test are loaded from disk with `BertModel::load` and run on the CPU
//! backend, and every embedding is compared with an independent float64 reference written here
//! (plain loops over the tensors exactly as they were written to `model.safetensors`, so the
//! loader's prefix detection and Q/K/V fusion are checked too).
//!
//! Covered: (a) the tiny config (hidden 8, 2 heads, 2 layers) with mean pooling and Normalize;
//! (b) the same weights with CLS pooling, no Normalize and the tanh GELU (`gelu_new`,
//! `gelu_pytorch_tanh`); (c) a larger `bert.`-prefixed checkpoint (hidden 64, 4 heads, 3 layers,
//! intermediate 128, 64 positions, pad id 1) with no modules.json, hence mean pooling without
//! normalisation. Batches hold rows of different lengths (one as long as the position table),
//! non-zero type ids and real tokens whose id is the pad id, so padding and masking are exercised;
//! every row must match the reference (max abs diff <= 1e-4 for values of order 1, cosine >=
//! 0.99999) and give the same embedding (<= 1e-5) alone as padded inside the batch. The two
//! GELUs move these embeddings by only ~1e-4, so each check also requires the forward to be 50x
//! closer to the reference than the reference with the other GELU is. A `relu` activation and
//! max pooling are refused by `BertModel::load` with `UnsupportedForward`.

mod common;

use std::sync::Arc;

use braid_model::{pad_batch, BertModel, Encoding, ModelDir, ModelError, Pooling, PoolingConfig};
use braid_runtime::cpu::CpuDevice;
use braid_runtime::{DType, Runtime, RuntimeConfig};
use common::*;
use safetensors::Dtype;

const MIN_COSINE: f64 = 0.99999;
/// Largest allowed |got - want|, scaled by the largest |want| when that exceeds 1.
const MAX_ABS_DIFF: f64 = 1e-4;
/// Largest allowed difference between a row run alone and the same row padded in a batch.
const MAX_PADDING_DIFF: f64 = 1e-5;

// ---------------------------------------------------------------------------------------------
// The float64 reference.
// ---------------------------------------------------------------------------------------------

/// erf(x) to a few ulps by A&S 7.1.6:
/// erf x = 2/sqrt(pi) e^(-x^2) sum_n 2^n x^(2n+1) / (1*3*..*(2n+1)).
/// Every term has the sign of x, so nothing cancels; beyond |x| = 6, |1 - |erf x|| < 3e-17.
fn erf(x: f64) -> f64 {
    if x.abs() >= 6.0 {
        return x.signum();
    }
    let x2 = x * x;
    let (mut term, mut sum, mut n) = (x, x, 0.0);
    while term.abs() > sum.abs() * 1e-18 {
        n += 1.0;
        term *= 2.0 * x2 / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 / std::f64::consts::PI.sqrt() * (-x2).exp() * sum
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    /// `gelu`: x * Phi(x), with the exact erf.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`.
    GeluTanh,
}

impl Act {
    fn apply(self, x: f64) -> f64 {
        match self {
            Act::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
            Act::GeluTanh => {
                let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
                0.5 * x * (1.0 + u.tanh())
            }
        }
    }
}

/// A BERT encoder evaluated in f64 on the tensors as written (names without prefix).
struct Reference<'a> {
    tensors: &'a Tensors,
    dims: Dims,
    act: Act,
    pooling: PoolingConfig,
}

/// `y[r] = b + W x[r]` with `W` in nn.Linear layout `[out, in]`.
fn linear(x: &[f64], w: &[f32], b: &[f32]) -> Vec<f64> {
    let (out, inp) = (b.len(), w.len() / b.len());
    let mut y = Vec::with_capacity(x.len() / inp * out);
    for row in x.chunks_exact(inp) {
        for o in 0..out {
            let w_row = &w[o * inp..(o + 1) * inp];
            let dot: f64 = row.iter().zip(w_row).map(|(&a, &w)| a * w as f64).sum();
            y.push(dot + b[o] as f64);
        }
    }
    y
}

/// Row-wise LayerNorm of `x + residual` (biased variance, as torch).
fn layer_norm(x: &[f64], residual: &[f64], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f64> {
    let h = gamma.len();
    let mut y = Vec::with_capacity(x.len());
    for (row, res) in x.chunks_exact(h).zip(residual.chunks_exact(h)) {
        let v: Vec<f64> = row.iter().zip(res).map(|(a, b)| a + b).collect();
        let mean = v.iter().sum::<f64>() / h as f64;
        let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / h as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for d in 0..h {
            y.push((v[d] - mean) * inv * gamma[d] as f64 + beta[d] as f64);
        }
    }
    y
}

impl Reference<'_> {
    fn t(&self, name: &str) -> &[f32] {
        &self.tensors[name].1
    }

    /// The embedding of one unpadded sequence: with no padding there is nothing to mask.
    fn embed(&self, ids: &[u32], type_ids: &[u32]) -> Vec<f64> {
        let (h, n) = (self.dims.hidden, ids.len());
        let (word, position, token_type) = (
            self.t("embeddings.word_embeddings.weight"),
            self.t("embeddings.position_embeddings.weight"),
            self.t("embeddings.token_type_embeddings.weight"),
        );
        let mut x = vec![0.0; n * h];
        for t in 0..n {
            let (w, ty) = (ids[t] as usize, type_ids[t] as usize);
            for d in 0..h {
                x[t * h + d] = word[w * h + d] as f64
                    + position[t * h + d] as f64
                    + token_type[ty * h + d] as f64;
            }
        }
        let eps = self.dims.eps;
        let zeros = vec![0.0; n * h];
        let mut x = layer_norm(
            &x,
            &zeros,
            self.t("embeddings.LayerNorm.weight"),
            self.t("embeddings.LayerNorm.bias"),
            eps,
        );

        let heads = self.dims.heads;
        let hd = h / heads;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in 0..self.dims.layers {
            let p = format!("encoder.layer.{l}");
            let proj = |part: &str| {
                linear(
                    &x,
                    self.t(&format!("{p}.attention.self.{part}.weight")),
                    self.t(&format!("{p}.attention.self.{part}.bias")),
                )
            };
            let (q, k, v) = (proj("query"), proj("key"), proj("value"));
            let mut context = vec![0.0; n * h];
            for head in 0..heads {
                let f = head * hd..(head + 1) * hd;
                for i in 0..n {
                    let qi = &q[i * h..][f.clone()];
                    let scores: Vec<f64> = (0..n)
                        .map(|j| {
                            let kj = &k[j * h..][f.clone()];
                            qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = exps.iter().sum();
                    for (j, e) in exps.iter().enumerate() {
                        for d in f.clone() {
                            context[i * h + d] += e / total * v[j * h + d];
                        }
                    }
                }
            }
            let attn = linear(
                &context,
                self.t(&format!("{p}.attention.output.dense.weight")),
                self.t(&format!("{p}.attention.output.dense.bias")),
            );
            x = layer_norm(
                &attn,
                &x,
                self.t(&format!("{p}.attention.output.LayerNorm.weight")),
                self.t(&format!("{p}.attention.output.LayerNorm.bias")),
                eps,
            );
            let mut inner = linear(
                &x,
                self.t(&format!("{p}.intermediate.dense.weight")),
                self.t(&format!("{p}.intermediate.dense.bias")),
            );
            inner.iter_mut().for_each(|a| *a = self.act.apply(*a));
            let out = linear(
                &inner,
                self.t(&format!("{p}.output.dense.weight")),
                self.t(&format!("{p}.output.dense.bias")),
            );
            x = layer_norm(
                &out,
                &x,
                self.t(&format!("{p}.output.LayerNorm.weight")),
                self.t(&format!("{p}.output.LayerNorm.bias")),
                eps,
            );
        }

        let mut pooled: Vec<f64> = match self.pooling.mode {
            Pooling::Mean => (0..h)
                .map(|d| (0..n).map(|t| x[t * h + d]).sum::<f64>() / n as f64)
                .collect(),
            Pooling::Cls => x[..h].to_vec(),
            Pooling::Max => unreachable!("the forward refuses max pooling"),
        };
        if self.pooling.normalize {
            let norm = pooled.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
            pooled.iter_mut().for_each(|a| *a /= norm);
        }
        pooled
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints and inputs.
// ---------------------------------------------------------------------------------------------

/// The hyper-parameters a checkpoint is written with.
#[derive(Clone, Copy, Debug)]
struct Dims {
    vocab: usize,
    hidden: usize,
    heads: usize,
    layers: usize,
    intermediate: usize,
    positions: usize,
    type_vocab: usize,
    pad_id: u32,
    eps: f64,
}

const TINY: Dims = Dims {
    vocab: TINY_VOCAB,
    hidden: TINY_HIDDEN,
    heads: 2,
    layers: TINY_LAYERS,
    intermediate: TINY_INTERMEDIATE,
    positions: TINY_POSITIONS,
    type_vocab: 2,
    pad_id: 0,
    eps: 1e-12,
};

const LARGER: Dims = Dims {
    vocab: 50,
    hidden: 64,
    heads: 4,
    layers: 3,
    intermediate: 128,
    positions: 64,
    type_vocab: 2,
    pad_id: 1,
    eps: 1e-12,
};

fn config_json(d: &Dims, hidden_act: &str) -> String {
    format!(
        r#"{{"architectures": ["BertForMaskedLM"], "model_type": "bert",
  "vocab_size": {}, "hidden_size": {}, "num_hidden_layers": {}, "num_attention_heads": {},
  "intermediate_size": {}, "hidden_act": "{hidden_act}", "hidden_dropout_prob": 0.1,
  "layer_norm_eps": {:e}, "max_position_embeddings": {}, "type_vocab_size": {},
  "pad_token_id": {}}}"#,
        d.vocab,
        d.hidden,
        d.layers,
        d.heads,
        d.intermediate,
        d.eps,
        d.positions,
        d.type_vocab,
        d.pad_id
    )
}

/// A deterministic generator of uniform values in [-1, 1) and ids.
struct Lcg(u64);

impl Lcg {
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 7) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn below(&mut self, n: usize) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

/// Random tensors for `d` in BertModel's layout, scaled so activations stay of order 1 and
/// attention is neither uniform nor one-hot: matrices uniform * sqrt(3 / fan_in) (variance
/// 1 / fan_in), biases 0.1 * uniform, LayerNorm scale 1 + 0.3 * uniform, shift 0.1 * uniform,
/// embedding tables uniform. Includes the pooler, which the forward never reads.
fn random_tensors(d: &Dims, seed: u64) -> Tensors {
    let (h, ff) = (d.hidden, d.intermediate);
    let mut rng = Lcg(seed);
    let mut out = Tensors::new();
    let mut add = |name: String, shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with("LayerNorm.weight") {
            (0..n).map(|_| 1.0 + 0.3 * rng.uniform()).collect()
        } else if shape.len() == 1 {
            (0..n).map(|_| 0.1 * rng.uniform()).collect()
        } else if name.starts_with("embeddings.") {
            (0..n).map(|_| rng.uniform()).collect()
        } else {
            let scale = (3.0 / shape[1] as f32).sqrt();
            (0..n).map(|_| scale * rng.uniform()).collect()
        };
        out.insert(name, (shape, values));
    };
    add("embeddings.word_embeddings.weight".into(), vec![d.vocab, h]);
    add(
        "embeddings.position_embeddings.weight".into(),
        vec![d.positions, h],
    );
    add(
        "embeddings.token_type_embeddings.weight".into(),
        vec![d.type_vocab, h],
    );
    add("embeddings.LayerNorm.weight".into(), vec![h]);
    add("embeddings.LayerNorm.bias".into(), vec![h]);
    add("pooler.dense.weight".into(), vec![h, h]);
    add("pooler.dense.bias".into(), vec![h]);
    for l in 0..d.layers {
        let p = format!("encoder.layer.{l}");
        for part in ["query", "key", "value"] {
            add(format!("{p}.attention.self.{part}.weight"), vec![h, h]);
            add(format!("{p}.attention.self.{part}.bias"), vec![h]);
        }
        add(format!("{p}.attention.output.dense.weight"), vec![h, h]);
        add(format!("{p}.attention.output.dense.bias"), vec![h]);
        add(format!("{p}.attention.output.LayerNorm.weight"), vec![h]);
        add(format!("{p}.attention.output.LayerNorm.bias"), vec![h]);
        add(format!("{p}.intermediate.dense.weight"), vec![ff, h]);
        add(format!("{p}.intermediate.dense.bias"), vec![ff]);
        add(format!("{p}.output.dense.weight"), vec![h, ff]);
        add(format!("{p}.output.dense.bias"), vec![h]);
        add(format!("{p}.output.LayerNorm.weight"), vec![h]);
        add(format!("{p}.output.LayerNorm.bias"), vec![h]);
    }
    out
}

/// F32 safetensors with every name under `prefix`, plus the I64 `position_ids` buffer of the
/// right length, as real checkpoints carry it.
fn f32_safetensors(tensors: &Tensors, prefix: &str, positions: usize) -> Vec<u8> {
    let mut entries: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (format!("{prefix}{name}"), Dtype::F32, shape.clone(), bytes)
        })
        .collect();
    entries.push((
        format!("{prefix}embeddings.position_ids"),
        Dtype::I64,
        vec![1, positions],
        (0..positions as i64).flat_map(i64::to_le_bytes).collect(),
    ));
    serialize(&entries)
}

/// Writes a model directory: config (with `hidden_act`), weights under `prefix`, the tiny
/// tokenizer, and, when `pooling` is given (a 1_Pooling/config.json body), modules.json with
/// Normalize if `normalize`. Without `pooling` it is a plain Hugging Face directory.
fn write_model(
    name: &str,
    d: &Dims,
    hidden_act: &str,
    tensors: &Tensors,
    prefix: &str,
    pooling: Option<(&str, bool)>,
) -> TempDir {
    let dir = TempDir::new(name);
    dir.write("config.json", config_json(d, hidden_act));
    dir.write(
        "model.safetensors",
        f32_safetensors(tensors, prefix, d.positions),
    );
    dir.write("tokenizer.json", TINY_TOKENIZER);
    if let Some((pooling, normalize)) = pooling {
        dir.write("modules.json", modules_json(normalize));
        dir.write("1_Pooling/config.json", pooling);
    }
    dir
}

fn pooling_json(d: &Dims, mode: &str) -> String {
    format!(
        r#"{{"word_embedding_dimension": {}, "pooling_mode_{mode}": true}}"#,
        d.hidden
    )
}

/// Rows of the given lengths: random ids below `vocab` (the pad id among them, as a real token),
/// and in every other row type id 1 from the middle on.
fn encodings(lens: &[usize], vocab: usize, seed: u64) -> Vec<Encoding> {
    let mut rng = Lcg(seed);
    lens.iter()
        .enumerate()
        .map(|(r, &len)| Encoding {
            ids: (0..len).map(|_| rng.below(vocab)).collect(),
            type_ids: (0..len)
                .map(|t| u32::from(r % 2 == 0 && t >= len / 2))
                .collect(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Comparison.
// ---------------------------------------------------------------------------------------------

fn cpu_runtime() -> Arc<Runtime<CpuDevice>> {
    Arc::new(Runtime::new(CpuDevice::new(), RuntimeConfig::default()).unwrap())
}

fn load(dir: &TempDir) -> BertModel<CpuDevice> {
    let model_dir = ModelDir::open(dir.path()).unwrap();
    match BertModel::load(cpu_runtime(), &model_dir, DType::F32) {
        Ok(model) => model,
        Err(e) => panic!("{} does not load: {e}", dir.path().display()),
    }
}

/// (cosine, max |got - want|) of `got` against `want`.
fn compare(got: &[f32], want: &[f64]) -> (f64, f64) {
    let got: Vec<f64> = got.iter().map(|&g| g as f64).collect();
    compare_f64(&got, want)
}

fn compare_f64(got: &[f64], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "embedding width");
    let (mut dot, mut gg, mut ww, mut max_abs) = (0.0, 0.0, 0.0, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        dot += g * w;
        gg += g * g;
        ww += w * w;
        max_abs = max_abs.max((g - w).abs());
    }
    (dot / (gg.sqrt() * ww.sqrt()), max_abs)
}

fn assert_matches(label: &str, got: &[f32], want: &[f64]) {
    let (cosine, max_abs) = compare(got, want);
    let scale = want.iter().fold(1.0f64, |m, w| m.max(w.abs()));
    assert!(
        cosine >= MIN_COSINE && max_abs <= MAX_ABS_DIFF * scale,
        "{label}: cosine {cosine:.9} (need >= {MIN_COSINE}), max abs diff {max_abs:.3e} \
         (need <= {:.1e})\n got  {got:?}\n want {want:?}",
        MAX_ABS_DIFF * scale
    );
}

/// Runs rows of `lens` as one padded batch and each alone, and checks every embedding against
/// the reference and the batched rows against the lone ones. The two GELUs give embeddings only
/// about 1e-4 apart, so it also checks that the forward is far (50x) closer to the reference than
/// the reference with the other GELU is: the forward used the configured one. Prints the worst
/// cosine and difference.
fn check_against_reference(
    label: &str,
    model: &BertModel<CpuDevice>,
    reference: &Reference<'_>,
    lens: &[usize],
    seed: u64,
) {
    let pad = model.spec().config.pad_token_id;
    assert_eq!(pad, reference.dims.pad_id);
    let rows = encodings(lens, reference.dims.vocab, seed);
    let batch = pad_batch(&rows, pad);
    assert_eq!(batch.seq, *lens.iter().max().unwrap());
    assert!(
        batch.mask.contains(&0.0),
        "{label}: the batch must hold padding"
    );
    assert!(
        batch.type_ids.contains(&1),
        "{label}: the batch must hold type id 1"
    );
    let got = model.embed_batch(&batch).unwrap();
    assert_eq!(got.len(), rows.len());
    let other_gelu = Reference {
        act: match reference.act {
            Act::Gelu => Act::GeluTanh,
            Act::GeluTanh => Act::Gelu,
        },
        ..*reference
    };
    let mut worst = (1.0f64, 0.0f64);
    let mut gelu_gap = 0.0f64;
    for (r, (row, embedding)) in rows.iter().zip(&got).enumerate() {
        assert_eq!(embedding.len(), reference.dims.hidden);
        let want = reference.embed(&row.ids, &row.type_ids);
        let (cosine, max_abs) = compare(embedding, &want);
        worst = (worst.0.min(cosine), worst.1.max(max_abs));
        let (_, gap) = compare_f64(&other_gelu.embed(&row.ids, &row.type_ids), &want);
        gelu_gap = gelu_gap.max(gap);
        let row_label = format!(
            "{label}, row {r} of length {} in a batch of seq {}",
            row.len(),
            batch.seq
        );
        assert_matches(&row_label, embedding, &want);

        let alone = model
            .embed_batch(&pad_batch(std::slice::from_ref(row), pad))
            .unwrap()
            .remove(0);
        assert_matches(&format!("{label}, row {r} alone"), &alone, &want);
        let padding_diff = alone
            .iter()
            .zip(embedding)
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max);
        assert!(
            padding_diff <= MAX_PADDING_DIFF,
            "{row_label}: alone and padded differ by {padding_diff:.3e}"
        );
    }
    assert!(
        worst.1 * 50.0 < gelu_gap,
        "{label}: off the reference by {:.2e}, but the other GELU moves it by only {gelu_gap:.2e}",
        worst.1
    );
    println!(
        "{label}: worst cosine {:.12}, max abs diff {:.2e} (other GELU: {gelu_gap:.2e})",
        worst.0, worst.1
    );
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[test]
fn reference_erf_is_accurate() {
    // erf rounded to the nearest f64 (from 19-digit values: A&S table 7.1, Wolfram).
    for (x, want) in [
        (0.1, 0.1124629160182849),
        (0.5, 0.5204998778130465),
        (1.0, 0.8427007929497149),
        (2.0, 0.9953222650189527),
        (3.0, 0.9999779095030014),
        (4.0, 0.9999999845827421),
    ] {
        assert!(
            (erf(x) - want).abs() <= 1e-15,
            "erf({x}) = {} != {want}",
            erf(x)
        );
        assert_eq!(erf(-x), -erf(x));
    }
    assert_eq!(erf(0.0), 0.0);
    assert_eq!(erf(7.0), 1.0);
}

#[test]
fn tiny_mean_pooling_with_normalize_matches_the_f64_reference() {
    let tensors = tiny_tensors();
    let pooling = pooling_json(&TINY, "mean_tokens");
    let dir = write_model(
        "mean-norm",
        &TINY,
        "gelu",
        &tensors,
        "",
        Some((&pooling, true)),
    );
    let model = load(&dir);
    let expect = PoolingConfig {
        mode: Pooling::Mean,
        normalize: true,
    };
    assert_eq!(model.spec().pooling, expect);
    let reference = Reference {
        tensors: &tensors,
        dims: TINY,
        act: Act::Gelu,
        pooling: expect,
    };
    check_against_reference("tiny mean", &model, &reference, &[5, 1, 16, 3, 9, 2], 11);

    // Text through the tokenizer ends in the same place.
    let texts = ["Hello world", "the cat sat on the mat.", "cats"];
    let got = model.embed(&texts).unwrap();
    for (text, embedding) in texts.iter().zip(&got) {
        let e = model.spec().tokenizer.encode(text).unwrap();
        assert_matches(text, embedding, &reference.embed(&e.ids, &e.type_ids));
        let norm: f64 = embedding
            .iter()
            .map(|&v| v as f64 * v as f64)
            .sum::<f64>()
            .sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "{text}: norm {norm}");
    }
}

#[test]
fn tiny_cls_pooling_with_tanh_gelu_matches_the_f64_reference() {
    let tensors = tiny_tensors();
    let pooling = pooling_json(&TINY, "cls_token");
    let expect = PoolingConfig {
        mode: Pooling::Cls,
        normalize: false,
    };
    for act_name in ["gelu_new", "gelu_pytorch_tanh"] {
        let dir = write_model(
            act_name,
            &TINY,
            act_name,
            &tensors,
            "",
            Some((&pooling, false)),
        );
        let model = load(&dir);
        assert_eq!(model.spec().pooling, expect);
        let reference = Reference {
            tensors: &tensors,
            dims: TINY,
            act: Act::GeluTanh,
            pooling: expect,
        };
        let lens = [4, 16, 1, 7, 10];
        check_against_reference(act_name, &model, &reference, &lens, 23);
    }
}

#[test]
fn larger_bert_prefixed_checkpoint_matches_the_f64_reference() {
    let tensors = random_tensors(&LARGER, 0x5eed_1234_abcd_0042);
    let dir = write_model("larger", &LARGER, "gelu", &tensors, "bert.", None);
    let model = load(&dir);
    assert_eq!(model.dim(), LARGER.hidden);
    // No modules.json: a plain checkpoint gets mean pooling without normalisation.
    let expect = PoolingConfig {
        mode: Pooling::Mean,
        normalize: false,
    };
    assert_eq!(model.spec().pooling, expect);
    let reference = Reference {
        tensors: &tensors,
        dims: LARGER,
        act: Act::Gelu,
        pooling: expect,
    };
    check_against_reference("larger", &model, &reference, &[7, 64, 1, 23, 40, 2], 37);
    // A second batch whose longest row is shorter than the position table.
    check_against_reference("larger, second batch", &model, &reference, &[13, 30, 5], 41);
}

/// Writes a tiny directory with `hidden_act` and `pooling_mode` (mean and Normalize otherwise),
/// checks that its spec and weights load, and returns the error `BertModel::load` refuses it
/// with, checking nothing was uploaded first.
fn refusal(name: &str, hidden_act: &str, pooling_mode: &str) -> ModelError {
    let tensors = tiny_tensors();
    let pooling = pooling_json(&TINY, pooling_mode);
    let dir = write_model(
        name,
        &TINY,
        hidden_act,
        &tensors,
        "",
        Some((&pooling, true)),
    );
    let model_dir = ModelDir::open(dir.path()).unwrap();
    let spec = model_dir.load_spec().unwrap();
    model_dir.load_weights(&spec.config).unwrap();
    let runtime = cpu_runtime();
    let err = match BertModel::load(runtime.clone(), &model_dir, DType::F32) {
        Ok(_) => panic!("{name}: BertModel::load accepted what the forward cannot compute"),
        Err(e) => e,
    };
    assert!(
        matches!(err, ModelError::UnsupportedForward { .. }),
        "{name}: {err:?}"
    );
    assert_eq!(runtime.allocator().stats().allocated_bytes, 0, "{name}");
    err
}

#[test]
fn relu_activation_is_refused() {
    let err = refusal("relu", "relu", "mean_tokens").to_string();
    assert!(err.contains("hidden_act = relu"), "{err}");
    assert!(err.contains("gelu"), "{err}");
}

#[test]
fn max_pooling_is_refused() {
    let err = refusal("max", "gelu", "max_tokens").to_string();
    assert!(err.contains("max pooling"), "{err}");
    assert!(err.contains("mean or CLS"), "{err}");
}
