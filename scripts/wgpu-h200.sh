#!/usr/bin/env bash
# The wgpu backend's tests and figures on a GPU machine through Vulkan, from prebuilt release binaries
# (the GPU machine has no Rust toolchain, no network and no Vulkan loader). Two halves:
#
#   bash scripts/wgpu-h200.sh pack DIR     # here (cargo, python3, apt-get, xz): build, strip and pack
#                                          # into DIR: the wgpu test binaries, braid, the forward_counts
#                                          # example, the model (word-embedding rows the golden fixture
#                                          # does not use zeroed, so all of it fits the device tool's
#                                          # 64 MiB), the fixture, libvulkan1 and the GL dispatch
#                                          # libraries NVIDIA's Vulkan driver needs, as .deb files
#   bash DIR/wgpu-h200.sh run              # there: unpack, Vulkan loader, wgpu tests (adapter required),
#                                          # each kernel's time at batch 1 and 64 (op_times), dispatches/
#                                          # submits per forward under each commit policy (and with a
#                                          # submit batch of 1), braid bench on wgpu per policy (f32) and
#                                          # in f16, and on CUDA (f32, f16) at the same points
#   bash DIR/wgpu-h200.sh quick            # there: the tests, op_times with each GEMM kernel forced,
#                                          # forward_counts, and one short f32 bench on wgpu and CUDA
#
# `run` writes JSON figures and a log under $OUT (or DIR). BRAID_WGPU_ADAPTER defaults to `discrete`.
set -euo pipefail
mode="${1:-}"
tests="wgpu_device wgpu_ops wgpu_gemm wgpu_stress wgpu_model"
case "$mode" in
pack)
    dir="${2:?usage: wgpu-h200.sh pack DIR}"
    root="$(cd "$(dirname "$0")/.." && pwd)"
    cd "$root"
    target="${CARGO_TARGET_DIR:-target}"
    cargo build --release -p braid-cli -p braid-wgpu --tests --bins --examples
    stage="$(mktemp -d)"
    mkdir -p "$stage/model" "$stage/debs" "$dir"
    for t in $tests; do
        f=$(ls -t "$target"/release/deps/$t-* | grep -v '\.d$' | head -1)
        cp "$f" "$stage/$t" && strip "$stage/$t"
    done
    cp "$target/release/braid" "$stage/braid" && strip "$stage/braid"
    for e in forward_counts op_times; do
        cp "$target/release/examples/$e" "$stage/$e" && strip "$stage/$e"
    done
    cp -r models/all-MiniLM-L6-v2/. "$stage/model/"
    python3 scripts/wgpu/prune_embeddings.py models/all-MiniLM-L6-v2/model.safetensors \
        crates/model/tests/fixtures/minilm-golden.json "$stage/model/model.safetensors"
    cp crates/model/tests/fixtures/minilm-golden.json "$stage/"
    # The Vulkan loader for x86-64, whatever this machine's architecture (the device tool's README).
    lists="$(mktemp -d)"
    o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$lists"
    mkdir -p "$lists/partial"
    apt-get $o update -qq
    # The loader alone finds no adapter there: NVIDIA's Vulkan driver needs the GL vendor-neutral
    # dispatch libraries too (measured on the H200: "adapters: none" with libvulkan1 only).
    (cd "$stage/debs" && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
    tar -C "$stage" -cf - . | xz -T0 -6 > "$dir/pack.tar.xz"
    cp "$0" "$dir/wgpu-h200.sh"
    rm -rf "$stage" "$lists"
    du -sh "$dir"
    ;;
run | quick)
    here="$(cd "$(dirname "$0")" && pwd)"
    out="${OUT:-$here}"
    work="$(mktemp -d)"
    if command -v xz > /dev/null; then
        xz -dc "$here/pack.tar.xz"
    else
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' \
            "$here/pack.tar.xz"
    fi | tar -C "$work" -xf -
    cd "$work"
    if ! ldconfig -p | grep -q 'libGLX\.so\.0' || ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
        for f in debs/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    nvidia=/usr/local/nvidia/share
    if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nvidia/vulkan/icd.d/nvidia_icd.json" ]; then
        export VK_DRIVER_FILES="$nvidia/vulkan/icd.d/nvidia_icd.json"
        export __EGL_VENDOR_LIBRARY_FILENAMES="$nvidia/glvnd/egl_vendor.d/10_nvidia.json"
    fi
    # NVRTC and cuBLAS for the CUDA figures beside wgpu's; cudarc loads them by name.
    for d in /usr/local/cuda/lib64 /usr/local/cuda-13.0/targets/x86_64-linux/lib; do
        [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
    done
    export BRAID_MODEL="$work/model" BRAID_GOLDEN="$work/minilm-golden.json" BRAID_REQUIRE_WGPU=1
    export BRAID_WGPU_ADAPTER="${BRAID_WGPU_ADAPTER:-discrete}"
    export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$work}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    {
        echo "== wgpu tests on $BRAID_WGPU_ADAPTER"
        failed=0
        for t in $tests; do
            ./$t --nocapture --test-threads 1 || { echo "== FAILED: $t"; failed=1; }
        done
        echo "== each kernel's time (op_times; the GEMM kernel chosen by shape, then each one forced)"
        ./op_times 1x12 64x20
        if [ "$mode" = quick ]; then
            for g in small 64 128; do
                echo "-- BRAID_WGPU_GEMM=$g"
                BRAID_WGPU_GEMM=$g ./op_times 1x12 64x20 | grep linear
            done
            ./forward_counts 1
            ./braid bench --device wgpu --threads 1,16 --batch 1,64 --seconds 1 --mode direct \
                --json "$out/wgpu-h200-f32-quick.json"
            ./braid bench --device cuda --threads 1,16 --batch 1,64 --seconds 1 --mode direct \
                --json "$out/cuda-h200-f32-quick.json"
            exit $failed
        fi
        ./op_times 1x12 64x28
        ./op_times 1x12 64x20 64x28 f16
        echo "== dispatches and submits per forward under each commit policy (one caller)"
        ./forward_counts 2
        echo "-- with a submit batch of 1 (every commit of the runtime submits)"
        BRAID_WGPU_SUBMIT_BATCH=1 ./forward_counts 2
        echo "== braid bench on wgpu (f32), per commit policy"
        for policy in auto on off; do
            BRAID_COMMIT_AND_CONTINUE=$policy ./braid bench --device wgpu --threads 1,16 --batch 1,64 \
                --seconds 2 --mode direct --json "$out/wgpu-h200-f32-$policy.json"
        done
        echo "== braid bench on wgpu (f16, policy auto)"
        ./braid bench --device wgpu --dtype f16 --threads 1,16 --batch 1,64 --seconds 2 --mode direct \
            --json "$out/wgpu-h200-f16-auto.json"
        echo "== braid bench on CUDA (f32 and f16), the same points, same machine"
        for dtype in f32 f16; do
            ./braid bench --device cuda --dtype $dtype --threads 1,16 --batch 1,64 --seconds 2 \
                --mode direct --json "$out/cuda-h200-$dtype-beside-wgpu.json"
        done
        exit $failed
    } 2>&1 | tee "$out/wgpu-h200.log"
    test "${PIPESTATUS[0]}" -eq 0
    ;;
*)
    echo "usage: wgpu-h200.sh pack DIR | run | quick" >&2
    exit 2
    ;;
esac
