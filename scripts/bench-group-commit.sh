#!/usr/bin/env bash
# Namespace creates/s through the control plane's API, before and after
# group commit, in the same run (issue 17, item 6).
#
#   scripts/bench-group-commit.sh [COUNT] [ROUNDS] [CLIENTS...]
#
# "Before" is `max_commit_group = 1`: every commit in its own write
# transaction with its own fsync, as the store committed before grouping;
# "after" is the default. For each round and each number of concurrent
# clients (default 16 and 64) it starts a fresh control plane (release
# build, file store in a temp dir on the real disk: TMPDIR_BASE, default
# /var/tmp; never /dev/shm, where fsync costs nothing), creates COUNT
# (default 20000) embedded namespaces over 100 tenants with `prism-loadtest
# namespaces`, stops it, and prints creates/s; before and after alternate
# so both see the same disk. Set PRISM_BIN_DIR to use built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-20000}"
rounds="${2:-3}"
shift $(( $# > 2 ? 2 : $# ))
clients=("$@")
[ ${#clients[@]} -gt 0 ] || clients=(16 64)
bin="${PRISM_BIN_DIR:-}"
if [ -z "$bin" ]; then
    cargo build --release -q -p prism-cli -p prism-loadtest
    bin="${CARGO_TARGET_DIR:-target}/release"
fi
base="${TMPDIR_BASE:-/var/tmp}"
work="$(mktemp -d "$base/prism-groupcommit.XXXXXX")"
cp_pid=""
cleanup() { [ -n "$cp_pid" ] && kill "$cp_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One measurement: GROUP (max_commit_group) and CLIENTS; prints creates/s.
measure() {
    local group="$1" n="$2" dir cp_port metrics rate
    dir="$(mktemp -d "$work/run.XXXXXX")"
    cp_port="$(port)"; metrics="$(port)"
    printf '[control_plane]\nmax_commit_group = %s\n' "$group" >"$dir/prism.toml"
    "$bin/prism" control-plane --config "$dir/prism.toml" --insecure-no-auth --listen "127.0.0.1:$cp_port" \
        --data-dir "$dir/cp" --metrics-listen "127.0.0.1:$metrics" --shard shard-0 >"$dir/cp.log" 2>&1 &
    cp_pid=$!
    for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$metrics/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    rate="$("$bin/prism-loadtest" namespaces --control-plane "127.0.0.1:$cp_port" --count "$count" --tenants 100 \
        --concurrency "$n" --prefix "g$group-c$n" | tee -a "$work/loadtest.log" | sed -n 's/.*(\([0-9]*\)\/s).*/\1/p')"
    kill "$cp_pid"; wait "$cp_pid" 2>/dev/null || true; cp_pid=""
    rm -rf "$dir"
    echo "$rate"
}

echo "# $count creates per measurement, $rounds rounds, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-8s %12s %12s %7s\n' round clients "before/s" "after/s" ratio
for ((r = 1; r <= rounds; r++)); do
    for n in "${clients[@]}"; do
        before="$(measure 1 "$n")"
        after="$(measure 256 "$n")"
        printf '%-6s %-8s %12s %12s %7s\n' "$r" "$n" "$before" "$after" \
            "$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.2f", a / b }')"
    done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
