#!/usr/bin/env python3
"""PyTorch anchor: multi-threaded eager inference of an all-MiniLM-L6-v2-shaped BERT on one CUDA GPU.

What braid's `braid bench --device cuda --seq 128` is compared with: N Python caller threads (1, 2, 4,
8, 16), each with its own torch.cuda.Stream, each running embed() = BertModel (random weights, seeded)
+ mean pooling + L2 normalisation on its own batch of SEQ random token ids in a closed loop, and copying
the embeddings to the host (a caller needs them there). fp32 and fp16, batch 1 and 16.

Each configuration: threads start, warm up (3 calls, stream synchronised), then REPS back-to-back
windows of DUR seconds are timed. One row per (dtype, batch, threads):
  dtype, batch, threads, seq_per_s (median window), p50_ms, p99_ms (over every call),
  and seq_per_s_min, seq_per_s_max, reps.
Rows go to stdout as JSON lines and to $OUT/torch_parallel_infer.json (default: the current folder);
the device, driver and versions go to stderr first.

Usage (a GPU machine with torch and transformers):
    python3 scripts/anchors/torch_parallel_infer.py
    OUT=/tmp/figs DUR=2 REPS=5 SEQ=128 python3 scripts/anchors/torch_parallel_infer.py

Environment: DUR seconds per window (default 1), REPS windows (default 5), SEQ tokens (default 128).
Run it right after braid on the same machine: absolute figures differ between machines.
"""

import torch
from transformers import BertConfig, BertModel

from anchor_common import MINILM_SHAPE, describe, drive, emit, env_float, env_int, gpu_line

OUT_NAME = "torch_parallel_infer.json"
SEQ = env_int("SEQ", 128)
DUR = env_float("DUR", 1.0)
REPS = env_int("REPS", 5)
THREADS = (1, 2, 4, 8, 16)
BATCHES = (1, 16)
DTYPES = (torch.float32, torch.float16)


def embed(model, ids, mask):
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def main():
    describe(gpu_line(), f"seq {SEQ}, {REPS} windows of {DUR} s per point")
    dev = torch.device("cuda")
    rows = []
    for dtype in DTYPES:
        torch.manual_seed(0)
        model = BertModel(BertConfig(**MINILM_SHAPE), add_pooling_layer=False).to(dev, dtype).eval()
        for batch in BATCHES:
            for threads in THREADS:

                def worker(i, run, batch=batch):
                    stream = torch.cuda.Stream()
                    gen = torch.Generator().manual_seed(i)
                    ids = torch.randint(1000, 30000, (batch, SEQ), generator=gen).to(dev)
                    mask = torch.ones(batch, SEQ, dtype=torch.long, device=dev)
                    with torch.inference_mode(), torch.cuda.stream(stream):
                        for _ in range(3):
                            embed(model, ids, mask)
                        stream.synchronize()
                        run(lambda: embed(model, ids, mask).cpu())

                r = drive(threads, batch, worker, DUR, REPS)
                row = dict(
                    dtype=str(dtype).split(".")[-1],
                    batch=batch,
                    threads=threads,
                    seq_per_s=r["seq_per_s"],
                    p50_ms=round(r["p50_ms"], 3),
                    p99_ms=round(r["p99_ms"], 3),
                    seq_per_s_min=r["seq_per_s_min"],
                    seq_per_s_max=r["seq_per_s_max"],
                    reps=r["reps"],
                )
                emit(rows, row, OUT_NAME)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
