#!/usr/bin/env bash
# The soak (issue 17, docs/benchmarks.md "Soak"): a release `prism dev`
# (control plane and two gateways in one process, embedded storage)
# pinned to CPU 1, and `prism-loadtest soak` pinned to CPU 0 through the
# routing client: capacity measured by a closed loop (20 s at 64 in
# flight), then DURATION at 80 % of it, half KeyValue (soak/kv) and half
# TimeSeries (soak/ts), 80 % reads, every response checked; the prism dev
# process's resident memory and open descriptors (/proc/PID) and each
# window's p50/p99 sampled every 10 s. Fails unless there was no error and
# resident memory stayed within ±10 % after the first minute.
# Usage: scripts/soak.sh [DURATION]   (default 10m)
# SOAK_WARMUP (default 1m): how long into the soak memory may still grow
# (the stores' page caches filling); the verdict holds after it.
# Results: $SOAK_OUT (default ./soak-results): soak.json, soak.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10m}
OUT=${SOAK_OUT:-soak-results}
PORT=${BENCH_PORT:-27500}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

cargo build -q --release -p prism-cli -p prism-loadtest
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
PRISM="$TARGET_DIR/release/prism"
LOADTEST="$TARGET_DIR/release/prism-loadtest"

# taskset execs prism, so $! is prism dev's own pid.
# Each shard's embedded store page cache is bounded at STORE_CACHE_BYTES
# (default 8 MiB, full within the warm-up): redb keeps the pages it wrote
# last up to its cache size, so with the gateway's default (256 MiB)
# resident memory grows with the stored data for the whole run, which is
# the cache filling, not a leak. Bounded, what still grows is a leak.
RUST_LOG=warn taskset -c 1 "$PRISM" dev --port "$PORT" --data-dir "$WORK/data" \
    --store-cache-bytes "${STORE_CACHE_BYTES:-8388608}" > "$WORK/dev.out" 2> "$WORK/dev.err" &
DEV_PID=$!
for _ in $(seq 300); do grep -q PRISM_TOKEN "$WORK/dev.out" 2>/dev/null && break; sleep 0.1; done
grep -q PRISM_TOKEN "$WORK/dev.out" || { echo "prism dev did not start:" >&2; cat "$WORK/dev.out" "$WORK/dev.err" >&2; exit 1; }
export PRISM_TOKEN=$(sed -n 's/^export PRISM_TOKEN=//p' "$WORK/dev.out")
export PRISM_ENDPOINT=127.0.0.1:$PORT

"$PRISM" tenant create soak >/dev/null
"$PRISM" namespace create soak/kv --abstraction key-value --wait >/dev/null
"$PRISM" namespace create soak/ts --abstraction time-series --wait >/dev/null
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load average $(cut -d' ' -f1-3 /proc/loadavg)"

taskset -c 0 "$LOADTEST" soak --target "control-plane:127.0.0.1:$PORT" \
    --kv-namespace soak/kv --ts-namespace soak/ts --duration "$DURATION" --warmup "${SOAK_WARMUP:-1m}" --pid "$DEV_PID" --out "$OUT"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
