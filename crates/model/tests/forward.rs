//! The forward pass of all-MiniLM-L6-v2 on the CPU backend against the golden fixture's float64
//! reference embeddings: one at a time, all in one padded batch, all in one packed batch, and from 16
//! threads at once; and every layout and composition of a batch bit-identical to the single calls.

mod common;

use std::sync::Arc;

use braid_model::{pack_batch, pad_batch, BertModel, ModelError, PaddedBatch, TokenBatch};
use braid_runtime::cpu::CpuDevice;
use braid_runtime::{DType, Runtime, RuntimeConfig, StreamPoolConfig};
use common::{cosine_and_max_abs, golden_cases, minilm_dir, Case};

const MIN_COSINE: f64 = 0.99999;
const MAX_ABS_DIFF: f64 = 1e-4;

fn minilm(runtime: Arc<Runtime<CpuDevice>>) -> BertModel<CpuDevice> {
    BertModel::load(runtime, &minilm_dir(), DType::F32).expect("all-MiniLM-L6-v2 loads")
}

fn cpu_runtime() -> Arc<Runtime<CpuDevice>> {
    Arc::new(Runtime::new(CpuDevice::new(), RuntimeConfig::default()).unwrap())
}

fn assert_matches_reference(label: &str, case: &Case, got: &[f32]) {
    let (cosine, max_abs) = cosine_and_max_abs(got, &case.embedding);
    assert!(
        cosine >= MIN_COSINE && max_abs <= MAX_ABS_DIFF,
        "{label} {:?}: cosine {cosine:.8} (need >= {MIN_COSINE}), max abs diff {max_abs:.2e} \
         (need <= {MAX_ABS_DIFF:e})",
        case.text
    );
}

fn texts(cases: &[Case]) -> Vec<&str> {
    cases.iter().map(|c| c.text.as_str()).collect()
}

#[test]
fn single_inputs_match_the_float64_reference() {
    let model = minilm(cpu_runtime());
    for case in &golden_cases() {
        let got = model.embed(&[case.text.as_str()]).unwrap();
        assert_eq!(got.len(), 1);
        assert_matches_reference("single", case, &got[0]);
    }
}

/// All cases in one batch of `layout`.
fn embed_as(model: &BertModel<CpuDevice>, texts: &[&str], packed: bool) -> Vec<Vec<f32>> {
    let encodings = model.spec().tokenizer.encode_batch(texts).unwrap();
    let pad = model.spec().config.pad_token_id;
    if packed {
        model.embed_packed(&pack_batch(&encodings, pad)).unwrap()
    } else {
        model.embed_batch(&pad_batch(&encodings, pad)).unwrap()
    }
}

#[test]
fn one_packed_batch_matches_the_reference_for_every_input() {
    let model = minilm(cpu_runtime());
    let cases = golden_cases();
    let encodings = model.spec().tokenizer.encode_batch(&texts(&cases)).unwrap();
    // The CPU backend prefers packed batches: `embed` packs these uneven cases.
    assert!(matches!(model.prepare(&encodings), TokenBatch::Packed(_)));
    model.set_packed_batches(false);
    assert!(matches!(model.prepare(&encodings), TokenBatch::Padded(_)));
    model.set_packed_batches(true);
    let got = embed_as(&model, &texts(&cases), true);
    assert_eq!(got.len(), cases.len());
    for (case, embedding) in cases.iter().zip(&got) {
        assert_matches_reference("packed", case, embedding);
    }
}

#[test]
fn one_padded_batch_matches_the_reference_for_every_input() {
    let model = minilm(cpu_runtime());
    let cases = golden_cases();
    let got = embed_as(&model, &texts(&cases), false);
    assert_eq!(got.len(), cases.len());
    // The batch is padded to the 256-token case, so every shorter input carries padding.
    for (case, embedding) in cases.iter().zip(&got) {
        assert_matches_reference("batched", case, embedding);
    }
    // Intermediates go back to the cache as they die: the same forward again needs no new raw memory.
    let before = model.runtime().allocator().stats();
    let again = embed_as(&model, &texts(&cases), false);
    let after = model.runtime().allocator().stats();
    assert_eq!(after.raw_allocs, before.raw_allocs, "{after}");
    assert_eq!(again, got, "the same batch gives the same embeddings");
    assert!(
        after.peak_reserved_bytes < 2 * before.peak_reserved_bytes,
        "{after}"
    );
}

/// A sequence's embedding does not depend, in any bit, on the batch it runs in: alone, in the whole
/// fixture padded to its longest case or packed, reversed, in pairs of far-apart lengths and in runs of
/// five. The engine's batches mix callers' requests, so this is what makes its results equal the single
/// calls.
#[test]
fn batch_composition_does_not_change_a_single_bit() {
    let model = minilm(cpu_runtime());
    let cases = golden_cases();
    let single: Vec<Vec<u32>> = cases
        .iter()
        .map(|c| bits(&model.embed(&[c.text.as_str()]).unwrap()[0]))
        .collect();
    let n = cases.len();
    let mut compositions: Vec<Vec<usize>> = vec![(0..n).collect(), (0..n).rev().collect()];
    compositions.extend((0..n).map(|i| vec![i, (i + n / 2) % n]));
    compositions.extend((0..n).step_by(5).map(|i| (i..(i + 5).min(n)).collect()));
    let mut differing = Vec::new();
    for batch in &compositions {
        let batch_texts: Vec<&str> = batch.iter().map(|&i| cases[i].text.as_str()).collect();
        for packed in [false, true] {
            let got = embed_as(&model, &batch_texts, packed);
            for (&i, embedding) in batch.iter().zip(&got) {
                if bits(embedding) != single[i] {
                    differing.push((i, batch.clone(), packed));
                }
            }
        }
    }
    assert!(
        differing.is_empty(),
        "{} results differ from their single call, e.g. case {} in batch {:?} (packed: {})",
        differing.len(),
        differing[0].0,
        differing[0].1,
        differing[0].2
    );
}

