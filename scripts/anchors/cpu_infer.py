#!/usr/bin/env python3
"""CPU anchor: an all-MiniLM-L6-v2-shaped BERT on the host's cores, PyTorch eager and ONNX Runtime.

What braid's `braid bench --seq 128` (CPU backend) is compared with. Random weights (seeded), SEQ
random token ids per sequence, embed() = model + mean pooling + L2 normalisation (ONNX Runtime: the
model alone, last_hidden_state). Two ways of using the cores, batch 1 and 16:

- "1 caller x <cores> intra": one caller, the library's intra-op pool on every core;
- "callers x 1 intra" (torch) / "callers x 1 intra, shared session" (onnxruntime): 1, 4 and 16 caller
  threads, one intra-op thread each; ONNX Runtime callers share one InferenceSession (concurrent
  run() calls), as a server would.

ONNX Runtime runs the same module exported with torch.onnx.export (TorchScript exporter, opset 17,
dynamic batch and sequence axes, ORT_ENABLE_ALL, CPUExecutionProvider) to a temporary file.

Each configuration: callers warm up (one call), then REPS back-to-back windows of DUR seconds are
timed. One row per configuration:
  engine, mode, batch, threads, seq_per_s (median window), p50_ms (over every call),
  and seq_per_s_min, seq_per_s_max, p99_ms, reps.
Rows go to stdout as JSON lines and to $OUT/cpu_infer.json (default: the current folder); the CPU and
the library versions go to stderr first.

Usage (torch, transformers, onnx and onnxruntime installed):
    DUR=3 python3 scripts/anchors/cpu_infer.py
    OUT=/tmp/figs DUR=3 REPS=5 SEQ=128 python3 scripts/anchors/cpu_infer.py

Environment: DUR seconds per window (default 3: a batch-16 call on one core takes ~0.5 s), REPS
windows (default 5), SEQ tokens (default 128).
"""

import os
import tempfile

import numpy as np
import torch
from transformers import BertConfig, BertModel

from anchor_common import MINILM_SHAPE, cpu_line, describe, drive, emit, env_float, env_int

OUT_NAME = "cpu_infer.json"
SEQ = env_int("SEQ", 128)
DUR = env_float("DUR", 3.0)
REPS = env_int("REPS", 5)
BATCHES = (1, 16)
CALLERS = (1, 4, 16)
CORES = os.cpu_count()


class LastHidden(torch.nn.Module):
    """BertModel with positional inputs and one output, for the ONNX export."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def inputs(i, batch):
    ids = np.random.default_rng(i).integers(1000, 30000, (batch, SEQ)).astype(np.int64)
    return ids, np.ones((batch, SEQ), dtype=np.int64)


def measure(rows, engine, mode, fn, threads, batch):
    def worker(i, run):
        ids, mask = inputs(i, batch)
        fn(ids, mask)  # warm-up
        run(lambda: fn(ids, mask))

    r = drive(threads, batch, worker, DUR, REPS)
    row = dict(
        engine=engine,
        mode=mode,
        batch=batch,
        threads=threads,
        seq_per_s=r["seq_per_s"],
        p50_ms=round(r["p50_ms"], 2),
        seq_per_s_min=r["seq_per_s_min"],
        seq_per_s_max=r["seq_per_s_max"],
        p99_ms=round(r["p99_ms"], 2),
        reps=r["reps"],
    )
    emit(rows, row, OUT_NAME)


def main():
    import onnxruntime as ort
    import transformers

    describe(
        cpu_line(),
        f"torch {torch.__version__}, transformers {transformers.__version__}, onnxruntime {ort.__version__}",
        f"seq {SEQ}, {REPS} windows of {DUR} s per point",
    )
    torch.manual_seed(0)
    model = BertModel(BertConfig(**MINILM_SHAPE), add_pooling_layer=False).eval()
    rows = []

    def torch_embed(ids, mask):
        with torch.inference_mode():
            ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
            hidden = model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
            m = mask_t.unsqueeze(-1).to(hidden.dtype)
            return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)

    for batch in BATCHES:
        torch.set_num_threads(CORES)
        measure(rows, "torch", f"1 caller x {CORES} intra", torch_embed, 1, batch)
        torch.set_num_threads(1)
        for threads in CALLERS:
            measure(rows, "torch", "callers x 1 intra", torch_embed, threads, batch)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "minilm_shape.onnx")
        example = (torch.ones(1, SEQ, dtype=torch.long), torch.ones(1, SEQ, dtype=torch.long))
        axes = {0: "batch", 1: "seq"}
        torch.onnx.export(
            LastHidden(model),
            example,
            path,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes},
            opset_version=17,
            dynamo=False,
        )

        def session(intra):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = intra
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

        def runner(sess):
            return lambda ids, mask: sess.run(None, {"input_ids": ids, "attention_mask": mask})

        for batch in BATCHES:
            measure(rows, "onnxruntime", f"1 caller x {CORES} intra", runner(session(CORES)), 1, batch)
            shared = runner(session(1))
            for threads in CALLERS:
                measure(rows, "onnxruntime", "callers x 1 intra, shared session", shared, threads, batch)


if __name__ == "__main__":
    main()
