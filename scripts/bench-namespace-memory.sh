#!/usr/bin/env bash
# What a namespace costs a gateway in resident memory (issue 14's target:
# at most 1 KB per namespace at 100 000 namespaces, measured as growth over
# an empty gateway).
#
#   scripts/bench-namespace-memory.sh [COUNT] [SHARDS]
#
# Starts a control plane (file store on /dev/shm, so commits are cheap) and
# one gateway of shard-0 (embedded storage), both release builds; reads
# the gateway's VmRSS when it holds no namespace; creates COUNT embedded
# KeyValue namespaces with `prism-loadtest namespaces` spread over SHARDS
# shards (default 1: the gateway owns and provisions every one; with 2 it
# holds every namespace in its snapshot but provisions half); waits until
# the gateway has seen and provisioned them all; reads VmRSS again; prints
# the growth per namespace. Set PRISM_BIN_DIR to use built binaries, and
# GATEWAY_WRAPPER to run the gateway under a profiler, e.g.
# GATEWAY_WRAPPER="valgrind --tool=massif --massif-out-file=/tmp/gw.massif"
# (then the resident sizes are the profiler's, and its report says where
# the heap goes: ms_print /tmp/gw.massif).
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-100000}"
shards="${2:-1}"
bin="${PRISM_BIN_DIR:-}"
if [ -z "$bin" ]; then
    cargo build --release -q -p prism-cli -p prism-loadtest
    bin="${CARGO_TARGET_DIR:-target}/release"
fi
base="${TMPDIR_BASE:-/dev/shm}"
dir="$(mktemp -d "$base/prism-nsmem.XXXXXX")"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cp_port="$(port)"; gw_port="$(port)"; gw_metrics="$(port)"
shard_flags=()
for ((s = 0; s < shards; s++)); do shard_flags+=(--shard "shard-$s"); done
"$bin/prism" control-plane --insecure-no-auth --listen "127.0.0.1:$cp_port" --data-dir "$dir/cp" \
    "${shard_flags[@]}" >"$dir/cp.log" 2>&1 &
pids+=($!)
${GATEWAY_WRAPPER:-} "$bin/prism" gateway --shard-id shard-0 --control-plane "127.0.0.1:$cp_port" --listen "127.0.0.1:$gw_port" \
    --data-dir "$dir/gw" --allow-anonymous --metrics-listen "127.0.0.1:$gw_metrics" >"$dir/gw.log" 2>&1 &
gw=$!
pids+=($gw)

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$gw/status"; }
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$gw_metrics/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 3
empty="$(rss_kib)"
echo "empty gateway: ${empty} KiB resident"

"$bin/prism-loadtest" namespaces --control-plane "127.0.0.1:$cp_port" --count "$count" --tenants 100 --concurrency 32

# Seen: the snapshot holds every namespace. Provisioned: none of this
# shard's is PROVISIONING any more.
metric() { curl -fsS "http://127.0.0.1:$gw_metrics/metrics" 2>/dev/null | awk -v m="$1" 'index($0, m) == 1 { print $2 }' || true; }
while :; do
    held="$(metric 'prism_gateway_metadata_namespaces{owner="any"}')"
    [ "${held%.*}" -ge "$count" ] 2>/dev/null && break
    sleep 1
done
while :; do
    pending="$(metric 'prism_gateway_owned_namespaces{status="provisioning"}')"
    [ "${pending%.*}" = 0 ] && break
    sleep 1
done
sleep 5
full="$(rss_kib)"
echo "gateway holding ${count} namespaces over ${shards} shard(s): ${full} KiB resident"
awk -v e="$empty" -v f="$full" -v n="$count" 'BEGIN { printf "growth: %.0f bytes per namespace\n", (f - e) * 1024 / n }'