fn bits(embedding: &[f32]) -> Vec<u32> {
    embedding.iter().map(|v| v.to_bits()).collect()
}

/// Every thread runs every case (starting at a different one), on its own leased stream, at the same
/// time; each result must equal the single-thread run bit for bit.
#[test]
fn sixteen_threads_give_bit_identical_embeddings() {
    const THREADS: usize = 16;
    let runtime = Arc::new(
        Runtime::new(
            CpuDevice::new(),
            RuntimeConfig {
                // One more slot than threads: the test harness's own thread leases one too.
                streams: StreamPoolConfig {
                    worker_slots: THREADS + 1,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let model = Arc::new(minilm(runtime));
    let cases = Arc::new(golden_cases());
    let single: Vec<Vec<f32>> = cases
        .iter()
        .map(|c| model.embed(&[c.text.as_str()]).unwrap().remove(0))
        .collect();
    let single = Arc::new(single);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (model, cases, single) = (model.clone(), cases.clone(), single.clone());
            std::thread::spawn(move || {
                let stream = model.runtime().current_stream().unwrap();
                assert_ne!(stream.index(), 0, "a worker thread runs on a leased slot");
                let mut differing = 0;
                for i in (0..cases.len()).map(|i| (i + t) % cases.len()) {
                    let got = model.embed(&[cases[i].text.as_str()]).unwrap().remove(0);
                    if got
                        .iter()
                        .map(|v| v.to_bits())
                        .ne(single[i].iter().map(|v| v.to_bits()))
                    {
                        differing += 1;
                    }
                }
                differing
            })
        })
        .collect();
    let differing: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(
        differing, 0,
        "embeddings differing from the single-thread run"
    );
}

#[test]
fn an_empty_batch_gives_no_embeddings_and_bad_batches_are_refused() {
    let model = minilm(cpu_runtime());
    assert!(model.embed(&[]).unwrap().is_empty());
    let spec = model.spec();
    let encodings = spec.tokenizer.encode_batch(&["hello", "world"]).unwrap();
    let good = pad_batch(&encodings, spec.config.pad_token_id);

    let mut bad_id = good.clone();
    bad_id.ids[1] = spec.config.vocab_size as u32;
    let err = model.forward(&bad_id).unwrap_err();
    assert!(
        matches!(err, ModelError::InvalidBatch { .. }) && err.to_string().contains("vocab_size"),
        "{err}"
    );

    let short = PaddedBatch {
        mask: vec![1.0],
        ..good.clone()
    };
    let err = model.forward(&short).unwrap_err().to_string();
    assert!(err.contains("needs"), "{err}");

    let too_long = {
        let n = spec.config.max_position_embeddings + 1;
        let encoding = braid_model::Encoding {
            ids: vec![101; n],
            type_ids: vec![0; n],
        };
        pad_batch(&[encoding], 0)
    };
    let err = model.forward(&too_long).unwrap_err().to_string();
    assert!(err.contains("exceeds the model's 512 positions"), "{err}");

    let packed = pack_batch(&encodings, spec.config.pad_token_id);
    let mut empty_sequence = packed.clone();
    empty_sequence.offsets.insert(1, 0);
    let mut past_the_end = packed.clone();
    *past_the_end.offsets.last_mut().unwrap() = packed.rows() as u32 + 1;
    let mut bad_positions = packed.clone();
    bad_positions.positions.pop();
    let mut bad_id = packed.clone();
    bad_id.ids[0] = spec.config.vocab_size as u32;
    for (bad, says) in [
        (empty_sequence, "every sequence non-empty"),
        (past_the_end, "at most to the"),
        (bad_positions, "type ids and positions"),
        (bad_id, "vocab_size"),
    ] {
        let err = model.forward_packed(&bad).unwrap_err();
        assert!(
            matches!(err, ModelError::InvalidBatch { .. }) && err.to_string().contains(says),
            "{err}"
        );
    }
    assert_eq!(model.embed_packed(&pack_batch(&[], 0)).unwrap().len(), 0);
}

#[test]
fn unsupported_dtype_is_refused_before_any_upload() {
    let runtime = cpu_runtime();
    let err = BertModel::load(runtime.clone(), &minilm_dir(), DType::F16)
        .err()
        .expect("f16 is refused on the CPU backend");
    assert!(
        matches!(err, ModelError::UnsupportedForward { .. })
            && err.to_string().contains("f16")
            && err.to_string().contains("cpu"),
        "{err}"
    );
    assert_eq!(runtime.allocator().stats().allocated_bytes, 0);
}
