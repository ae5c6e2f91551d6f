#!/usr/bin/env bash
# Real-browser test of the hgpt web UI. Starts the loopback fake backends
# (hgpt-testkit's fake_backends example) and `hgpt serve` on a temp dir, then
# runs ui.test.mjs (playwright-core driving Debian's chromium headless).
#
#   tests/browser/run.sh [PATH_TO_HGPT]     (default target/debug/hgpt)
#
# Env: CHROMIUM (default /usr/bin/chromium; missing -> the test is skipped),
# SCREENSHOT_DIR (default target/browser), HGPT_API_TOKEN (passed through).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  echo "browser test skipped: chromium not installed"
  exit 0
fi
command -v node >/dev/null || { echo "browser test: node is not installed" >&2; exit 1; }
bin=${1:-target/debug/hgpt}
[ -x "$bin" ] || { echo "browser test: no hgpt binary at $bin (build it first)" >&2; exit 1; }
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
shots=${SCREENSHOT_DIR:-$root/target/browser}

tmp=$(mktemp -d)
fake_pid=
serve_pid=

# Each background process gets its own process group (setsid), so that killing
# the group also stops what it started (cargo run -> the example binary).
setsid=$(command -v setsid || true)

stop() { # stop PID: TERM its group, wait up to 10 s, then KILL
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  trap - EXIT
  stop "$serve_pid"
  stop "$fake_pid"
  if [ "$status" -ne 0 ]; then
    echo "--- hgpt serve (stderr, last lines) ---" >&2
    tail -n 40 "$tmp/serve.err" 2>/dev/null >&2 || true
    echo "--- fake backends (stderr, last lines) ---" >&2
    tail -n 20 "$tmp/fake.err" 2>/dev/null >&2 || true
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "browser test: $*" >&2; exit 1; }

# Inputs: /a.jpg (a small PNG; the server sniffs content) in the media root.
mkdir -p "$tmp/out" "$tmp/data"
node "$here/png.mjs" "$tmp/a.jpg" 96 64

# The fake LLM and inference servers; the first run may compile the example.
$setsid cargo run -q -p hgpt-testkit --example fake_backends -- 300 600 >"$tmp/fake.out" 2>"$tmp/fake.err" &
fake_pid=$!
exports=
for _ in $(seq 1 1200); do
  exports=$(grep -m1 '^export ' "$tmp/fake.out" || true)
  [ -n "$exports" ] && break
  kill -0 "$fake_pid" 2>/dev/null || fail "the fake backends exited before printing their addresses"
  sleep 0.5
done
[ -n "$exports" ] || fail "the fake backends did not start within 10 minutes"
for pair in ${exports#export }; do
  export "${pair?}"
done

# The server, on a free loopback port, with its data and files in the temp dir.
: >"$tmp/hgpt.toml" # an empty config: no stray ./hgpt.toml is read
HGPT_CONFIG="$tmp/hgpt.toml" HGPT_DATA_DIR="$tmp/data" $setsid "$bin" serve --bind 127.0.0.1:0 \
  --media-root "$tmp" --out-dir "$tmp/out" >"$tmp/serve.out" 2>"$tmp/serve.err" &
serve_pid=$!
addr=
for _ in $(seq 1 240); do
  addr=$(sed -n 's|.*hgpt serve: listening on http://\([^ ]*\).*|\1|p' "$tmp/serve.err" "$tmp/serve.out" 2>/dev/null | head -n 1)
  [ -n "$addr" ] && break
  kill -0 "$serve_pid" 2>/dev/null || fail "hgpt serve exited before listening"
  sleep 0.5
done
[ -n "$addr" ] || fail "hgpt serve did not print 'hgpt serve: listening on http://ADDR' within 2 minutes"
echo "hgpt serve is listening on http://$addr"

if [ ! -d "$here/node_modules/playwright-core" ]; then
  (cd "$here" && npm ci --no-audit --no-fund)
fi

HGPT_URL="http://$addr" SCREENSHOT_DIR="$shots" CHROMIUM="$chromium" node "$here/ui.test.mjs"
