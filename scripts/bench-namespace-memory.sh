#!/usr/bin/env bash
# What namespaces cost the control plane and a gateway: a gateway's
# resident memory per namespace (issue 14's target: at most 1 KB per
# namespace at 100 000 namespaces, measured as growth over an empty
# gateway), and, at up to a million (issue 17, item 6): the time to create
# them through the API, the control plane's resident memory, a full
# snapshot's size and the time to receive it, the time a new gateway takes
# to load it, and the delta latency a watcher sees.
#
#   scripts/bench-namespace-memory.sh [COUNT] [SHARDS] [CLIENTS]
#
# Starts a control plane (file store in TMPDIR_BASE, default /dev/shm, so
# commits are cheap; /var/tmp puts it on the disk) and one gateway of
# shard-0 (embedded storage), both release builds; reads the gateway's
# VmRSS when it holds no namespace; creates COUNT embedded KeyValue
# namespaces with `prism-loadtest namespaces` (100 tenants, CLIENTS in
# flight, default 32) spread over SHARDS shards (default 1: the gateway
# owns and provisions every one; with 2 it holds every namespace in its
# snapshot but provisions half); waits until the gateway has seen and
# provisioned them all; reads VmRSS again; prints the growth per
# namespace. Then it reads a full snapshot and times 200 probe creates
# until their deltas reach a watcher (`prism-loadtest namespaces --count 0
# --snapshot --watch-probes 200`), starts a second gateway of shard-0 (a
# replica: it loads the snapshot but provisions nothing) and times it
# until it holds every namespace, and prints every process's VmRSS. Set
# PRISM_BIN_DIR to use built binaries, and GATEWAY_WRAPPER to run the
# first gateway under a profiler, e.g.
# GATEWAY_WRAPPER="valgrind --tool=massif --massif-out-file=/tmp/gw.massif"
# (then the resident sizes are the profiler's, and its report says where
# the heap goes: ms_print /tmp/gw.massif).
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-100000}"
shards="${2:-1}"
clients="${3:-32}"
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

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cp_port="$(port)"; gw_port="$(port)"; gw_metrics="$(port)"
shard_flags=()
for ((s = 0; s < shards; s++)); do shard_flags+=(--shard "shard-$s"); done
"$bin/prism" control-plane --insecure-no-auth --listen "127.0.0.1:$cp_port" --data-dir "$dir/cp" \
    "${shard_flags[@]}" >"$dir/cp.log" 2>&1 &
cp=$!
pids+=($cp)
${GATEWAY_WRAPPER:-} "$bin/prism" gateway --shard-id shard-0 --control-plane "127.0.0.1:$cp_port" --listen "127.0.0.1:$gw_port" \
    --data-dir "$dir/gw" --allow-anonymous --metrics-listen "127.0.0.1:$gw_metrics" >"$dir/gw.log" 2>&1 &
gw=$!
pids+=($gw)

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$gw_metrics/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 3
empty="$(rss_kib "$gw")"
echo "empty gateway: ${empty} KiB resident; control plane: $(rss_kib "$cp") KiB"
echo "machine: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), store in $base"

started="$(now)"
"$bin/prism-loadtest" namespaces --control-plane "127.0.0.1:$cp_port" --count "$count" --tenants 100 \
    --concurrency "$clients"

# Seen: the snapshot holds every namespace. Provisioned: none of this
# shard's is PROVISIONING any more.
metric() {
    curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null | awk -v m="$2" 'index($0, m) == 1 { print $2 }' || true
}
while :; do
    held="$(metric "$gw_metrics" 'prism_gateway_metadata_namespaces{owner="any"}')"
    [ "${held%.*}" -ge "$count" ] 2>/dev/null && break
    sleep 1
done
echo "gateway holds all ${count} after $(since "$started") s"
while :; do
    pending="$(metric "$gw_metrics" 'prism_gateway_owned_namespaces{status="provisioning"}')"
    [ "${pending%.*}" = 0 ] && break
    sleep 1
done
echo "gateway provisioned its share after $(since "$started") s"
sleep 5
full="$(rss_kib "$gw")"
echo "gateway holding ${count} namespaces over ${shards} shard(s): ${full} KiB resident"
awk -v e="$empty" -v f="$full" -v n="$count" 'BEGIN { printf "growth: %.0f bytes per namespace\n", (f - e) * 1024 / n }'
echo "control plane: $(rss_kib "$cp") KiB resident; store $(du -sk "$dir/cp" | cut -f1) KiB on disk"

# What following the metadata costs at this size.
"$bin/prism-loadtest" namespaces --control-plane "127.0.0.1:$cp_port" --count 0 --tenants 100 \
    --snapshot --watch-probes 200
echo "control plane after serving a snapshot: $(rss_kib "$cp") KiB resident"
delta_apply() {
    curl -fsS "http://127.0.0.1:$gw_metrics/metrics" 2>/dev/null |
        awk '/^prism_gateway_metadata_delta_apply_seconds_(sum|count)/ { print $1, $2 }' | tr '\n' ' '
}
echo "gateway delta apply: $(delta_apply)"

# A new gateway: a replica of shard-0, so it loads the whole snapshot but
# provisions nothing (the namespaces' owner store is the first one's).
total=$((count + 201))
gw2_port="$(port)"; gw2_metrics="$(port)"
started="$(now)"
"$bin/prism" gateway --shard-id shard-0 --control-plane "127.0.0.1:$cp_port" --listen "127.0.0.1:$gw2_port" \
    --data-dir "$dir/gw2" --allow-anonymous --metrics-listen "127.0.0.1:$gw2_metrics" >"$dir/gw2.log" 2>&1 &
gw2=$!
pids+=($gw2)
peak=0
while :; do
    peak="$(awk -v p="$peak" -v r="$(rss_kib "$cp")" 'BEGIN { print (r > p) ? r : p }')"
    held="$(metric "$gw2_metrics" 'prism_gateway_metadata_namespaces{owner="any"}')"
    [ "${held%.*}" -ge "$total" ] 2>/dev/null && break
    sleep 0.2
done
echo "new gateway holds all ${total} namespaces $(since "$started") s after it started"
for _ in $(seq 600); do curl -fsS "http://127.0.0.1:$gw2_metrics/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
echo "new gateway ready $(since "$started") s after it started"
sleep 5
echo "resident: control plane $(rss_kib "$cp") KiB (peak while serving the snapshot ${peak} KiB), \
gateway $(rss_kib "$gw") KiB, new gateway $(rss_kib "$gw2") KiB"
