#!/usr/bin/env bash
# What forwarding costs (issue 20, docs/benchmarks.md "Forwarding"): h2load
# sends raw gRPC GetItems frames of one cached record to a `prism dev`
# gateway, alternating per round between
#
#   direct     the gateway that owns the namespace
#   forwarded  the other gateway, which forwards each call to the owner
#
# at the same concurrency, in two shapes:
#
#   latency     1 connection, 1 stream (closed loop): p50 and p99 from
#               h2load's per-request log
#   throughput  16 connections x 8 streams: requests/s
#
# Every answer must be a gRPC OK: the owner's and the entry's request
# counters are checked after each round (h2load sees HTTP statuses only).
# Usage: scripts/bench-forwarding.sh [ROUNDS] [SECONDS]   (default 4, 10)
# Needs h2load (apt-get install -y nghttp2-client). Builds release
# binaries. Pins prism dev to CPU 1 and h2load to CPU 0 (taskset).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-4}
SECONDS_PER=${2:-10}
PORT=${BENCH_PORT:-27400}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

command -v h2load >/dev/null || { echo "h2load is missing: apt-get install -y nghttp2-client" >&2; exit 1; }
cargo build -q --release -p prism-cli
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
PRISM="$TARGET_DIR/release/prism"

RUST_LOG=warn taskset -c 1 "$PRISM" dev --port "$PORT" --data-dir "$WORK/data" > "$WORK/dev.out" 2> "$WORK/dev.err" &
for _ in $(seq 300); do grep -q PRISM_TOKEN "$WORK/dev.out" 2>/dev/null && break; sleep 0.1; done
grep -q PRISM_TOKEN "$WORK/dev.out" || { echo "prism dev did not start:" >&2; cat "$WORK/dev.out" "$WORK/dev.err" >&2; exit 1; }
export PRISM_TOKEN=$(sed -n 's/^export PRISM_TOKEN=//p' "$WORK/dev.out")
export PRISM_ENDPOINT=127.0.0.1:$PORT

"$PRISM" tenant create bench >/dev/null
"$PRISM" namespace create bench/cached --abstraction key-value --cache --cache-ttl 1h --wait >/dev/null
"$PRISM" kv put bench/cached k1 =value-of-100-bytes-----------------------------------------------------------------x >/dev/null
SHARD=$("$PRISM" namespace get bench/cached --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["shard_id"])')
OWNER=$((PORT + 1 + ${SHARD#shard-}))
OTHER=$((PORT + 2 - ${SHARD#shard-}))
OWNER_METRICS=$((PORT + 4 + ${SHARD#shard-}))
echo "namespace on $SHARD: owner 127.0.0.1:$OWNER, the other gateway 127.0.0.1:$OTHER"

# One GetItemsRequest{namespace: "bench/cached", id: "k1"} in a gRPC frame.
python3 - "$WORK/get.bin" <<'EOF'
import struct, sys
def field(n, s): b = s.encode(); return bytes([n << 3 | 2, len(b)]) + b
msg = field(1, "bench/cached") + field(2, "k1")
open(sys.argv[1], "wb").write(b"\0" + struct.pack(">I", len(msg)) + msg)
EOF
H=(-H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $PRISM_TOKEN")
url() { echo "http://127.0.0.1:$1/prism.kv.v1.KeyValueService/GetItems"; }
ok_count() { # OK GetItems the owner served
    curl -s "http://127.0.0.1:$OWNER_METRICS/metrics" \
        | awk '/^prism_gateway_requests_total\{rpc="GetItems",tenant="bench",namespace="bench\/cached",code="OK"\}/ { print $2 }'
}

# Warm both gateways' token caches, the owner's record cache, and the
# forwarding channel.
for p in $OWNER $OTHER; do taskset -c 0 h2load -n 2000 -c 4 -m 8 "${H[@]}" -d "$WORK/get.bin" "$(url $p)" > /dev/null; done

latency() { # $1 port -> "p50_us p99_us"
    rm -f "$WORK/log"
    taskset -c 0 h2load -D "$SECONDS_PER" -c 1 -m 1 "${H[@]}" -d "$WORK/get.bin" --log-file="$WORK/log" "$(url "$1")" > /dev/null
    python3 - "$WORK/log" <<'EOF'
import sys
xs = sorted(int(line.split("\t")[2]) for line in open(sys.argv[1]) if line.strip())
print(xs[len(xs) // 2], xs[min(len(xs) - 1, int(len(xs) * 0.99))])
EOF
}
throughput() { # $1 port -> requests/s
    taskset -c 0 h2load -D "$SECONDS_PER" -c 16 -m 8 "${H[@]}" -d "$WORK/get.bin" "$(url "$1")" \
        | awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($(i+1) == "req/s,") print $i }'
}

declare -A P50 P99 RPS
for r in $(seq "$ROUNDS"); do
    order=(direct forwarded)
    [ $((r % 2)) -eq 0 ] && order=(forwarded direct)
    for what in "${order[@]}"; do
        port=$OWNER
        [ "$what" = forwarded ] && port=$OTHER
        before=$(ok_count)
        read -r p50 p99 < <(latency "$port")
        rps=$(throughput "$port")
        served=$(( $(ok_count) - before ))
        [ "$served" -gt 0 ] || { echo "no OK GetItems served by the owner in $what" >&2; exit 1; }
        P50[$what]="${P50[$what]:-} $p50"; P99[$what]="${P99[$what]:-} $p99"; RPS[$what]="${RPS[$what]:-} $rps"
        echo "round $r $what: p50 ${p50} us, p99 ${p99} us (1 x 1); ${rps} req/s (16 x 8); owner served $served OK"
    done
done
python3 - "${P50[direct]}" "${P50[forwarded]}" "${P99[direct]}" "${P99[forwarded]}" "${RPS[direct]}" "${RPS[forwarded]}" <<'EOF'
import statistics, sys
d50, f50, d99, f99, dr, fr = ([float(x) for x in a.split()] for a in sys.argv[1:])
add50 = [f - d for f, d in zip(f50, d50)]
add99 = [f - d for f, d in zip(f99, d99)]
ratio = [f / d for f, d in zip(fr, dr)]
def show(name, xs, unit=""):
    print(f"{name}: median {statistics.median(xs):.0f}{unit}  min {min(xs):.0f}{unit}  max {max(xs):.0f}{unit}")
show("added p50 (forwarded - direct, same round)", add50, " us")
show("added p99 (forwarded - direct, same round)", add99, " us")
print(f"throughput forwarded / direct: median {statistics.median(ratio):.3f}  min {min(ratio):.3f}  max {max(ratio):.3f}")
EOF
