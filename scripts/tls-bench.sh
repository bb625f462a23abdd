#!/usr/bin/env bash
# The cost of TLS on a gateway, measured with h2load (docs/benchmarks.md,
# "Gateway: TLS"). Two replicas of one shard serve the same cache-enabled
# namespace, one in plain text and one over TLS (its own certificate, made
# here with openssl: ECDSA P-256, the kind rcgen and most CAs issue), and:
#
# 1. cache-hit GetItems: h2load sends the same GetItems (raw gRPC frames)
#    on 16 connections × 8 streams for DURATION seconds to each replica in
#    turn, ROUNDS times, alternating which goes first; reported as req/s
#    and the TLS/plain ratio per round;
# 2. handshakes: CONNS connections made as fast as h2load can, each sending
#    one GetItems and closing (h2load -c CONNS -n CONNS), to each replica
#    in turn: new connections per second, TLS and plain, and the gateway
#    process's CPU time per connection (from /proc: what bounds the rate a
#    gateway sustains when the client is not on the same cores).
#
# Usage: scripts/tls-bench.sh   (env: PRISM=target/release/prism ROUNDS=3
# DURATION=5 CONNS=2000). Needs h2load (apt-get install nghttp2-client),
# openssl and python3; build first: cargo build --release -p prism-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
PRISM=${PRISM:-target/release/prism}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-2000}
command -v h2load >/dev/null || { echo "h2load is missing: apt-get install -y nghttp2-client" >&2; exit 1; }
[ -x "$PRISM" ] || { echo "$PRISM is missing: cargo build --release -p prism-cli" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

dir=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

# A CA and a server certificate for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench-ca \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=gateway \
    -keyout "$dir/gw.key" -out "$dir/gw.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/san.ext"
openssl x509 -req -in "$dir/gw.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
    -extfile "$dir/san.ext" -out "$dir/gw.crt" 2>/dev/null

# A secret, and HS256 tokens signed with it: the admin's and the shard's.
secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
token() {
    python3 - "$secret" "$1" "$2" <<'PY'
import base64, hashlib, hmac, json, sys, time
secret, sub, role = sys.argv[1:]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": sub, "roles": [role], "exp": int(time.time()) + 3600}).encode())
signature = b64(hmac.new(secret.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest())
print(f"{header}.{claims}.{signature}")
PY
}
admin=$(token bench-admin admin)
shard=$(token shard-0 shard)
cat >"$dir/prism.toml" <<TOML
[control_plane]
shards = ["shard-0"]
auth = { hs256_secret = "$secret" }
[gateway]
control_plane_token = "$shard"
auth = { hs256_secret = "$secret" }
TOML

# `start VAR ARGS…` starts `prism ARGS…` in the background (not in a
# subshell, so its pid is recorded for cleanup) and sets VAR to the
# address it serves on and VAR_pid to its pid.
start() {
    local var=$1 out="$dir/out.$1"
    shift
    PRISM_CONFIG="$dir/prism.toml" RUST_LOG=warn "$PRISM" "$@" >"$out" 2>>"$dir/servers.log" &
    pids+=($!)
    printf -v "${var}_pid" '%s' "$!"
    for _ in $(seq 100); do
        if grep -q "serving on" "$out"; then
            printf -v "$var" '%s' "$(sed -n 's/.* serving on //p' "$out")"
            return
        fi
        sleep 0.1
    done
    echo "prism $* did not start:" >&2; cat "$dir/servers.log" >&2; exit 1
}
start cp control-plane --listen 127.0.0.1:0 --data-dir "$dir/cp"
start plain gateway --shard-id shard-0 --control-plane "$cp" --listen 127.0.0.1:0 --data-dir "$dir/gw-plain"
start tls gateway --shard-id shard-0 --control-plane "$cp" --listen 127.0.0.1:0 --data-dir "$dir/gw-tls" \
    --tls-cert "$dir/gw.crt" --tls-key "$dir/gw.key"
echo "control plane $cp; gateways $plain (plain) and $tls (TLS)"

export PRISM_ENDPOINT=$cp PRISM_TOKEN=$admin PRISM_CA_FILE=$dir/ca.crt
"$PRISM" tenant create bench >/dev/null
"$PRISM" namespace create bench/cached --abstraction key-value --cache --cache-ttl 1h --wait >/dev/null
# Each replica has its own embedded store: the record goes to both, then
# one read each fills their caches.
for gw in "http://$plain" "$tls"; do
    "$PRISM" kv put bench/cached user-1 name=Ada lang=en --gateway "$gw" >/dev/null
    "$PRISM" kv get bench/cached user-1 --gateway "$gw" >/dev/null
done

# GetItems{namespace: "bench/cached", id: "user-1"} as a gRPC frame.
python3 - "$dir/get.bin" <<'PY'
import struct, sys
def field(n, s):
    b = s.encode()
    return bytes([n << 3 | 2, len(b)]) + b
msg = field(1, "bench/cached") + field(2, "user-1")
open(sys.argv[1], "wb").write(b"\0" + struct.pack(">I", len(msg)) + msg)
PY
h2() {
    h2load "$@" -d "$dir/get.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        -H "authorization: Bearer $admin"
}
# req/s of an h2load run, after checking every response carried data (a
# gRPC error is a trailers-only response: HTTP 200 and no DATA).
rate() {
    local out=$1
    local done data
    done=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$out")
    data=$(sed -n 's/^traffic: .* (\([0-9]*\)) data.*/\1/p' "$out")
    if [ -z "$done" ] || [ "$done" -eq 0 ] || [ "$data" -lt $((done * 20)) ]; then
        echo "h2load saw failed requests:" >&2; cat "$out" >&2; exit 1
    fi
    sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' "$out"
}
url="/prism.kv.v1.KeyValueService/GetItems"

echo "== cache-hit GetItems, 16 connections x 8 streams, ${DURATION}s per run"
for round in $(seq "$ROUNDS"); do
    order=("http://$plain" "https://${tls#https://}")
    [ $((round % 2)) -eq 0 ] && order=("${order[1]}" "${order[0]}")
    declare -A rps=()
    for target in "${order[@]}"; do
        h2 -c 16 -m 8 -t 1 -D "$DURATION" --warm-up-time 1 "$target$url" >"$dir/h2.out"
        rps[$target]=$(rate "$dir/h2.out")
    done
    p=${rps["http://$plain"]}; t=${rps["https://${tls#https://}"]}
    echo "round $round: plain $p req/s, tls $t req/s, tls/plain $(python3 -c "print(round($t/$p, 3))")"
done

# CPU time (user + system, in clock ticks) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

echo "== new connections: $CONNS connections, one GetItems each (gateway CPU per connection in µs)"
for round in $(seq "$ROUNDS"); do
    for target in "http://$plain" "https://${tls#https://}"; do
        pid=$plain_pid
        [ "$target" = "http://$plain" ] || pid=$tls_pid
        before=$(ticks "$pid")
        h2 -c "$CONNS" -n "$CONNS" -m 1 -t 1 --connection-inactivity-timeout=10 "$target$url" >"$dir/h2.out"
        cpu=$(( ($(ticks "$pid") - before) * 1000000 / hz / CONNS ))
        echo "round $round: $target $(rate "$dir/h2.out") connections/s, gateway CPU ${cpu} µs per connection"
    done
done
