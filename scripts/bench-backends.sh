#!/usr/bin/env bash
# Prism's backend paths against what a user would run instead, in one run,
# at equal concurrency, rounds alternating the order (issue 19;
# docs/benchmarks.md, "Backends against the user's alternative"):
#
#   postgres  one record of one 100-byte item, C clients:
#             - pgbench -M prepared and -M extended straight to PostgreSQL,
#               and -M extended through PgBouncer (transaction pooling, pool
#               C), running the postgres plugin's own read and write
#               statements as single statements (`prism-loadtest
#               pgbench-script`: the plugin's texts, imported);
#             - a `prism dev` gateway driven by h2load with raw gRPC frames
#               (`prism-loadtest grpc-frame`): GetItems with the read cache
#               off and on, and PutItems (C h2load processes of one
#               connection, one record each, like pgbench's C clients).
#             Every phase is counted on the server too (pg_stat_statements):
#             h2load sees HTTP statuses only, and gRPC errors are 200s.
#   kafka     cargo bench -p prism-plugin-kafka --bench kafka
#   pulsar    cargo bench -p prism-gateway --features pulsar --bench pulsar:
#             WriteEventRecordsSync, then ReadEventRecords of one page of
#             100 events from a topic preloaded with $EVENTS events, each
#             through the gateway (tonic clients; h2load), the plugin
#             directly and a bare `pulsar` client (producer; reader)
#
#   scripts/bench-backends.sh [postgres|kafka|pulsar|all]     (default all)
#
# Environment: ROUNDS (3), PHASE_SECONDS (8), CONCURRENCY (16), OPS
# ("get put": which PostgreSQL operations), EVENTS (1000) and READS (160,
# per phase) for the Pulsar reads, CARGO_TARGET_DIR. Needs PostgreSQL 15's binaries, pgbench, PgBouncer and
# h2load (installed with apt-get when missing, as root); tansu and
# pulsar-lite for the Kafka and Pulsar benches (scripts/test.sh installs
# them). Everything runs on this machine in a temp dir and is stopped at
# the end; results go to stdout and to $OUT (default a temp dir's
# results.tsv).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
rounds=${ROUNDS:-3}
seconds=${PHASE_SECONDS:-8}
c=${CONCURRENCY:-16}
ops=${OPS:-get put}
target_dir=${CARGO_TARGET_DIR:-target}

