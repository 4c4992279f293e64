//! Graph replay for small batches: one captured graph per (batch, tokens) bucket and stream, so a
//! batch-1 forward is one upload, one graph launch and one download instead of ~55 launches.
//!
//! # What it owns and promises
//!
//! - **Buckets.** A batch of `b` ≤ [`MAX_BATCH`] rows and `s` ≤ [`MAX_SEQ`] tokens runs as a bucket
//!   of `b` rounded up to a power of two and `s` rounded up to a multiple of [`SEQ_STEP`]: extra
//!   columns are padding (masked keys, skipped by pooling), extra rows one padding token each, whose
//!   outputs are dropped. Padding never changes a real row's embedding beyond rounding (f32: within
//!   1e-6 of the plain path; the GEMMs see more rows). Larger batches take the plain path.
//! - **Per stream, no lock between threads.** Graphs belong to the stream (pool slot) they replay on:
//!   a slot is leased by one thread at a time, so its graphs are taken with an uncontended `try_lock`
//!   (a thread that finds it held — a stream shared under `share`, or the default stream — takes the
//!   plain path). A graph is never launched on two streams: its memory is one set of addresses.
//! - **Memory.** Each slot's graphs share one private pool (`braid_runtime::GraphPool`): replays on
//!   one stream never overlap, so their intermediates may reuse each other's blocks where the sizes
//!   match (the pool keeps blocks by size class). A graph costs at most its bucket's working set
//!   (all-MiniLM-L6-v2 at 8 × 128 tokens: ~17 MiB in f32, ~9 MiB in f16; measured at batch 1 on
//!   sentences: ~0.5 MiB) plus its inputs (16 bytes a token) and output. A model captures no new graph
//!   once it holds [`MAX_GRAPHS`] graphs or [`MAX_GRAPH_BYTES`] of graph memory (new buckets take the
//!   plain path), so its graph memory stays under [`MAX_GRAPH_BYTES`] plus one working set per stream
//!   that crossed the limit while capturing. Outside the allocator, the capture streams' cuBLAS
//!   handles and the graphs' own workspace allocations cost more: ~1 GiB measured for 16 streams'
//!   graphs on an H200 (docs/bench/cuda-inference.md); `BRAID_CUDA_GRAPHS=0` saves it.
//! - **Making a graph** (first call of a bucket on a slot): the inputs are allocated from the pool,
//!   the forward runs once uncaptured with the pool routed (which fills it and loads kernels and
//!   handles), then is captured on the slot's capture stream. A capture that fails is logged once
//!   and that bucket takes the plain path on that slot from then on; the call itself falls back.
//! - **A replay** copies the bucket's staged inputs (ids, positions, type ids, mask: one host copy)
//!   into the graph's input tensor on the caller's stream, launches the graph (which splits them with
//!   device copies and runs the forward) and downloads its output, all in stream order, so the next
//!   call's copy cannot overtake this one's download.
//! - **Lifetime.** The cache is a field of the model, dropped before the weights the graphs read
//!   (after the model waited for every stream); dropping it destroys the executables, frees the graphs'
//!   tensors and returns the pools to the allocator.
//! - **Switch.** `BRAID_CUDA_GRAPHS=0` (or `off`) at load, or `BertModel::set_graphs(false)`, turns
//!   replay off; backends that cannot capture (CPU, wgpu) never replay.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use braid_runtime::ops::Ops;
use braid_runtime::{DType, Graph, GraphPool, Runtime, RuntimeError, Tensor};
use parking_lot::Mutex;

use crate::batch::PaddedBatch;
use crate::encoder::{BertModel, DeviceInputs};
use crate::error::Result;

/// The environment variable that turns graph replay off (`0`, `off`, `false`) or on (the default).
pub const GRAPHS_ENV: &str = "BRAID_CUDA_GRAPHS";
/// The largest batch a graph serves.
pub const MAX_BATCH: usize = 8;
/// The most tokens per row a graph serves.
pub const MAX_SEQ: usize = 128;
/// Sequence lengths are rounded up to a multiple of this.
pub const SEQ_STEP: usize = 16;
/// The most graphs one model keeps.
pub const MAX_GRAPHS: usize = 128;
/// The graph memory (pools, inputs, outputs) past which a model captures no new graph: 1 GiB.
pub const MAX_GRAPH_BYTES: usize = 1 << 30;

