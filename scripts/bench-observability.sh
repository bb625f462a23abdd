#!/usr/bin/env bash
# The cost of metrics and tracing on the cache-hit path (issue 12), as
# ratios measured in one run: h2load sends raw gRPC GetItems frames of one
# cached record to the gateway that owns the namespace, 16 connections x 8
# streams, while `prism dev` runs (restarted per round, configurations
# alternating) in each configuration:
#
#   off       --no-metrics, no OTEL_* (the baseline)
#   metrics   metrics listeners on, no OTEL_*
#   otel-off  metrics on, OTEL_TRACES_EXPORTER=none (variables set, export off)
#   otel-1%   metrics on, OTLP export to a local receiver at 1 % sampling
#             (parentbased_traceidratio 0.01)
#   otel-0%   (only when named in BENCH_CONFIGS) the exporter installed,
#             sampling nothing (always_off): its cost without any span
#
# BENCH_CONFIGS="off metrics otel-0% otel-1%" picks others (off first).
# Usage: scripts/bench-observability.sh [ROUNDS] [SECONDS]   (default 4, 10)
# Needs h2load (apt-get install -y nghttp2-client). Builds release
# binaries. Pins prism dev to CPU 1 and h2load to CPU 0 (taskset).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-4}
SECONDS_PER=${2:-10}
PORT=${BENCH_PORT:-27400}
OTLP=127.0.0.1:$((PORT + 10))
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

command -v h2load >/dev/null || { echo "h2load is missing: apt-get install -y nghttp2-client" >&2; exit 1; }
cargo build -q --release -p prism-cli
cargo build -q --release -p prism-testkit --example otlp_sink
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
PRISM="$TARGET_DIR/release/prism"
SINK="$TARGET_DIR/release/examples/otlp_sink"

"$SINK" "$OTLP" > "$WORK/sink.log" &

start_dev() { # $1 = configuration
    local extra=() env=()
    case $1 in
        off) extra=(--no-metrics) ;;
        metrics) ;;
        otel-off) env=(OTEL_EXPORTER_OTLP_ENDPOINT="http://$OTLP" OTEL_TRACES_EXPORTER=none) ;;
        otel-1%) env=(OTEL_EXPORTER_OTLP_ENDPOINT="http://$OTLP" OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01) ;;
        otel-0%) env=(OTEL_EXPORTER_OTLP_ENDPOINT="http://$OTLP" OTEL_TRACES_SAMPLER=always_off) ;;
    esac
    env "${env[@]}" RUST_LOG=warn taskset -c 1 "$PRISM" dev --port "$PORT" --data-dir "$WORK/data" "${extra[@]}" > "$WORK/dev.out" 2> "$WORK/dev.err" &
    DEV=$!
    for _ in $(seq 300); do grep -q PRISM_TOKEN "$WORK/dev.out" 2>/dev/null && break; sleep 0.1; done
    grep -q PRISM_TOKEN "$WORK/dev.out" || { echo "prism dev did not start ($1):" >&2; cat "$WORK/dev.out" "$WORK/dev.err" >&2; exit 1; }
    export PRISM_TOKEN=$(sed -n 's/^export PRISM_TOKEN=//p' "$WORK/dev.out")
    export PRISM_ENDPOINT=127.0.0.1:$PORT
}
stop_dev() { kill -INT "$DEV"; wait "$DEV" || true; }

# The namespace and its record, once (embedded storage persists across restarts).
start_dev metrics
"$PRISM" tenant create bench >/dev/null
"$PRISM" namespace create bench/cached --abstraction key-value --cache --cache-ttl 1h --wait >/dev/null
"$PRISM" kv put bench/cached k1 =value-of-100-bytes-----------------------------------------------------------------x >/dev/null
SHARD=$("$PRISM" namespace get bench/cached --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["shard_id"])')
GW_PORT=$((PORT + 1 + ${SHARD#shard-}))
METRICS_PORT=$((PORT + 4 + ${SHARD#shard-}))
stop_dev

# One GetItemsRequest{namespace: "bench/cached", id: "k1"} in a gRPC frame
# (uncompressed flag, 4-byte big-endian length, the message).
python3 - "$WORK/get.bin" <<'EOF'
import struct, sys
def field(n, s): b = s.encode(); return bytes([n << 3 | 2, len(b)]) + b
msg = field(1, "bench/cached") + field(2, "k1")
open(sys.argv[1], "wb").write(b"\0" + struct.pack(">I", len(msg)) + msg)
EOF

run() { # $1 = configuration; sets RPS[$1] (requests/s)
    start_dev "$1"
    local url="http://127.0.0.1:$GW_PORT/prism.kv.v1.KeyValueService/GetItems"
    local h=(-H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $PRISM_TOKEN")
    # Warm the record cache and the token cache.
    taskset -c 0 h2load -n 2000 -c 4 -m 8 "${h[@]}" -d "$WORK/get.bin" "$url" > /dev/null
    taskset -c 0 h2load -D "$SECONDS_PER" -c 16 -m 8 "${h[@]}" -d "$WORK/get.bin" "$url" > "$WORK/h2load.out"
    if [ "$1" != off ]; then
        # What was measured was served: OK answers of GetItems counted.
        curl -s "http://127.0.0.1:$METRICS_PORT/metrics" > "$WORK/metrics.txt"
        grep -q 'prism_gateway_requests_total{rpc="GetItems",tenant="bench",namespace="bench/cached",code="OK"}' "$WORK/metrics.txt" \
            || { echo "no OK GetItems counted in $1" >&2; cat "$WORK/h2load.out" "$WORK/dev.err" >&2; stop_dev; exit 1; }
    fi
    stop_dev
    RPS[$1]=$(awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($(i+1) == "req/s,") print $i }' "$WORK/h2load.out")
}

read -r -a CONFIGS <<< "${BENCH_CONFIGS:-off metrics otel-off otel-1%}"
declare -A SUM
for r in $(seq "$ROUNDS"); do
    line="round $r:"
    # Alternate which configuration goes first.
    order=("${CONFIGS[@]}")
    if [ $((r % 2)) -eq 0 ]; then
        order=()
        for ((i = ${#CONFIGS[@]} - 1; i >= 0; i--)); do order+=("${CONFIGS[$i]}"); done
    fi
    declare -A RPS
    for c in "${order[@]}"; do run "$c"; done
    for c in "${CONFIGS[@]}"; do
        line+=" $c=${RPS[$c]}"
        ratio=$(python3 -c "print(${RPS[$c]} / ${RPS[off]})")
        SUM[$c]="${SUM[$c]:-} $ratio"
    done
    echo "$line"
done
echo "spans received by the sink: $(tail -1 "$WORK/sink.log")"
for c in "${CONFIGS[@]}"; do
    python3 - "$c" ${SUM[$c]} <<'EOF'
import statistics, sys
name, xs = sys.argv[1], [float(x) for x in sys.argv[2:]]
print(f"{name:9s} / off: mean {statistics.mean(xs):.3f}  min {min(xs):.3f}  max {max(xs):.3f}  stddev {statistics.pstdev(xs):.3f}")
EOF
done
