#!/usr/bin/env bash
# braid serve's figures on a GPU machine from a prebuilt release binary (the GPU machine has no Rust
# toolchain and no network). Two halves:
#
#   bash scripts/serve-bench.sh pack DIR   # here (with cargo): build, strip, copy braid + model into DIR
#   bash DIR/serve-bench.sh run            # there: braid serve-bench on CUDA, f16, short real sentences
#
# `run` writes the table to $OUT/serve-bench-h200.txt (or DIR): 256 concurrent HTTP connections (and
# 128) vs 256 (and 128) caller threads on the engine in process, 1 and 32 sentences per request, TEI
# and OpenAI routes, medians of 5 runs of 3 s each. Knobs: CONNECTIONS, SECONDS_PER_RUN, REPEAT, DTYPE.
set -euo pipefail
mode="${1:-}"
case "$mode" in
pack)
    dir="${2:?usage: serve-bench.sh pack DIR}"
    root="$(cd "$(dirname "$0")/.." && pwd)"
    cd "$root"
    target="${CARGO_TARGET_DIR:-target}"
    cargo build --release -p braid-cli
    mkdir -p "$dir/model"
    cp "$target/release/braid" "$dir/braid" && strip "$dir/braid"
    cp -r models/all-MiniLM-L6-v2/. "$dir/model/"
    cp "$0" "$dir/serve-bench.sh"
    du -sh "$dir"
    ;;
run)
    here="$(cd "$(dirname "$0")" && pwd)"
    cd "$here"
    out="${OUT:-$here}"
    # NVRTC and cuBLAS come from the CUDA toolkit; cudarc loads them by name.
    for d in /usr/local/cuda/lib64 /usr/local/cuda-13.0/targets/x86_64-linux/lib; do
        [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
    done
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    for api in tei openai; do
        ./braid serve-bench --model model --device cuda --dtype "${DTYPE:-f16}" \
            --connections "${CONNECTIONS:-256}" --per-request 1,32 \
            --seconds "${SECONDS_PER_RUN:-3}" --repeat "${REPEAT:-5}" --api "$api" \
            | tee -a "$out/serve-bench-h200.txt"
    done
    ;;
*)
    echo "usage: serve-bench.sh pack DIR | run" >&2
    exit 2
    ;;
esac