/// How much device memory a model's graphs keep ([`BertModel::graph_memory`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphMemory {
    /// Graphs captured (over every stream).
    pub graphs: usize,
    /// Bytes of the pools' free blocks: the graphs' intermediates.
    pub pool_bytes: usize,
    /// Bytes of the graphs' input and output tensors.
    pub io_bytes: usize,
}

/// A graph's shape: rows and tokens per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bucket {
    batch: usize,
    seq: usize,
}

impl Bucket {
    /// The bucket of a `batch` × `seq` batch, if one serves it (`max_positions`: the model's limit).
    fn of(batch: usize, seq: usize, max_positions: usize) -> Option<Self> {
        let rows = batch.checked_next_power_of_two()?;
        let seq = seq.div_ceil(SEQ_STEP) * SEQ_STEP;
        (batch >= 1 && rows <= MAX_BATCH && seq >= SEQ_STEP && seq <= MAX_SEQ.min(max_positions))
            .then_some(Self { batch: rows, seq })
    }

    fn tokens(self) -> usize {
        self.batch * self.seq
    }

    /// The staged inputs (ids | positions | type ids | mask bits, `tokens` each) of `batch` padded to
    /// this bucket; `None` stages the bucket's padding alone (one token a row).
    fn stage(self, batch: Option<&PaddedBatch>, pad_id: u32) -> Vec<u32> {
        let tokens = self.tokens();
        let mut staged = vec![0u32; 4 * tokens];
        let (ids, rest) = staged.split_at_mut(tokens);
        let (positions, rest) = rest.split_at_mut(tokens);
        let (type_ids, mask) = rest.split_at_mut(tokens);
        ids.fill(pad_id);
        let (rows, seq) = batch.map_or((0, 0), |b| (b.batch, b.seq));
        for r in 0..self.batch {
            let at = r * self.seq;
            match batch.filter(|_| r < rows) {
                Some(b) => {
                    let from = r * seq..(r + 1) * seq;
                    ids[at..at + seq].copy_from_slice(&b.ids[from.clone()]);
                    positions[at..at + seq].copy_from_slice(&b.positions[from.clone()]);
                    type_ids[at..at + seq].copy_from_slice(&b.type_ids[from.clone()]);
                    for (m, &v) in mask[at..at + seq].iter_mut().zip(&b.mask[from]) {
                        *m = v.to_bits();
                    }
                }
                // A padding row: one (pad) token, so every row has a token to pool.
                None => mask[at] = 1f32.to_bits(),
            }
        }
        staged
    }
}

/// One bucket's graph on one stream, and the tensors it reads and writes. Field order is drop order:
/// the executable before the memory it names.
struct BucketGraph<D: Ops> {
    bucket: Bucket,
    graph: Graph<D>,
    output: Tensor<D>,
    staged: Tensor<D>,
    inputs: DeviceInputs<D>,
}

impl<D: Ops> BucketGraph<D> {
    fn io_bytes(&self) -> usize {
        let i = &self.inputs;
        [
            &self.output,
            &self.staged,
            &i.ids,
            &i.positions,
            &i.type_ids,
            &i.mask,
        ]
        .into_iter()
        .chain(&i.cls_rows)
        .map(|t| t.buffer().capacity())
        .sum()
    }
}

/// One stream's graphs and their pool (declared last: dropped after the graphs' tensors).
struct SlotGraphs<D: Ops> {
    graphs: Vec<BucketGraph<D>>,
    /// Buckets whose capture failed on this stream: they take the plain path.
    refused: Vec<Bucket>,
    pool: Option<GraphPool<D>>,
}

/// A model's graphs, per stream. See the module doc.
pub(crate) struct GraphCache<D: Ops> {
    enabled: AtomicBool,
    /// Index = stream index (default stream and worker slots); empty when the device cannot capture.
    slots: Box<[Mutex<SlotGraphs<D>>]>,
    /// Graphs captured, over every slot.
    count: AtomicUsize,
    /// Bytes the captures added to the pools, and the graphs' inputs and outputs, over every slot.
    bytes: AtomicUsize,
}

