#!/usr/bin/env bash
# The gateway's hot path against a bare gRPC echo (issue 14's throughput
# target; docs/benchmarks.md "Hot path: throughput against the echo"):
# h2load sends raw gRPC GetItems frames of one cached 100-byte record,
# 16 connections x 8 streams, alternating per round between
#
#   gateway   a release `prism dev` gateway: every layer, the record cache
#   echo      `prism-loadtest echo`: the same tonic server answering
#             GetItems with a 100-byte value and doing nothing else
#   base      (with BASE=DIR) the `prism` binary in DIR, e.g. an older
#             build, so two builds are compared in the same minutes
#
# Both servers run on CPU 1 and h2load on CPU 0 (taskset): each server has
# one core, and the load generator is much cheaper than either. Every
# gateway answer must be a gRPC OK: the owner's request counter is checked
# after each round (h2load sees HTTP statuses only).
#
# Usage: [BIN=DIR] [BASE=DIR] scripts/bench-hot-path.sh [ROUNDS] [SECONDS]   (default 5, 10)
# Needs h2load (apt-get install -y nghttp2-client). Builds release binaries
# unless BIN names a directory holding `prism` and `prism-loadtest`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SECONDS_PER=${2:-10}
PORT=${BENCH_PORT:-27400}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

command -v h2load >/dev/null || { echo "h2load is missing: apt-get install -y nghttp2-client" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
    cargo build -q --release -p prism-cli -p prism-loadtest
    BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
fi
PRISM="$BIN/prism"
LOADTEST="$BIN/prism-loadtest"

# One GetItemsRequest{namespace: "bench/cached", id: "k1"} in a gRPC frame.
python3 - "$WORK/get.bin" <<'EOF'
import struct, sys
def field(n, s): b = s.encode(); return bytes([n << 3 | 2, len(b)]) + b
msg = field(1, "bench/cached") + field(2, "k1")
open(sys.argv[1], "wb").write(b"\0" + struct.pack(">I", len(msg)) + msg)
EOF

# start_dev NAME BINARY BASE_PORT: a `prism dev` on CPU 1 with one cached
# record; sets GW_<NAME> (the owner's gRPC port), METRICS_<NAME> and TOKEN.
start_dev() {
    local name=$1 bin=$2 port=$3
    RUST_LOG=warn taskset -c 1 "$bin" dev --port "$port" --data-dir "$WORK/$name" > "$WORK/$name.out" 2> "$WORK/$name.err" &
    for _ in $(seq 300); do grep -q PRISM_TOKEN "$WORK/$name.out" 2>/dev/null && break; sleep 0.1; done
    grep -q PRISM_TOKEN "$WORK/$name.out" || { echo "prism dev ($name) did not start:" >&2; cat "$WORK/$name.out" "$WORK/$name.err" >&2; exit 1; }
    local token
    token=$(sed -n 's/^export PRISM_TOKEN=//p' "$WORK/$name.out")
    PRISM_TOKEN=$token PRISM_ENDPOINT=127.0.0.1:$port "$PRISM" tenant create bench >/dev/null
    PRISM_TOKEN=$token PRISM_ENDPOINT=127.0.0.1:$port "$PRISM" namespace create bench/cached --abstraction key-value --cache --cache-ttl 1h --wait >/dev/null
    PRISM_TOKEN=$token PRISM_ENDPOINT=127.0.0.1:$port "$PRISM" kv put bench/cached k1 =value-of-100-bytes-----------------------------------------------------------------x >/dev/null
    local shard
    shard=$(PRISM_TOKEN=$token PRISM_ENDPOINT=127.0.0.1:$port "$PRISM" namespace get bench/cached --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["shard_id"])')
    printf -v "GW_$name" '%s' $((port + 1 + ${shard#shard-}))
    printf -v "METRICS_$name" '%s' $((port + 4 + ${shard#shard-}))
    printf -v "TOKEN_$name" '%s' "$token"
}

start_dev gateway "$PRISM" "$PORT"
SERVERS=(gateway echo)
if [ -n "${BASE:-}" ]; then
    start_dev base "$BASE/prism" $((PORT + 10))
    SERVERS+=(base)
fi
ECHO_PORT=$((PORT + 20))
taskset -c 1 "$LOADTEST" echo --listen "127.0.0.1:$ECHO_PORT" --value-size 100 > "$WORK/echo.out" 2>&1 &
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$ECHO_PORT") 2>/dev/null && break; sleep 0.1; done

port_of() { case $1 in gateway) echo "$GW_gateway";; base) echo "$GW_base";; echo) echo "$ECHO_PORT";; esac; }
token_of() { case $1 in gateway) echo "$TOKEN_gateway";; base) echo "$TOKEN_base";; echo) echo "$TOKEN_gateway";; esac; }
url() { echo "http://127.0.0.1:$(port_of "$1")/prism.kv.v1.KeyValueService/GetItems"; }
headers() { H=(-H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $(token_of "$1")"); }
ok_count() { # OK GetItems the owner served; "-" for the echo, which counts nothing
    local metrics
    case $1 in gateway) metrics=$METRICS_gateway;; base) metrics=$METRICS_base;; *) echo -; return;; esac
    curl -s "http://127.0.0.1:$metrics/metrics" \
        | awk '/^prism_gateway_requests_total\{rpc="GetItems",tenant="bench",namespace="bench\/cached",code="OK"\}/ { print $2 }'
}
throughput() { # $1 server -> requests/s
    headers "$1"
    taskset -c 0 h2load -D "$SECONDS_PER" -c 16 -m 8 "${H[@]}" -d "$WORK/get.bin" "$(url "$1")" \
        | awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($(i+1) == "req/s,") print $i }
               /^status codes:/ { if ($3 + 0 == 0) print "no 2xx" > "/dev/stderr" }'
}

