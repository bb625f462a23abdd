#!/usr/bin/env bash
# Bad input while another tenant is served (issue 17, docs/benchmarks.md
# "Bad input"): a release `prism dev` pinned to CPU 1 with its default
# limits, and `prism-loadtest abuse` pinned to CPU 0 against the gateway
# that owns victim/kv: an open loop of checked GetItems on victim/kv at
# RATE/s, measured in phases of PHASE each — none, oversized, nested,
# stream-flood, slowloris, none — and the p50/p99 ratios against the
# first. Fails if the victim saw any error.
# Usage: scripts/bench-abuse.sh [PHASE] [RATE]   (default 20s, 2000)
# Results: $ABUSE_OUT (default ./abuse-results): abuse.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:-20s}
RATE=${2:-2000}
OUT=${ABUSE_OUT:-abuse-results}
PORT=${BENCH_PORT:-27600}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

cargo build -q --release -p prism-cli -p prism-loadtest
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
PRISM="$TARGET_DIR/release/prism"
LOADTEST="$TARGET_DIR/release/prism-loadtest"

RUST_LOG=warn taskset -c 1 "$PRISM" dev --port "$PORT" --data-dir "$WORK/data" > "$WORK/dev.out" 2> "$WORK/dev.err" &
for _ in $(seq 300); do grep -q PRISM_TOKEN "$WORK/dev.out" 2>/dev/null && break; sleep 0.1; done
grep -q PRISM_TOKEN "$WORK/dev.out" || { echo "prism dev did not start:" >&2; cat "$WORK/dev.out" "$WORK/dev.err" >&2; exit 1; }
export PRISM_TOKEN=$(sed -n 's/^export PRISM_TOKEN=//p' "$WORK/dev.out")
export PRISM_ENDPOINT=127.0.0.1:$PORT

"$PRISM" tenant create victim >/dev/null
"$PRISM" namespace create victim/kv --abstraction key-value --wait >/dev/null
SHARD=$("$PRISM" namespace get victim/kv --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["shard_id"])')
OWNER=$((PORT + 1 + ${SHARD#shard-}))
echo "victim/kv on $SHARD (127.0.0.1:$OWNER); machine: $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"

taskset -c 0 "$LOADTEST" abuse --target "127.0.0.1:$OWNER" --namespace victim/kv --rate "$RATE" --phase "$PHASE" --out "$OUT"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