need() { # command, Debian package
    command -v "$1" >/dev/null 2>&1 && return 0
    [ "$(id -u)" = 0 ] || { echo "$1 is missing: apt-get install -y $2" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

bench_postgres() {
    need h2load nghttp2-client
    need pgbouncer pgbouncer
    need pgbench postgresql-client
    local pgbin
    pgbin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
    [ -x "$pgbin/initdb" ] || { echo "PostgreSQL is missing: apt-get install -y postgresql" >&2; exit 1; }
    cargo build --release -q -p prism-cli -p prism-loadtest
    local bin=$target_dir/release
    local lt=$bin/prism-loadtest
    work=$(mktemp -d /tmp/prism-bench.XXXXXX)
    chmod 755 "$work" # the server runs as nobody when we are root
    local out=${OUT:-$work/results.tsv}
    : > "$out"
    free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
    # Three consecutive free ports for prism dev (control plane, two shards).
    dev_port() {
        python3 - <<'PY'
import socket
for base in range(21000, 60000, 7):
    try:
        socks = []
        for p in range(base, base + 3):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        print(base); break
    except OSError:
        pass
PY
    }

    # PostgreSQL as the testkit runs it (fsync, synchronous_commit and
    # full_page_writes off: CPU-bound, not disk-bound), plus
    # pg_stat_statements to count what each phase ran.
    local pgport as_pg=()
    pgport=$(free_port)
    mkdir -p "$work/pg/data" "$work/pg/socket"
    if [ "$(id -u)" = 0 ]; then chown -R nobody "$work/pg"; as_pg=(runuser -u nobody --); fi
    "${as_pg[@]}" "$pgbin/initdb" -D "$work/pg/data" -U postgres -A trust -E UTF8 --no-locale --no-sync >/dev/null
    cat >> "$work/pg/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pgport
unix_socket_directories = '$work/pg/socket'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 32MB
shared_preload_libraries = 'pg_stat_statements'
CONF
    "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w start >/dev/null
    stop_pg=("${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate stop)
    local psql=("$pgbin/psql" -X -q -t -A -h 127.0.0.1 -p "$pgport" -U postgres postgres)
    "${psql[@]}" -c 'CREATE EXTENSION pg_stat_statements' >/dev/null

    local bouncer
    bouncer=$(scripts/pgbouncer.sh 127.0.0.1 "$pgport" "$c" | paste -sd' ')
    read -r bouncer_dsn bouncer_pid bouncer_dir <<<"$bouncer"
    local bport=${bouncer_dsn##*:}; bport=${bport%%/*}

    local dport
    dport=$(dev_port)
    "$bin/prism" dev --data-dir "$work/prism" --port "$dport" > "$work/dev.log" 2>&1 &
    dev_pid=$!
    for _ in $(seq 200); do grep -q 'export PRISM_TOKEN=' "$work/dev.log" && break; sleep 0.05; done
    export PRISM_ENDPOINT=127.0.0.1:$dport
    PRISM_TOKEN=$(sed -n 's/^export PRISM_TOKEN=//p' "$work/dev.log"); export PRISM_TOKEN
    [ -n "$PRISM_TOKEN" ] || { echo "prism dev did not start:" >&2; cat "$work/dev.log" >&2; exit 1; }
    local dsn="postgres://postgres@127.0.0.1:$pgport/postgres"
    "$bin/prism" tenant create bench >/dev/null
    "$bin/prism" namespace create bench/pg --abstraction key-value --backend postgres --dsn "$dsn" \
        --pool-size "$c" --wait >/dev/null
    "$bin/prism" namespace create bench/pgc --abstraction key-value --backend postgres --dsn "$dsn" \
        --pool-size "$c" --cache --cache-ttl 1h --wait >/dev/null

    # The gateway that owns each namespace answers; the other refuses.
    owner() {
        local port
        for port in $((dport + 1)) $((dport + 2)); do
            if "$lt" grpc-frame --call put-items --namespace "$1" --id 0 --out "$work/probe" \
                --check "127.0.0.1:$port" >/dev/null 2>&1; then echo "127.0.0.1:$port"; return; fi
        done
        echo "no gateway serves $1" >&2; exit 1
    }
    local gw gwc
    gw=$(owner bench/pg); gwc=$(owner bench/pgc)
    local base
    base=$("${psql[@]}" -c "SELECT base FROM prism_kv_namespaces WHERE name = 'bench/pg'")
    local get_path put_path
    get_path=$("$lt" grpc-frame --call get-items --namespace bench/pg --id 0 --out "$work/get.grpc" --check "$gw")
    "$lt" grpc-frame --call get-items --namespace bench/pgc --id 0 --out "$work/getc.grpc" --check "$gwc" >/dev/null
    for i in $(seq 0 $((c - 1))); do
        put_path=$("$lt" grpc-frame --call put-items --namespace bench/pg --id $((2000 + i)) \
            --out "$work/put-$i.grpc" --check "$gw")
    done
    local h2=(-H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $PRISM_TOKEN")

    # Statements the server ran so far, BEGIN and COMMIT included, but not
    # these counting queries.
    calls() {
        "${psql[@]}" -c "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'"
    }
    # One phase: prints "ops/s server-statements-per-op".
    phase() {
        local kind=$1 before after rate n
        before=$(calls)
        case $kind in
            pg-prepared|pg-extended|bouncer)
                local mode=${kind#pg-} port=$pgport script
                [ "$kind" = bouncer ] && { mode=extended; port=$bport; }
                script=$work/$op.sql
                mapfile -t defs < <("$lt" pgbench-script --scenario "kv-$op" --tables "$base" --id 0 --id-base 1000 --out "$script")
                rate=$(pgbench -n -M "$mode" -c "$c" -j 1 -T "$seconds" -f "$script" "${defs[@]}" \
                    -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1 | awk '/^tps/ {print $3}')
                n=$(awk -v r="$rate" -v s="$seconds" 'BEGIN {printf "%d", r * s}') ;;
            gateway-off|gateway-on)
                local frame=$work/get.grpc endpoint=$gw report
                [ "$kind" = gateway-on ] && { frame=$work/getc.grpc; endpoint=$gwc; }
                report=$(h2load -c "$c" -m 1 -D "$seconds" --warm-up-time 1 "${h2[@]}" -d "$frame" "http://$endpoint$get_path")
                rate=$(awk '/^finished in/ {print $4}' <<<"$report")
                # Requests of the warm-up second ran statements too.
                n=$(awk -v s="$seconds" '/^requests:/ {printf "%d", $2 * (s + 1) / s}' <<<"$report") ;;
            gateway-put)
                local pids=() i
                for i in $(seq 0 $((c - 1))); do
                    h2load -c 1 -m 1 -D "$seconds" --warm-up-time 1 "${h2[@]}" -d "$work/put-$i.grpc" \
                        "http://$gw$put_path" > "$work/put-$i.out" &
                    pids+=($!)
                done
                wait "${pids[@]}"
                rate=$(cat "$work"/put-*.out | awk '/^finished in/ {s += $4} END {print s}')
                n=$(cat "$work"/put-*.out | awk -v s="$seconds" '/^requests:/ {n += $2} END {printf "%d", n * (s + 1) / s}') ;;
        esac
        after=$(calls)
        # A failed gateway call would still be an HTTP 200 to h2load.
        case $kind in gateway-*)
            "$lt" grpc-frame --call "$op-items" --namespace bench/pg --id 0 --out "$work/probe" --check "$gw" >/dev/null ;;
        esac
        awk -v r="$rate" -v d=$((after - before)) -v n="$n" 'BEGIN {printf "%.0f %.2f\n", r, (n > 0 ? d / n : 0)}'
    }

    echo "== postgres: C = $c, $seconds s a phase, $rounds rounds; $(nproc) CPUs; load: $(uptime | sed 's/.*load average: //')"
    local round op kinds kind result
    for round in $(seq 1 "$rounds"); do
        for op in $ops; do
            if [ "$op" = get ]; then kinds=(pg-prepared pg-extended bouncer gateway-off gateway-on)
            else kinds=(pg-prepared pg-extended bouncer gateway-put); fi
            if [ $((round % 2)) = 0 ]; then
                local reversed=() k; for k in "${kinds[@]}"; do reversed=("$k" "${reversed[@]}"); done; kinds=("${reversed[@]}")
            fi
            for kind in "${kinds[@]}"; do
                result=$(phase "$kind")
                printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$op" "$kind" $result | tee -a "$out"
            done
        done
    done
    echo "== load at the end: $(uptime | sed 's/.*load average: //')"
    # Ratios to PgBouncer, per round, then mean (min–max).
    printf "\n%-5s %-12s %10s %28s %14s\n" op path "ops/s" "vs PgBouncer: mean (min-max)" "SQL stmts/op"
    awk -F'\t' '
        { rate[$1, $2, $3] = $4; spo[$2, $3] += $5; n[$2, $3]++; kinds[$2, $3] = 1; r[$1] = 1 }
        END {
            for (key in kinds) {
                split(key, k, SUBSEP); op = k[1]; kind = k[2]
                sum = 0; lo = 1e9; hi = 0; ops = 0; m = 0
                for (round in r) {
                    b = rate[round, op, "bouncer"]; v = rate[round, op, kind]
                    if (b > 0 && v > 0) { x = v / b; sum += x; m++; if (x < lo) lo = x; if (x > hi) hi = x; ops += v }
                }
                if (m > 0) printf "%-5s %-12s %10.0f %17.2f (%.2f-%.2f) %14.2f\n", op, kind, ops / m, sum / m, lo, hi, spo[op, kind] / n[op, kind]
            }
        }' "$out" | sort -k1,1 -k2,2
    echo "results: $out"
}

bench_pulsar() {
    PRISM_BENCH_ROUNDS=$rounds PRISM_BENCH_CONCURRENCY=$c PRISM_BENCH_EVENTS=${EVENTS:-1000} \
        PRISM_BENCH_READS=${READS:-160} cargo bench -q -p prism-gateway --features pulsar --bench pulsar
}

cleanup() {
    [ -n "${dev_pid:-}" ] && kill "$dev_pid" 2>/dev/null && wait "$dev_pid" 2>/dev/null
    [ -n "${bouncer_pid:-}" ] && kill "$bouncer_pid" 2>/dev/null
    [ -n "${stop_pg:-}" ] && "${stop_pg[@]}" >/dev/null 2>&1
    [ -n "${bouncer_dir:-}" ] && rm -rf "$bouncer_dir"
    [ -n "${work:-}" ] && [ -z "${OUT:-}" ] && rm -rf "$work/pg" "$work/prism"
    true
}
trap cleanup EXIT

case $what in
    postgres) bench_postgres ;;
    kafka) PRISM_BENCH_ROUNDS=$rounds PRISM_BENCH_CONCURRENCY=$c cargo bench -q -p prism-plugin-kafka --bench kafka ;;
    pulsar) bench_pulsar ;;
    all)
        bench_postgres
        PRISM_BENCH_ROUNDS=$rounds PRISM_BENCH_CONCURRENCY=$c cargo bench -q -p prism-plugin-kafka --bench kafka
        bench_pulsar ;;
    *) echo "usage: $0 [postgres|kafka|pulsar|all]" >&2; exit 2 ;;
esac
