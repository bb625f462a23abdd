#!/usr/bin/env bash
# The README's test command: installs what Prism's tests need, then runs
# every check and every test. CI runs exactly this (.ci/run).
#
# Test servers: the KeyValue/control-plane suites need none (everything runs
# in process on 127.0.0.1:0); the postgres plugin's need PostgreSQL's
# binaries (below). The backend issues add a Kafka-protocol broker and a
# Pulsar-protocol broker here, each installed only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, installed only when what they provide is missing, and
# only as root (as CI runs); anyone else is told the command.
#   need_packages WHAT CHECK PACKAGE...
# CHECK is a command that succeeds when WHAT is present; it is checked
# again after installing.
need_packages() {
    local what="$1" check="$2"
    shift 2
    "$check" && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "$what is missing: run 'apt-get update && apt-get install -y $*' as root" >&2
        exit 1
    fi
    echo "== installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    "$check" || { echo "$* installed, but $what is still not where expected" >&2; exit 1; }
}

# PostgreSQL's server binaries (initdb, pg_ctl, postgres) for the postgres
# plugin's tests, which start their own throwaway server: on PATH or where
# Debian puts them.
have_postgres() {
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
need_packages PostgreSQL have_postgres postgresql

# PgBouncer, for the postgres plugin's test behind a pooler in transaction
# mode (it starts its own with scripts/pgbouncer.sh).
have_pgbouncer() { command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; }
need_packages PgBouncer have_pgbouncer pgbouncer

# Pulsar (gateway/CLI feature `pulsar`, crate plugins/pulsar): its client's
# build script needs a system protoc, and its tests a pulsar-lite broker.
# `--workspace` below builds and tests the crate, but nothing in it turns
# the gateway's `pulsar` feature on (plugins know only the plugin API), so
# the workspace checks the gateway and CLI as plain `cargo build` makes
# them; the gateway's Pulsar code, its end-to-end test and its bench are
# linted and run with the feature at the end.
have_protoc() { command -v protoc >/dev/null 2>&1; }
need_packages protoc have_protoc protobuf-compiler
if ! command -v pulsar-lite >/dev/null 2>&1 && ! python3 -c 'import pulsar_lite' >/dev/null 2>&1; then
    echo "== installing pulsar-lite"
    python3 -m pip install -q pulsar-lite
fi
# grpcio and grpcio-tools for the Python client example (examples/python),
# which a gateway test generates stubs for and runs against a test cluster.
if ! python3 -c 'import grpc, grpc_tools' >/dev/null 2>&1; then
    echo "== installing grpcio and grpcio-tools"
    python3 -m pip install -q -r examples/python/requirements.txt
fi
# A Kafka-protocol broker (tansu, in-memory storage) for the kafka plugin's
# tests, which start their own on an ephemeral port: on PATH or in cargo's
# bin directory. Built from source when missing (8-15 minutes on a fresh
# machine; CI's budget allows it).
have_tansu() {
    command -v tansu >/dev/null 2>&1 && return 0
    [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]
}
if ! have_tansu; then
    echo "== installing tansu (a Kafka-protocol broker)"
    cargo install tansu --locked --features dynostore
    have_tansu || { echo "tansu was installed but is not on PATH nor in cargo's bin directory" >&2; exit 1; }
fi

# Prometheus (the server and promtool) for the observability tests: a
# real Prometheus scrapes a test cluster, and promtool checks the shipped
# rules and scrape configuration (deploy/prometheus).
have_prometheus() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }
need_packages Prometheus have_prometheus prometheus

# Chromium and its WebDriver (Debian's chromium-driver) for the operator
# console's browser test (control-plane/tests/console.rs), which drives a
# headless chromium against a test cluster.
have_chromium() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }
need_packages Chromium have_chromium chromium chromium-driver

echo "== format"
cargo fmt --all --check
echo "== lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
cargo test --workspace --locked --no-fail-fast
echo "== lints and tests with the pulsar feature"
cargo clippy -p prism-gateway --features pulsar --all-targets --locked -- -D warnings
cargo test -p prism-gateway --features pulsar --locked --test pulsar
# The Pulsar case of the network-fault tests (the others ran above).
cargo test -p prism-gateway --features pulsar --locked --test faults pulsar
# The Pulsar case of the backend-fed tails (the others ran above).
cargo test -p prism-gateway --features pulsar --locked --test tails pulsar
# A TimeSeries namespace migrated from Kafka to Pulsar under load.
cargo test -p prism-gateway --features pulsar --locked --test migration_ts
