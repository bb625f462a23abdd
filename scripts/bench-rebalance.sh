#!/usr/bin/env bash
# A rebalance at scale (issue 17, item 6): COUNT namespaces on a shared
# backend over SHARDS static shards, then a new shard registers and the
# control plane moves the namespaces it wins in bounded commits while a
# watcher follows.
#
#   scripts/bench-rebalance.sh [COUNT] [SHARDS] [CLIENTS]
#
# Starts a release control plane (file store in TMPDIR_BASE, default
# /dev/shm: this measures the control plane, not the disk) with SHARDS
# static shards (default 4), creates COUNT (default 1 000 000) shared
# KeyValue namespaces with `prism-loadtest namespaces --shared` (CLIENTS
# in flight, default 64), then `--join-shard joiner`: registers an
# instance of shard `joiner`, heartbeats it, and follows the watch until
# every namespace it wins has moved (commits, the largest, the time to the
# last, commit -> watcher lag). Prints the control plane's resident memory
# before the join and its peak (VmHWM) and current after. Set
# PRISM_BIN_DIR to use built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-1000000}"
shards="${2:-4}"
clients="${3:-64}"
bin="${PRISM_BIN_DIR:-}"
if [ -z "$bin" ]; then
    cargo build --release -q -p prism-cli -p prism-loadtest
    bin="${CARGO_TARGET_DIR:-target}/release"
fi
base="${TMPDIR_BASE:-/dev/shm}"
dir="$(mktemp -d "$base/prism-rebalance.XXXXXX")"
cp=""
cleanup() { [ -n "$cp" ] && kill "$cp" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
status() { awk -v k="$2:" '$1 == k { printf "%.0f MiB", $2 / 1024 }' "/proc/$1/status"; }
cp_port="$(port)"
shard_flags=()
for ((s = 0; s < shards; s++)); do shard_flags+=(--shard "shard-$s"); done
"$bin/prism" control-plane --insecure-no-auth --listen "127.0.0.1:$cp_port" --data-dir "$dir/cp" \
    "${shard_flags[@]}" >"$dir/cp.log" 2>&1 &
cp=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$cp_port") 2>/dev/null && break
    sleep 0.1
done

"$bin/prism-loadtest" namespaces --control-plane "127.0.0.1:$cp_port" --count "$count" \
    --concurrency "$clients" --shared --join-shard joiner >"$dir/loadtest.out" 2>&1 &
lt=$!
# The control plane's memory once every namespace is created, before the
# shard joins (the loadtest prints the creates first).
until grep -q "ABORTED retried" "$dir/loadtest.out" || ! kill -0 "$lt" 2>/dev/null; do sleep 0.2; done
echo "control plane before the join: $(status "$cp" VmRSS) resident, peak so far $(status "$cp" VmHWM)"
wait "$lt" || { cat "$dir/loadtest.out"; exit 1; }
cat "$dir/loadtest.out"
echo "control plane after the join: $(status "$cp" VmRSS) resident, peak $(status "$cp" VmHWM)"
echo "store on disk: $(du -sh "$dir/cp" | cut -f1)"
grep -c "settled namespaces" "$dir/cp.log" | sed 's/^/settler passes that moved namespaces: /'
