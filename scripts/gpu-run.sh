#!/usr/bin/env bash
# The CUDA test suite and benchmark on a GPU machine from prebuilt release binaries (the GPU machine has no
# Rust toolchain and no network). Pack here, run there:
#
#   bash scripts/gpu-run.sh pack DIR     # here (with cargo): build, strip, copy binaries + model + fixture
#                                        # (crates/model/tests/fixtures) + anchors (scripts/anchors) into DIR
#   bash DIR/gpu-run.sh run              # there: CUDA tests (GPU required), braid bench on CUDA, PyTorch anchor
#   bash DIR/gpu-run.sh serve            # there: braid serve-bench on CUDA, f16 (docs/bench/serve.md)
#
# `run` writes JSON figures under $OUT (or DIR). Set ANCHOR=0 to skip the PyTorch anchor. The other
# anchors are in DIR/anchors (scripts/anchors/README.md says how to run them).
set -euo pipefail
mode="${1:-}"

# The packed folder, and the CUDA toolkit's NVRTC and cuBLAS on the library path (cudarc loads them
# by name).
enter_pack() {
    here="$(cd "$(dirname "$0")" && pwd)"
    cd "$here"
    out="${OUT:-$here}"
    for d in /usr/local/cuda/lib64 /usr/local/cuda-13.0/targets/x86_64-linux/lib; do
        if [ -d "$d" ]; then export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; fi
    done
}
case "$mode" in
pack)
    dir="${2:?usage: gpu-run.sh pack DIR}"
    root="$(cd "$(dirname "$0")/.." && pwd)"
    cd "$root"
    target="${CARGO_TARGET_DIR:-target}"
    cargo build --release -p braid-cli -p braid-cuda -p braid-engine --tests --bins --examples
    mkdir -p "$dir/model"
    for t in cuda_device cuda_events cuda_stress cuda_ops cuda_attention cuda_model cuda_graphs cuda_lifetime cuda_engine; do
        f=$(ls -t "$target"/release/deps/$t-* | grep -v '\.d$' | head -1)
        cp "$f" "$dir/$t" && strip "$dir/$t"
    done
    cp "$target/release/braid" "$dir/braid" && strip "$dir/braid"
    cp "$target/release/examples/alloc_throughput" "$dir/alloc_throughput" && strip "$dir/alloc_throughput"
    cp -r models/all-MiniLM-L6-v2/. "$dir/model/"
    cp crates/model/tests/fixtures/minilm-golden.json "$dir/"
    mkdir -p "$dir/anchors"
    cp scripts/anchors/*.py scripts/anchors/README.md "$dir/anchors/"
    cp "$0" "$dir/gpu-run.sh"
    du -sh "$dir"
    ;;
run)
    enter_pack
    export BRAID_MODEL="$here/model" BRAID_GOLDEN="$here/minilm-golden.json" BRAID_REQUIRE_CUDA=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    echo "== CUDA tests"
    for t in cuda_device cuda_events cuda_stress cuda_ops cuda_attention cuda_model cuda_graphs cuda_lifetime cuda_engine; do
        ./$t --nocapture --test-threads 1
    done
    echo "== caching allocator on CUDA, driven as the PyTorch runtime anchor drives PyTorch's"
    ./alloc_throughput
    echo "== braid bench on CUDA, 128-token inputs (as the anchor), then real sentences"
    for dtype in f32 f16 bf16; do
        ./braid bench --device cuda --dtype $dtype --seq 128 --seconds 2 --json "$out/braid_cuda_seq128_$dtype.json"
    done
    ./braid bench --device cuda --seconds 2 --json "$out/braid_cuda_sentences.json"
    if [ "${ANCHOR:-1}" != 0 ]; then
        echo "== PyTorch anchor (same machine, right after)"
        OUT="$out" DUR=1 python3 anchors/torch_parallel_infer.py
    fi
    ;;
serve)
    # 256 (and 128) HTTP connections vs as many caller threads on the engine in process, 1 and 32
    # sentences per request, TEI then OpenAI route, medians of 5 runs of 3 s; the tables go to
    # $OUT/serve-bench-h200.txt. Knobs: CONNECTIONS, SECONDS_PER_RUN, REPEAT, DTYPE.
    enter_pack
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    for api in tei openai; do
        ./braid serve-bench --model model --device cuda --dtype "${DTYPE:-f16}" \
            --connections "${CONNECTIONS:-256}" --per-request 1,32 \
            --seconds "${SECONDS_PER_RUN:-3}" --repeat "${REPEAT:-5}" --api "$api" \
            | tee -a "$out/serve-bench-h200.txt"
    done
    ;;
*)
    echo "usage: gpu-run.sh pack DIR | run | serve" >&2
    exit 2
    ;;
esac
