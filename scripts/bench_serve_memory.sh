#!/usr/bin/env bash
# Resident memory of `hgpt serve` with the embedded controller (SmolLM2-135M,
# laid out by scripts/fetch-smollm2.sh) and MiniLM in-process: after start-up
# (idle), and its peak while 8 runs go at once. Offline, local mode; nothing
# leaves the machine. Usage: scripts/bench_serve_memory.sh [path/to/hgpt]
# (default: target/release/hgpt; build it with `cargo build --release -p hgpt`).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/hgpt}
model=target/test-models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
[ -x "$bin" ] || { echo "no $bin: cargo build --release -p hgpt" >&2; exit 1; }
[ -f "$model" ] || bash scripts/fetch-smollm2.sh >/dev/null
bash scripts/fetch-minilm.sh >/dev/null

tmp=$(mktemp -d)
serve_pid=
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
printf '[llm]\nmax_tokens = 160\n' >"$tmp/hgpt.toml"

env -i PATH="$PATH" HGPT_CONFIG="$tmp/hgpt.toml" HGPT_LLM_LOCAL="$model" HF_HUB_OFFLINE=1 \
  HF_HUB_CACHE="$PWD/target/test-models/hub" HGPT_INFERENCE_MODE=local \
  HGPT_HF_BASE_URL=http://127.0.0.1:9 XDG_CACHE_HOME="$tmp/cache" HGPT_DATA_DIR="$tmp/data" \
  HGPT_MEDIA_ROOT="$tmp" HGPT_OUT_DIR="$tmp/out" \
  "$bin" serve --bind 127.0.0.1:0 2>"$tmp/serve.err" &
serve_pid=$!
addr=
for _ in $(seq 1 600); do
  addr=$(sed -n 's|.*listening on http://\([^ ]*\).*|\1|p' "$tmp/serve.err" | head -n 1)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$tmp/serve.err" >&2; exit 1; }
kib() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$serve_pid/status"; }
sleep 1
echo "idle: $(( $(kib VmRSS) / 1024 )) MiB resident"

requests=(
  "how similar are 'a cat sits on the mat' and 'a kitten rests on a rug'?"
  "hello, how are you today?"
  "what is the capital of France?"
  "tell me a joke"
  "compare 'I like tea' with 'I enjoy tea'"
  "thanks, that's all"
  "write a haiku about autumn"
  "classify the sentiment of 'I absolutely loved this film'"
)
ids=()
started=$(date +%s.%N)
for request in "${requests[@]}"; do
  body=$(python3 -c 'import json,sys; print(json.dumps({"request": sys.argv[1]}))' "$request")
  id=$(curl -s -X POST "http://$addr/v1/runs" -H 'content-type: application/json' -d "$body" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  ids+=("$id")
done
for id in "${ids[@]}"; do
  curl -s -N "http://$addr/v1/runs/$id/events" >/dev/null
done
ended=$(date +%s.%N)
peak=$(kib VmHWM)
states=$(for id in "${ids[@]}"; do
  curl -s "http://$addr/v1/runs/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'
done | sort | uniq -c | tr -s ' ' | paste -sd, -)
echo "8 concurrent runs: peak $(( peak / 1024 )) MiB resident, $(( $(kib VmRSS) / 1024 )) MiB after; states:${states}; $(python3 -c "print(round($ended - $started, 1))") s"
