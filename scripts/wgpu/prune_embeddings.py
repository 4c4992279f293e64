#!/usr/bin/env python3
"""Writes a copy of a BERT model.safetensors whose word-embedding rows are zero except the token ids a
golden fixture uses, so the copy compresses to about half (the table is half of MiniLM's bytes) and
still reproduces the fixture exactly (only those rows are ever gathered for its cases). Timings do
not depend on the values. Standard library only.

usage: prune_embeddings.py MODEL.safetensors GOLDEN.json OUT.safetensors
"""
import json
import struct
import sys

TABLE = "embeddings.word_embeddings.weight"


def main() -> None:
    src, golden, dst = sys.argv[1:4]
    data = bytearray(open(src, "rb").read())
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    names = [n for n in header if n.endswith(TABLE)]
    if len(names) != 1:
        sys.exit(f"expected one tensor named *{TABLE}, found {names}")
    entry = header[names[0]]
    if entry["dtype"] != "F32":
        sys.exit(f"{names[0]} is {entry['dtype']}, expected F32")
    rows, dim = entry["shape"]
    start, end = (8 + header_len + o for o in entry["data_offsets"])
    keep = {i for case in json.load(open(golden))["cases"] for i in case["ids"]}
    if max(keep) >= rows:
        sys.exit(f"the fixture uses id {max(keep)}, past the table's {rows} rows")
    row_bytes = dim * 4
    pruned = bytearray(end - start)
    for i in keep:
        pruned[i * row_bytes : (i + 1) * row_bytes] = data[start + i * row_bytes : start + (i + 1) * row_bytes]
    data[start:end] = pruned
    open(dst, "wb").write(data)
    print(f"{dst}: kept {len(keep)} of {rows} embedding rows")


if __name__ == "__main__":
    main()