impl<D: Ops> GraphCache<D> {
    /// The cache for a model on `runtime`: on when the device can capture and `BRAID_CUDA_GRAPHS`
    /// does not say `0`.
    pub(crate) fn new(runtime: &Runtime<D>) -> Result<Self> {
        let capture = runtime.supports_graphs();
        let slots = if capture {
            runtime.streams().worker_slots() + 1
        } else {
            0
        };
        Ok(Self {
            enabled: AtomicBool::new(capture && crate::switch::on_unless_off(
            GRAPHS_ENV,
            "1, on or true (replay CUDA graphs for small batches: the default); 0, off or false",
        )?),
            slots: (0..slots)
                .map(|_| {
                    Mutex::new(SlotGraphs {
                        graphs: Vec::new(),
                        refused: Vec::new(),
                        pool: None,
                    })
                })
                .collect(),
            count: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub(crate) fn set_enabled(&self, on: bool) {
        // Relaxed: a switch read once per call; nothing else is ordered by it.
        self.enabled
            .store(on && !self.slots.is_empty(), Ordering::Relaxed);
    }

    /// Whether a `batch` × `seq` padded batch would be served by a graph (graphs on, a bucket for it).
    pub(crate) fn serves(&self, batch: usize, seq: usize, max_positions: usize) -> bool {
        self.enabled() && Bucket::of(batch, seq, max_positions).is_some()
    }

    pub(crate) fn memory(&self) -> GraphMemory {
        let mut memory = GraphMemory::default();
        for slot in self.slots.iter() {
            let slot = slot.lock();
            memory.graphs += slot.graphs.len();
            memory.pool_bytes += slot.pool.as_ref().map_or(0, GraphPool::free_bytes);
            memory.io_bytes += slot.graphs.iter().map(BucketGraph::io_bytes).sum::<usize>();
        }
        memory
    }

    /// The embeddings of `batch` (checked) through a graph, flattened; `None` when no graph serves it
    /// (off, too large, the slot busy, the cap reached, its capture failed): take the plain path.
    pub(crate) fn embed(
        &self,
        model: &BertModel<D>,
        batch: &PaddedBatch,
    ) -> Result<Option<Vec<f32>>> {
        if !self.enabled() {
            return Ok(None);
        }
        let config = model.config();
        let Some(bucket) = Bucket::of(batch.batch, batch.seq, config.max_position_embeddings)
        else {
            return Ok(None);
        };
        let rt = &**model.runtime();
        let stream = rt.current_stream()?;
        let Some(mut slot) = self.slots.get(stream.index()).and_then(Mutex::try_lock) else {
            return Ok(None);
        };
        let found = slot.graphs.iter().position(|g| g.bucket == bucket);
        let index = match found {
            Some(index) => index,
            None if slot.refused.contains(&bucket) => return Ok(None),
            None => {
                // Relaxed: caps, not synchronisation; slots racing past them by one graph each is
                // within the documented bound.
                if self.count.load(Ordering::Relaxed) >= MAX_GRAPHS
                    || self.bytes.load(Ordering::Relaxed) >= MAX_GRAPH_BYTES
                {
                    return Ok(None);
                }
                let pool_before = slot.pool.as_ref().map_or(0, GraphPool::free_bytes);
                match build(model, &mut slot, bucket) {
                    Ok(graph) => {
                        let pool_after = slot.pool.as_ref().map_or(0, GraphPool::free_bytes);
                        let added = pool_after.saturating_sub(pool_before) + graph.io_bytes();
                        self.bytes.fetch_add(added, Ordering::Relaxed);
                        self.count.fetch_add(1, Ordering::Relaxed);
                        slot.graphs.push(graph);
                        slot.graphs.len() - 1
                    }
                    Err(e) => {
                        tracing::warn!(
                            stream = stream.index(),
                            batch = bucket.batch,
                            seq = bucket.seq,
                            error = %e,
                            "capturing a CUDA graph failed; this bucket takes the plain path on this stream"
                        );
                        slot.refused.push(bucket);
                        return Ok(None);
                    }
                }
            }
        };
        let graph = &slot.graphs[index];
        rt.write_u32(
            &graph.staged,
            &bucket.stage(Some(batch), config.pad_token_id),
        )?;
        rt.replay(&graph.graph)?;
        let download = rt.download(&graph.output)?;
        // The next replay on this stream is ordered after this download: the slot may go now.
        drop(slot);
        let mut flat = download.wait()?;
        flat.truncate(batch.batch * model.dim());
        Ok(Some(flat))
    }
}

/// Captures `bucket`'s graph on the current stream (module doc, "Making a graph").
fn build<D: Ops>(
    model: &BertModel<D>,
    slot: &mut SlotGraphs<D>,
    bucket: Bucket,
) -> Result<BucketGraph<D>> {
    let rt = &**model.runtime();
    let pool = match &mut slot.pool {
        Some(pool) => pool,
        empty => empty.insert(rt.graph_pool()?),
    };
    let (b, s, tokens) = (bucket.batch, bucket.seq, bucket.tokens());
    let (staged, inputs) = rt.with_pool(pool, || {
        let inputs = DeviceInputs {
            ids: rt.empty(&[tokens], DType::U32)?,
            positions: rt.empty(&[tokens], DType::U32)?,
            type_ids: rt.empty(&[tokens], DType::U32)?,
            mask: rt.empty(&[b, s], DType::F32)?,
            sequences: None,
            cls_rows: model.cls_rows(b, s).map_err(into_runtime)?,
            batch: b,
            seq: s,
        };
        Ok((rt.empty(&[4 * tokens], DType::U32)?, inputs))
    })?;
    rt.write_u32(&staged, &bucket.stage(None, model.config().pad_token_id))?;
    // The warm-up: the same requests in the same order as the capture's, so the pool then holds
    // every block the capture asks for.
    rt.with_pool(pool, || {
        unstage_and_forward(model, &staged, &inputs).map(drop)
    })?;
    let (graph, output) = rt.capture(pool, || unstage_and_forward(model, &staged, &inputs))?;
    Ok(BucketGraph {
        bucket,
        graph,
        output,
        staged,
        inputs,
    })
}

/// What a graph runs: split the staged inputs into the forward's tensors, then the forward.
fn unstage_and_forward<D: Ops>(
    model: &BertModel<D>,
    staged: &Tensor<D>,
    inputs: &DeviceInputs<D>,
) -> braid_runtime::Result<Tensor<D>> {
    let rt = &**model.runtime();
    let part = 4 * inputs.batch * inputs.seq;
    rt.copy_bytes(staged, 0, &inputs.ids)?;
    rt.copy_bytes(staged, part, &inputs.positions)?;
    rt.copy_bytes(staged, 2 * part, &inputs.type_ids)?;
    rt.copy_bytes(staged, 3 * part, &inputs.mask)?;
    model.forward_device(inputs).map_err(into_runtime)
}

/// A model error inside a runtime closure (capture, pool routing) as a runtime error.
fn into_runtime(e: crate::error::ModelError) -> RuntimeError {
    match e {
        crate::error::ModelError::Runtime(e) => e,
        other => RuntimeError::Device(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_batch_and_tokens_up() {
        let b = |batch, seq| Bucket::of(batch, seq, 512).map(|b| (b.batch, b.seq));
        assert_eq!(b(1, 1), Some((1, 16)));
        assert_eq!(b(1, 16), Some((1, 16)));
        assert_eq!(b(1, 17), Some((1, 32)));
        assert_eq!(b(3, 128), Some((4, 128)));
        assert_eq!(b(8, 100), Some((8, 112)));
        assert_eq!(b(9, 10), None);
        assert_eq!(b(1, 129), None);
        assert_eq!(b(0, 10), None);
        assert_eq!(Bucket::of(1, 60, 50), None, "past the model's positions");
    }

    #[test]
    fn staging_pads_columns_and_rows() {
        let batch = PaddedBatch {
            batch: 1,
            seq: 2,
            ids: vec![101, 102],
            type_ids: vec![0, 1],
            mask: vec![1.0, 1.0],
            positions: vec![0, 1],
        };
        let bucket = Bucket { batch: 2, seq: 3 };
        let p = bucket.stage(Some(&batch), 7);
        let one = 1f32.to_bits();
        assert_eq!(&p[0..6], &[101, 102, 7, 7, 7, 7], "ids");
        assert_eq!(&p[6..12], &[0, 1, 0, 0, 0, 0], "positions");
        assert_eq!(&p[12..18], &[0, 1, 0, 0, 0, 0], "type ids");
        assert_eq!(&p[18..24], &[one, one, 0, one, 0, 0], "mask");
    }
}