# Warm the token and record caches.
for s in "${SERVERS[@]}"; do headers "$s"; taskset -c 0 h2load -n 5000 -c 4 -m 8 "${H[@]}" -d "$WORK/get.bin" "$(url "$s")" > /dev/null; done

declare -A RPS
for r in $(seq "$ROUNDS"); do
    # A new order each round, so no server always runs first or last.
    mapfile -t order < <(printf '%s\n' "${SERVERS[@]}" | python3 -c "import random,sys; xs=sys.stdin.read().split(); random.Random($r).shuffle(xs); print('\n'.join(xs))")
    line="round $r:"
    for s in "${order[@]}"; do
        before=$(ok_count "$s")
        rps=$(throughput "$s")
        after=$(ok_count "$s")
        if [ "$before" != - ]; then
            served=$(python3 -c "print(int(float('$after') - float('$before')))")
            [ "$served" -gt 0 ] || { echo "$s served no OK GetItems in round $r" >&2; exit 1; }
        fi
        RPS[$s]="${RPS[$s]:-} $rps"
        line="$line $s ${rps} req/s;"
    done
    echo "$line  (load average $(cut -d' ' -f1 /proc/loadavg))"
done
python3 - "${RPS[gateway]}" "${RPS[echo]}" "${RPS[base]:-}" <<'EOF'
import statistics, sys
g, e = ([float(x) for x in a.split()] for a in sys.argv[1:3])
b = [float(x) for x in sys.argv[3].split()]
def show(name, xs):
    print(f"{name}: mean {statistics.mean(xs):.3f}  min {min(xs):.3f}  max {max(xs):.3f}  (per round: {', '.join(f'{x:.3f}' for x in xs)})")
show("gateway / echo", [x / y for x, y in zip(g, e)])
if b:
    show("base / echo", [x / y for x, y in zip(b, e)])
    show("gateway / base", [x / y for x, y in zip(g, b)])
EOF
