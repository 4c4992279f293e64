#!/usr/bin/env python3
"""PyTorch anchor: what a user would run instead of braid on one GPU, on the real all-MiniLM-L6-v2.

Two engines, one caller each:

- sentence-transformers' SentenceTransformer.encode() (tokenization, forward, pooling, normalisation,
  copy to NumPy), fp32 and fp16 (model.half()), max_seq_length 128:
  - case "<dtype> seq128": 4,096 texts of 200 random vocabulary words (seeded), so every input is
    truncated to 128 tokens, as braid's `--seq 128`; batch 16, 64, 256, 1024;
  - case "<dtype> short sentences": four short sentences repeated; batch 64, 256, 1024.
  Each call encodes 4 batches (texts[: 4 * batch]).
- torch.compile (mode "max-autotune-no-cudagraphs") of transformers' AutoModel in fp16 on fixed
  128-token random id batches of 16 and 256, model and mean pooling only (no tokenizer), result
  copied to the host: PyTorch's best effort without leaving Python.

Every point is the median of REPS windows of DUR seconds (after a warm-up call; the compiled model
after 3). One row per point: engine, case, batch, seq_per_s, and seq_per_s_min, seq_per_s_max, reps.
Rows go to stdout as JSON lines and to $OUT/st_encode.json (default: the current folder); the
device, driver and versions go to stderr first.

Usage (a GPU machine with torch, transformers and sentence-transformers; MODEL_DIR is an
all-MiniLM-L6-v2 directory, e.g. models/all-MiniLM-L6-v2 from `braid fetch-model`):
    python3 scripts/anchors/st_encode.py models/all-MiniLM-L6-v2
    OUT=/tmp/figs DUR=2 REPS=5 python3 scripts/anchors/st_encode.py MODEL_DIR

Environment: DUR seconds per window (default 1), REPS windows (default 5).
"""

import os
import random
import sys

import torch

from anchor_common import describe, emit, env_float, env_int, gpu_line, windows

OUT_NAME = "st_encode.json"
DUR = env_float("DUR", 1.0)
REPS = env_int("REPS", 5)
SHORT = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Parallel inference on one GPU with a stream per thread.",
    "Wie spät ist es?",
]


def long_texts(model_dir, count=4096, words_per_text=200):
    with open(os.path.join(model_dir, "vocab.txt")) as f:
        words = f.read().split()[2000:20000]  # past [PAD], [unused*] and the special tokens
    rng = random.Random(0)
    return [" ".join(rng.choice(words) for _ in range(words_per_text)) for _ in range(count)]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    model_dir = sys.argv[1]
    import sentence_transformers
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    describe(
        gpu_line(),
        f"sentence-transformers {sentence_transformers.__version__}; {REPS} windows of {DUR} s per point",
    )
    rows = []
    texts = {"seq128": long_texts(model_dir), "short sentences": SHORT * 1024}
    batches = {"seq128": (16, 64, 256, 1024), "short sentences": (64, 256, 1024)}

    for dt in ("fp32", "fp16"):
        model = SentenceTransformer(model_dir, device="cuda")
        model.max_seq_length = 128
        if dt == "fp16":
            model = model.half()
        for case in ("seq128", "short sentences"):
            for bs in batches[case]:
                chunk = texts[case][: 4 * bs]
                model.encode(chunk[:bs], batch_size=bs)  # warm-up
                torch.cuda.synchronize()
                r = windows(lambda: model.encode(chunk, batch_size=bs, convert_to_numpy=True), 4 * bs, DUR, REPS)
                emit(rows, dict(engine="sentence-transformers", case=f"{dt} {case}", batch=bs, **r), OUT_NAME)
        del model
        torch.cuda.empty_cache()

    hf = AutoModel.from_pretrained(model_dir).cuda().half().eval()
    compiled = torch.compile(hf, mode="max-autotune-no-cudagraphs")
    for bs in (16, 256):
        ids = torch.randint(1000, 30000, (bs, 128), device="cuda")
        mask = torch.ones_like(ids)

        def step():
            compiled(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1).cpu()

        with torch.inference_mode():
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            r = windows(step, bs, DUR, REPS)
        emit(rows, dict(engine="torch.compile fp16 (no tokenizer)", case="seq128", batch=bs, **r), OUT_NAME)


if __name__ == "__main__":
    main()
