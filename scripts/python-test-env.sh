#!/usr/bin/env bash
# Make the Python virtual environment that tests use as real clients: the
# official `huggingface_hub` InferenceClient (of the model server) and the
# official `openai` client (of `hgpt serve`), from PyPI, pinned below (numpy
# because InferenceClient.feature_extraction returns numpy arrays, pillow
# because image_segmentation decodes its masks to images).
#
# Usage:  bash scripts/python-test-env.sh [VENV_DIR]
#   VENV_DIR   default: $HGPT_TEST_VENV, else <repo>/target/test-venv
#   PYTHON     interpreter that makes the venv (default python3)
#
# Idempotent: when the venv already holds exactly these pins (recorded in
# VENV_DIR/.hgpt-pins) it does nothing and downloads nothing. The only line
# printed on stdout is the venv's python, so
#   PY="$(bash scripts/python-test-env.sh)"
# works; progress goes to stderr.
set -euo pipefail

PINS=(
  "huggingface_hub==2.4.0"
  "numpy==2.4.6"
  "openai==3.52.0"
  "pillow==13.0.0"
)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${1:-${HGPT_TEST_VENV:-$ROOT/target/test-venv}}"
STAMP="$VENV/.hgpt-pins"
WANT="$(printf '%s\n' "${PINS[@]}")"

log() { echo "python-test-env: $*" >&2; }

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] &&
  "$VENV/bin/python" -c "import huggingface_hub, numpy, openai, PIL" 2>/dev/null; then
  log "already present: $VENV"
  echo "$VENV/bin/python"
  exit 0
fi

log "creating $VENV with ${PINS[*]}"
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
PIP_ARGS=(install --quiet --disable-pip-version-check --only-binary=:all: "${PINS[@]}")
if "$PYTHON" -m venv "$VENV" 1>&2; then
  "$VENV/bin/python" -m pip "${PIP_ARGS[@]}" 1>&2
else
  # No ensurepip (e.g. Debian without python3-venv): a bare venv, filled by
  # the interpreter's own pip.
  log "python -m venv failed; making a venv without pip and installing with $PYTHON's pip"
  rm -rf "$VENV"
  "$PYTHON" -m venv --without-pip "$VENV" 1>&2
  "$PYTHON" -m pip --python "$VENV/bin/python" "${PIP_ARGS[@]}" 1>&2
fi
"$VENV/bin/python" -c "import huggingface_hub, numpy, openai" ||
  { log "the packages do not import in $VENV"; exit 1; }
printf '%s' "$WANT" >"$STAMP"
log "ready: $VENV"
echo "$VENV/bin/python"
