#!/usr/bin/env bash
# The README's test command: installs what Prism's tests need, then runs
# every check and every test. CI runs exactly this (.ci/run).
#
# Test servers: the KeyValue/control-plane suites need none (everything runs
# in process on 127.0.0.1:0). The backend issues add PostgreSQL, a
# Kafka-protocol broker and a Pulsar-protocol broker here, each installed
# only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== format"
cargo fmt --all --check
echo "== lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
cargo test --workspace --locked
